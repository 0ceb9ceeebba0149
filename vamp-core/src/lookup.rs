//! Lookup names: the SHA-1 identifiers Vamp derived from artifact names.
//!
//! HAProxy frontends, backends and servers are named after lookup names, so keeping the exact
//! rule keeps an existing installation's HAProxy names (and dashboards built on them) stable.
//! `lookup(s) = hex(SHA1("class " + <JVM class> + "@" + s + "v1"))`, lowercase hex with leading
//! zeros stripped (Java's `BigInteger.toString(16)`).

use sha1::{Digest, Sha1};

/// The Vamp class whose name salts a lookup name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LookupClass {
    /// `io.vamp.model.artifact.Gateway`
    Gateway,
    /// `io.vamp.model.artifact.Deployment`
    Deployment,
    /// `io.vamp.model.artifact.DefaultRoute`
    DefaultRoute,
    /// `io.vamp.model.artifact.InternalRouteTarget`
    InternalRouteTarget,
    /// `io.vamp.model.artifact.ExternalRouteTarget`
    ExternalRouteTarget,
    /// `io.vamp.model.artifact.Workflow`
    Workflow,
    /// `io.vamp.model.artifact.DefaultBreed`
    DefaultBreed,
    /// `io.vamp.model.artifact.BreedReference`
    BreedReference,
    /// `io.vamp.common.Namespace`
    Namespace,
}

impl LookupClass {
    /// The fully qualified JVM class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Gateway => "io.vamp.model.artifact.Gateway",
            Self::Deployment => "io.vamp.model.artifact.Deployment",
            Self::DefaultRoute => "io.vamp.model.artifact.DefaultRoute",
            Self::InternalRouteTarget => "io.vamp.model.artifact.InternalRouteTarget",
            Self::ExternalRouteTarget => "io.vamp.model.artifact.ExternalRouteTarget",
            Self::Workflow => "io.vamp.model.artifact.Workflow",
            Self::DefaultBreed => "io.vamp.model.artifact.DefaultBreed",
            Self::BreedReference => "io.vamp.model.artifact.BreedReference",
            Self::Namespace => "io.vamp.common.Namespace",
        }
    }
}

/// `bytes` as lowercase hex, two digits a byte.
///
/// ```
/// assert_eq!(vamp_core::lookup::hex(&[0x00, 0x0f, 0xa5]), "000fa5");
/// ```
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    hex
}

/// Java `BigInteger(1, digest).toString(16)`: lowercase hex without leading zeros.
fn big_hex(digest: &[u8]) -> String {
    let mut hex = hex(digest);
    let zeros = hex.len() - hex.trim_start_matches('0').len();
    if zeros == hex.len() {
        return "0".to_owned();
    }
    hex.drain(..zeros);
    hex
}

/// The lookup name of `name` for `class`.
///
/// ```
/// use vamp_core::lookup::{lookup_name, LookupClass};
/// assert_eq!(
///     lookup_name(LookupClass::Gateway, "vamp/sava/port/_"),
///     "93a45182d84bf6fc0c3c23c33a9501c7d74be2bb"
/// );
/// ```
pub fn lookup_name(class: LookupClass, name: &str) -> String {
    lookup_of_parts(class, &[name], "")
}

/// The lookup name of `parts` joined by `separator`, hashed without joining them first.
fn lookup_of_parts(class: LookupClass, parts: &[&str], separator: &str) -> String {
    let mut h = Sha1::new();
    h.update(b"class ");
    h.update(class.class_name().as_bytes());
    h.update(b"@");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(separator.as_bytes());
        }
        h.update(part.as_bytes());
    }
    h.update(b"v1");
    big_hex(&h.finalize())
}

/// The lookup name of a gateway's route: `Gateway.lookup(pad4([gateway]) ++ pad4(segments))`,
/// where `pad4` appends `*` up to four elements and the gateway name is one element.
///
/// ```
/// use vamp_core::lookup::route_lookup_name;
/// assert_eq!(
///     route_lookup_name("vamp/sava/port/_", &["vamp", "sava", "sava:1.0.0", "port"]),
///     "62a11db802baf59987a3ece9e10d8754eca16a09"
/// );
/// ```
pub fn route_lookup_name<S: AsRef<str>>(gateway: &str, segments: &[S]) -> String {
    let mut parts: Vec<&str> = Vec::with_capacity(4 + segments.len().max(4));
    parts.extend([gateway, "*", "*", "*"]);
    parts.extend(segments.iter().map(AsRef::as_ref));
    while parts.len() < 8 {
        parts.push("*");
    }
    lookup_of_parts(LookupClass::Gateway, &parts, "/")
}

/// `HashUtil.hexSha1(content, salt)`: hex SHA-1 of content + salt (default salt `0000`), used
/// for ACL names.
pub fn hex_sha1(content: &str, salt: &str) -> String {
    let mut h = Sha1::new();
    h.update(content.as_bytes());
    h.update(salt.as_bytes());
    big_hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values from haproxy-cases.md / reader-fixtures.md A.9.
    #[test]
    fn known_lookup_names() {
        assert_eq!(
            lookup_name(LookupClass::Gateway, "vamp/sava/port/_"),
            "93a45182d84bf6fc0c3c23c33a9501c7d74be2bb"
        );
        assert_eq!(
            route_lookup_name("vamp/sava/port/_", &["vamp", "sava", "sava:1.0.0", "port"]),
            "62a11db802baf59987a3ece9e10d8754eca16a09"
        );
    }

    #[test]
    fn acl_names() {
        // reader-fixtures.md A.8: ACL name = first 16 hex of SHA1(definition + "0000").
        let acl = hex_sha1("req.fhdr(User-Agent) -m sub 'Firefox'", "0000");
        assert_eq!(&acl[..16], "7b796e5d25d870c6");
    }

    #[test]
    fn leading_zeros_are_stripped() {
        assert_eq!(big_hex(&[0, 0, 0x0a, 0xff]), "aff");
        assert_eq!(big_hex(&[0, 0]), "0");
        // Zeros inside and at the end stay.
        assert_eq!(big_hex(&[0x10, 0x00, 0xff, 0x01]), "1000ff01");
    }
}
