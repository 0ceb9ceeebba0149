//! A small parser for backend URLs (`scheme://user:pass@host1:1,host2:2/path?k=v`), which
//! accepts the multi-host authorities etcd and ZooKeeper use.

use std::collections::BTreeMap;

use vamp_core::Error;

/// The parts of a backend URL.
#[derive(Clone, PartialEq, Eq, Default)]
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

/// Query parameters whose values are secrets (left out of `Debug` and [`redact`]).
const SECRET_PARAMS: &[&str] = &["token", "password", "secret", "key"];

impl std::fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let query: BTreeMap<&str, &str> = self
            .query
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str());
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("BackendUrl")
            .field("scheme", &self.scheme)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("hosts", &self.hosts)
            .field("path", &self.path)
            .field("query", &query)
            .finish()
    }
}

/// `url` with its password and secret query parameters (`token`, `password`, `secret`, `key`)
/// replaced by `***`, for logs and messages.
///
/// ```
/// use vamp_backends::url::redact;
/// assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
/// assert_eq!(redact("consul://h:8500/vamp?token=abc&x=1"), "consul://h:8500/vamp?token=***&x=1");
/// assert_eq!(redact("no scheme:pw@h"), "(a URL without a scheme)");
/// ```
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a URL without a scheme)".into();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _))
                    if SECRET_PARAMS.contains(&decode(k).to_ascii_lowercase().as_str()) =>
                {
                    format!("{k}=***")
                }
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters: a user or password that
/// holds `/`, `?`, `#`, `@` or `:` stays one URL component.
pub fn encode_component(s: &str) -> String {
    percent_encode(s, b"-._~")
}

/// Percent-encodes every byte of `s` but ASCII letters, digits and `keep` (the stores' key
/// encodings keep a few more characters).
pub(crate) fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl BackendUrl {
    /// Parses `url`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when there is no `scheme://`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        // The URL is not echoed: it may hold a password.
        let (scheme, rest) = url.split_once("://").ok_or_else(|| Error::InvalidConfig {
            backend: "url".into(),
            message: "the URL has no scheme (expected scheme://...)".into(),
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
    fn credentials_never_show() {
        let u = BackendUrl::parse("redis://u:p%2Fa%3Fb%23c@h:6379/0?token=t0k&prefix=/x").unwrap();
        assert_eq!(u.password.as_deref(), Some("p/a?b#c"));
        let debug = format!("{u:?}");
        assert!(!debug.contains("p/a") && !debug.contains("t0k"), "{debug}");
        assert!(debug.contains("prefix"), "{debug}");
        let e = BackendUrl::parse("user:hunter2@host")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(!redact("redis://u:hunter2@h/0?password=x").contains("hunter2"));
        assert!(!redact("redis://u:hunter2@h/0?password=x").contains("=x"));
        // A password with URL delimiters survives encoding and parsing.
        let password = "a/b?c#d@e:f g%";
        let url = format!("redis://:{}@h:6379/0", encode_component(password));
        assert_eq!(
            BackendUrl::parse(&url).unwrap().password.as_deref(),
            Some(password)
        );
    }

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
