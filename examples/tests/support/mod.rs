//! What the programs' tests share.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Whether integration tests must run (CI=true or VAMP_TEST_INTEGRATION=1): a missing
/// server is then a failure, not a skip.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether HAProxy runs here; panics when it is required and does not.
pub fn haproxy_or_skip() -> bool {
    if vamp_examples::serve::haproxy_works("haproxy") {
        return true;
    }
    assert!(
        !required(),
        "HAProxy is required (scripts/test.sh installs it)"
    );
    eprintln!("SKIPPED: no HAProxy on this machine");
    false
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it gives a value, for at most `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One GET through a gateway on `port`: the body (trimmed), if it answered 200.
pub async fn through(client: &reqwest::Client, port: u16) -> Option<String> {
    let r = client
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    (r.status() == reqwest::StatusCode::OK).then_some(())?;
    Some(r.text().await.ok()?.trim().to_owned())
}

/// A GET of an API `url` as JSON (`Null` when it does not answer JSON).
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let Ok(r) = client
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
    else {
        return serde_json::Value::Null;
    };
    r.text()
        .await
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}
