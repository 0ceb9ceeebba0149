//! The API's security layer over real HTTP: every route of the router refuses callers without
//! a valid token and `read` callers that write; sessions for the console; the start-up
//! refusal on a non-loopback address; browser checks (CORS, origins, content types, Host).

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Client, Method, StatusCode};
use vamp_examples::api::Api;
use vamp_examples::serve::{Secret, ServeConfig, Server, start};

const WRITER: &str = "writer-token-0123456789";
const READER: &str = "reader-token-0123456789";

fn config(dir: &std::path::Path) -> ServeConfig {
    support::memory_config(dir)
}

/// A server with a `write` and a `read` token (from a token file).
async fn guarded(dir: &std::path::Path) -> Server {
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("# test tokens\nwriter write {WRITER}\nreader read {READER}\n"),
    )
    .unwrap();
    let mut c = config(dir);
    c.api_tokens = Some(tokens);
    start(c).await.expect("the server starts")
}

/// A concrete path for a route's pattern.
fn concrete(pattern: &str) -> String {
    let vga = pattern.contains("/vga/");
    pattern
        .split('/')
        .map(|seg| match seg {
            "{kind}" if vga => "haproxy".to_owned(),
            "{kind}" => "breeds".to_owned(),
            "{*path}" => "deployments/x".to_owned(),
            s if s.starts_with('{') => "x".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn status(
    client: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: bool,
) -> StatusCode {
    let mut r = client
        .request(method, url)
        .header("Accept", "application/json")
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if body {
        r = r
            .header("Content-Type", "application/x-yaml")
            .body("name: x\n");
    }
    r.send().await.expect("an answer").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_callers_without_a_valid_token_and_readers_that_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = guarded(dir.path()).await;
    let client = Client::new();
    let routes = Api::routes();
    // The table is the router's: a sample of the routes Vamp's clients use is in it.
    for (path, method) in [
        ("/api/v1/deployments", Method::POST),
        ("/api/v1/events/stream", Method::GET),
        ("/api/v1/{kind}/{*name}", Method::DELETE),
        ("/api/v1", Method::PUT),
    ] {
        assert!(
            routes
                .iter()
                .any(|r| r.path == path && r.methods.contains(&method)),
            "{method} {path} is not in the router's table"
        );
    }
    let mut checked = 0;
    for route in &routes {
        let url = format!("http://{}{}", s.addr, concrete(&route.path));
        let mut methods = route.methods.clone();
        // Methods a route does not answer are refused before routing too.
        methods.push(Method::PATCH);
        for m in methods {
            let public = (route.path == "/healthz" && m == Method::GET)
                || (route.path == "/api/v1/login" && m == Method::POST);
            let write = m != Method::GET;
            let nobody = status(&client, m.clone(), &url, None, write).await;
            let wrong = status(
                &client,
                m.clone(),
                &url,
                Some("wrong-token-0123456789"),
                write,
            )
            .await;
            if public {
                assert_ne!(nobody, StatusCode::FORBIDDEN, "{m} {url}");
                continue;
            }
            assert_eq!(
                nobody,
                StatusCode::UNAUTHORIZED,
                "{m} {url} without a token"
            );
            assert_eq!(
                wrong,
                StatusCode::UNAUTHORIZED,
                "{m} {url} with a wrong token"
            );
            let reader = if m == Method::GET && route.path == "/api/v1/events/stream" {
                // A stream answers at once and then stays open: its status is enough.
                client
                    .get(&url)
                    .bearer_auth(READER)
                    .send()
                    .await
                    .unwrap()
                    .status()
            } else {
                status(&client, m.clone(), &url, Some(READER), write).await
            };
            if write && !(route.path == "/api/v1/logout" && m == Method::POST) {
                assert_eq!(reader, StatusCode::FORBIDDEN, "{m} {url} with a read token");
            } else {
                assert!(
                    reader != StatusCode::UNAUTHORIZED && reader != StatusCode::FORBIDDEN,
                    "{m} {url} with a read token: {reader}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked} route-method pairs checked");
    // A writer gets through (and is refused only by what it sends).
    let a = client
        .post(format!("http://{}/api/v1/breeds", s.addr))
        .bearer_auth(WRITER)
        .header("Accept", "application/json")
        .header("Content-Type", "application/x-yaml")
        .body("name: b\ndeployable: magneticio/sava:1.0.0\nports:\n  web: 8080/http\n")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::CREATED);
    // The event stream of a reader delivers events.
    let mut stream = client
        .get(format!(
            "http://{}/api/v1/events/stream?tag=security-test",
            s.addr
        ))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let published = client
        .post(format!("http://{}/api/v1/events", s.addr))
        .bearer_auth(WRITER)
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .body(r#"{"tags": ["security-test"], "value": 1, "type": "test"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), StatusCode::CREATED);
    let mut seen = String::new();
    while !seen.contains("security-test") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the event arrives")
            .expect("the stream stays open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_authenticates_until_logout() {
    let dir = tempfile::tempdir().unwrap();
    let s = guarded(dir.path()).await;
    let client = Client::new();
    let base = format!("http://{}", s.addr);
    let wrong = client
        .post(format!("{base}/api/v1/login"))
        .json(&serde_json::json!({"token": "not-a-token-0123456789"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get("set-cookie").is_none());
    let login = |token: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = client
                .post(format!("{base}/api/v1/login"))
                .json(&serde_json::json!({ "token": token }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
            assert!(cookie.contains("HttpOnly"), "{cookie}");
            assert!(cookie.contains("SameSite=Strict"), "{cookie}");
            assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
            cookie.split(';').next().unwrap().to_owned()
        }
    };
    let call = async |method: Method, path: &str, cookie: &str| {
        let mut r = client
            .request(method.clone(), format!("{base}{path}"))
            .header("Accept", "application/json")
            .header("Cookie", cookie);
        if method == Method::POST && path.ends_with("breeds") {
            r = r
                .header("Content-Type", "application/x-yaml")
                .body("name: c\ndeployable: magneticio/sava:1.0.0\nports:\n  web: 8080/http\n");
        }
        r.send().await.unwrap().status()
    };
    let read = login(READER).await;
    assert_eq!(
        call(Method::GET, "/api/v1/breeds", &read).await,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::POST, "/api/v1/breeds", &read).await,
        StatusCode::FORBIDDEN
    );
    let write = login(WRITER).await;
    assert_eq!(
        call(Method::POST, "/api/v1/breeds", &write).await,
        StatusCode::CREATED
    );
    assert_eq!(s.sessions(), 2);
    assert_eq!(
        call(Method::POST, "/api/v1/logout", &write).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(Method::GET, "/api/v1/breeds", &write).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(Method::GET, "/api/v1/breeds", &read).await,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::GET, "/api/v1/breeds", "vamp_session=made-up").await,
        StatusCode::UNAUTHORIZED
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_start_needs_a_token_and_the_flag_wins_over_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.listen = Some("0.0.0.0:0".parse().unwrap());
    let e = start(c.clone()).await.expect_err("refused without a token");
    assert!(
        e.contains("VAMP_HTTP_API_TOKEN") && e.contains("--insecure-no-auth"),
        "{e}"
    );
    c.api_token = Some(Secret("short".into()));
    let e = start(c.clone())
        .await
        .expect_err("a short token is refused");
    assert!(
        e.contains("shorter than 16") && !e.contains("short\""),
        "{e}"
    );
    // With a token it serves on every interface, and needs the token.
    c.api_token = Some(Secret(WRITER.into()));
    let s = start(c.clone()).await.expect("starts with a token");
    let url = format!("http://127.0.0.1:{}/api/v1/info", s.addr.port());
    let client = Client::new();
    assert_eq!(
        status(&client, Method::GET, &url, None, false).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&client, Method::GET, &url, Some(WRITER), false).await,
        StatusCode::OK
    );
    s.stop().await;
    // --insecure-no-auth: serves, and says so in /api/v1/info.
    c.api_token = None;
    c.insecure_no_auth = true;
    let s = start(c.clone())
        .await
        .expect("starts by the operator's choice");
    let info = support::get_json(
        &client,
        &format!("http://127.0.0.1:{}/api/v1/info", s.addr.port()),
    )
    .await;
    assert_eq!(info["security"]["authentication"], "none", "{info}");
    assert!(
        info["security"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("--insecure-no-auth"),
        "{info}"
    );
    s.stop().await;
    // --listen wins over Vamp's variables; they apply when it is not given.
    let env = |k: &str| match k {
        "VAMP_HTTP_API_INTERFACE" => Some("0.0.0.0".to_owned()),
        "VAMP_HTTP_API_PORT" => Some("9999".to_owned()),
        "VAMP_HTTP_API_TOKEN" => Some(WRITER.to_owned()),
        _ => None,
    };
    let flagged = config(dir.path()).with_env(env);
    assert_eq!(flagged.listen_addr(), "127.0.0.1:0".parse().unwrap());
    let mut unflagged = config(dir.path());
    unflagged.listen = None;
    let unflagged = unflagged.with_env(env);
    assert_eq!(unflagged.listen_addr(), "0.0.0.0:9999".parse().unwrap());
    let debug = format!("{unflagged:?}");
    assert!(
        !debug.contains(WRITER),
        "the token is not in Debug: {debug}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_no_grant_and_cross_origin_writes_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.cors_origins = vec!["https://console.example".into()];
    let s = start(c).await.expect("the server starts");
    let client = Client::new();
    let base = format!("http://{}", s.addr);
    let preflight = async |origin: &str| {
        client
            .request(Method::OPTIONS, format!("{base}/api/v1/breeds"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
            .await
            .unwrap()
    };
    let denied = preflight("https://evil.example").await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let granted = preflight("https://console.example").await;
    assert_eq!(granted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        granted.headers()["access-control-allow-origin"],
        "https://console.example"
    );
    assert_eq!(
        granted.headers()["access-control-allow-credentials"],
        "true"
    );
    const BREED: &str = "name: e\ndeployable: magneticio/sava:1.0.0\nports:\n  web: 8080/http\n";
    // What a page elsewhere can send without a preflight: text, a form, multipart.
    let simple = [
        ("text/plain", BREED.to_owned()),
        (
            "application/x-www-form-urlencoded",
            "name=e&deployable=x".to_owned(),
        ),
        (
            "multipart/form-data; boundary=b",
            format!(
                "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n{BREED}\r\n--b--\r\n"
            ),
        ),
    ];
    for origin in [Some("https://evil.example"), None] {
        for (content_type, body) in &simple {
            let mut r = client
                .post(format!("{base}/api/v1/breeds"))
                .header("Content-Type", *content_type)
                .body(body.clone());
            if let Some(o) = origin {
                r = r.header("Origin", o);
            }
            let status = r.send().await.unwrap().status();
            assert!(
                status == StatusCode::FORBIDDEN || status == StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type} from {origin:?}: {status}"
            );
        }
    }
    // A YAML write from a foreign origin is refused too, from the granted one it passes.
    let from = async |origin: &str| {
        client
            .post(format!("{base}/api/v1/breeds"))
            .header("Origin", origin)
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-yaml")
            .body(BREED)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(
        from("https://evil.example").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(from("null").await.status(), StatusCode::FORBIDDEN);
    let breeds = support::get_json(&client, &format!("{base}/api/v1/breeds")).await;
    assert_eq!(breeds, serde_json::json!([]), "nothing was stored");
    let ok = from("https://console.example").await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://console.example"
    );
    // The server's own origin may write (the console).
    let own = from(&base).await;
    assert!(
        own.status().is_success(),
        "the own origin passes: {}",
        own.status()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_is_refused_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.allowed_hosts = vec!["vamp.internal".into()];
    let s = start(c).await.expect("the server starts");
    let get = async |host: &str| {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(
            format!("GET /api/v1/info HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out.split_whitespace().nth(1).unwrap().to_owned()
    };
    // A DNS-rebinding page's requests carry its own name.
    assert_eq!(get("attacker.example").await, "403");
    assert_eq!(get("attacker.example:8080").await, "403");
    assert_eq!(get("localhost.attacker.example").await, "403");
    assert_eq!(get(&s.addr.to_string()).await, "200");
    assert_eq!(get(&format!("localhost:{}", s.addr.port())).await, "200");
    assert_eq!(get("[::1]").await, "200");
    assert_eq!(get("vamp.internal:8080").await, "200");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_to_metadata_addresses_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let post = async |s: &Server, yaml: &str| {
        let r = client
            .post(format!("http://{}/api/v1/gateways", s.addr))
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    let s = start(config(dir.path())).await.unwrap();
    for target in [
        "169.254.169.254:80",
        "[fe80::1]:80",
        "metadata.google.internal:80",
    ] {
        let (status, text) = post(
            &s,
            &format!("name: meta\nport: 40123\nroutes:\n  '[{target}]': {{weight: 100%}}\n"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target}: {text}");
        assert!(
            text.contains("link-local-targets") && text.contains("Gateway 'meta'"),
            "{text}"
        );
    }
    let (status, text) = post(
        &s,
        "name: ok\nport: 40124\nroutes:\n  '[10.1.2.3:80]': {weight: 100%}\n",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    s.stop().await;
    let mut c = config(dir.path());
    c.policy_allow = vec!["link-local-targets".into()];
    let s = start(c).await.unwrap();
    let (status, text) = post(
        &s,
        "name: meta\nport: 40123\nroutes:\n  '[169.254.169.254:80]': {weight: 100%}\n",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    s.stop().await;
}
