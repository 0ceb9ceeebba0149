//! A small parser for backend URLs (`scheme://user:pass@host1:1,host2:2/path?k=v`), which
//! accepts the multi-host authorities etcd and ZooKeeper use.

use std::collections::BTreeMap;

use vamp_core::Error;

/// The parts of a backend URL.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BackendUrl {
    /// The scheme, lower-case.
    pub scheme: String,
    /// The user, if any.
    pub user: Option<String>,
    /// The password, if any.
    pub password: Option<String>,
    /// `host:port` entries of the authority (comma-separated in the URL).
    pub hosts: Vec<String>,
    /// The path (`""` or starting with `/`).
    pub path: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl BackendUrl {
    /// Parses `url`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when there is no `scheme://`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| Error::InvalidConfig {
            backend: "url".into(),
            message: format!("'{url}' has no scheme (expected scheme://...)"),
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostlist) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(decode(user)), Some(decode(pass))),
                None => (Some(decode(u)), None),
            },
        };
        let hosts = hostlist
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(kv), String::new()),
            })
            .collect();
        Ok(Self {
            scheme,
            user: user.filter(|u| !u.is_empty()),
            password,
            hosts,
            path: decode(path),
            query,
        })
    }

    /// The hosts, each with `default_port` added when it has none.
    pub fn hosts_with_port(&self, default_port: u16) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| {
                let has_port = h
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                    && !h.ends_with(']');
                if has_port {
                    h.clone()
                } else {
                    format!("{h}:{default_port}")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = BackendUrl::parse("etcd://a:2379,b:2379/vamp/default?timeout=5s").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.hosts.clone(), u.path.as_str()),
            (
                "etcd",
                vec!["a:2379".to_owned(), "b:2379".to_owned()],
                "/vamp/default"
            )
        );
        assert_eq!(u.query.get("timeout").map(String::as_str), Some("5s"));
        let u = BackendUrl::parse("postgres://vamp:p%40ss@db:5432/vamp").unwrap();
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref(), u.path.as_str()),
            (Some("vamp"), Some("p@ss"), "/vamp")
        );
        let u = BackendUrl::parse("memory://").unwrap();
        assert!(u.hosts.is_empty() && u.path.is_empty());
        assert_eq!(
            BackendUrl::parse("zk://z1,z2:2182")
                .unwrap()
                .hosts_with_port(2181),
            ["z1:2181", "z2:2182"]
        );
        assert!(BackendUrl::parse("localhost:2379").is_err());
        assert_eq!(
            BackendUrl::parse("redis://h/%zz%4").unwrap().path,
            "/%zz%4",
            "bad escapes stay as written"
        );
        assert_eq!(BackendUrl::parse("redis://h/%E2%82%AC").unwrap().path, "/€");
    }
}
