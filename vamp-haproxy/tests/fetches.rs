//! The embedded fetch list is what the installed HAProxy accepts.

mod support;

use support::*;

#[test]
fn every_listed_fetch_is_known_to_haproxy() {
    if haproxy().is_none() {
        return;
    }
    // One ACL per fetch, in chunks below HAProxy's limit of 50 reported errors.
    for chunk in vamp_haproxy::fetches::FETCHES.chunks(40) {
        let acls: String = chunk
            .iter()
            .enumerate()
            .map(|(i, f)| format!("  acl a{i} {f} x\n"))
            .collect();
        let config = format!(
            "frontend f\n  bind 127.0.0.1:18080\n{acls}  default_backend b\nbackend b\n  server s 127.0.0.1:1\n"
        );
        if let Some(Err(e)) = haproxy_check(&config) {
            assert!(
                !e.contains("unknown fetch method"),
                "a listed fetch is unknown to HAProxy:\n{e}"
            );
        }
    }
    // And the check can fail: a name that is not a fetch.
    let bad = "frontend f\n  bind 127.0.0.1:18080\n  acl a req.cook_sub(x) y\n  default_backend b\nbackend b\n  server s 127.0.0.1:1\n";
    let e = haproxy_check(bad)
        .expect("haproxy is installed")
        .expect_err("req.cook_sub is not a fetch in 2.6");
    assert!(e.contains("unknown fetch method"), "{e}");
    assert!(!vamp_haproxy::fetches::is_fetch("req.cook_sub"));
}
