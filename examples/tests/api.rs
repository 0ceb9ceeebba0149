//! Vamp's REST API over HTTP: a real server on a loopback port (in-process, on in-memory
//! backends unless a test says otherwise, no gateway agent) and a real HTTP client.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use vamp_examples::serve::{ServeConfig, Server, start};

/// A server on in-memory backends (the in-memory scheduler, or `scheduler`).
async fn server(dir: &std::path::Path, scheduler: Option<String>) -> Server {
    let mut config = support::memory_config(dir);
    if let Some(s) = scheduler {
        config.scheduler = Some(s);
    }
    start(config).await.expect("the server starts")
}

struct Http {
    client: Client,
    base: String,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Http {
    fn new(server: &Server) -> Self {
        Self {
            client: Client::new(),
            base: format!("http://{}", server.addr),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        accept: Option<&str>,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = accept {
            r = r.header("Accept", a);
        }
        if let Some(c) = content_type {
            r = r.header("Content-Type", c);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let response = r.send().await.expect("the server answers");
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            text: response.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, Some("application/json"), None, None)
            .await
    }

    /// A `DELETE` without a body.
    async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, Some("application/json"), None, None)
            .await
    }

    async fn send(&self, method: Method, path: &str, yaml: &str) -> Answer {
        self.call(
            method,
            path,
            Some("application/json"),
            Some("application/x-yaml"),
            Some(yaml.to_owned()),
        )
        .await
    }
}

/// A GET without an `Accept` header, written by hand; the whole answer.
async fn raw_get(server: &Server, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

const BREED: &str =
    "name: sava:1.0\ndeployable: command://exec sleep 600\nports: {webport: 8080/http}\n";

const BLUEPRINT: &str = "name: sava
clusters:
  sava:
    breed:
      name: sava:1.0
      deployable:
        type: command
        definition: exec sleep 600
      ports: {webport: 8080/http}
    scale: {cpu: 0.1, memory: 64MB, instances: 1}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conventions_accept_content_type_cors_caching_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    // Accept is required (the HTTP client always sends one, so this request is written by
    // hand), and must be JSON, YAML or */*.
    let raw = raw_get(&s, "/api/v1/breeds").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(
        raw.contains("Only the following media types are supported"),
        "{raw}"
    );
    let a = http
        .call(Method::GET, "/api/v1/breeds", Some("text/html"), None, None)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = http
        .call(Method::GET, "/api/v1/breeds", Some("*/*"), None, None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!([]));
    // Every answer: no caching, and no CORS grant unless an origin is configured.
    assert_eq!(a.header("access-control-allow-origin"), None);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let pre = http
        .client
        .request(Method::OPTIONS, format!("{}/api/v1/breeds", http.base))
        .header("Origin", "https://elsewhere.example")
        .header("Access-Control-Request-Method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), StatusCode::FORBIDDEN);
    assert!(pre.headers().get("access-control-allow-origin").is_none());
    // POST needs a JSON or YAML content type.
    let a = http
        .call(
            Method::POST,
            "/api/v1/breeds",
            Some("application/json"),
            Some("text/plain"),
            Some(BREED.into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(a.message().contains("content types"), "{}", a.text);
    // Malformed YAML, an unknown kind, an invalid artifact: 400 with Vamp's message.
    let a = http
        .send(Method::POST, "/api/v1/breeds", "name: [unclosed")
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(!a.message().is_empty(), "{}", a.text);
    let a = http.send(Method::POST, "/api/v1/foos", BREED).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.message(), "Unexpected resource: 'foos'.");
    let a = http.send(Method::POST, "/api/v1/breeds", "name: x\n").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message().contains("deployable"), "{}", a.text);
    // Over the body limit: refused before it is read whole.
    let big = format!(
        "name: big\ndeployable: x\nmetadata:\n  pad: '{}'\n",
        "x".repeat(2 << 20)
    );
    let a = http.send(Method::POST, "/api/v1/breeds", &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // (The server closes that connection, the body unread: a new client, so no request
    // races the close on a pooled connection.)
    let http = Http::new(&s);
    // Unknown routes are 404 with an empty body.
    let a = http.get("/nothing/here").await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::NOT_FOUND, ""));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_created_read_updated_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    let a = http.send(Method::POST, "/api/v1/breeds", BREED).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json()["name"], "sava:1.0");
    // Read back as JSON and as YAML.
    let a = http.get("/api/v1/breeds/sava:1.0").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["ports"]["webport"], "8080/http");
    let y = http
        .call(
            Method::GET,
            "/api/v1/breeds/sava:1.0",
            Some("application/x-yaml"),
            None,
            None,
        )
        .await;
    assert_eq!(y.header("content-type"), Some("application/x-yaml"));
    assert!(y.text.contains("name: sava:1.0"), "{}", y.text);
    // An update whose body names another artifact is refused.
    let a = http
        .send(Method::PUT, "/api/v1/breeds/sava:2.0", BREED)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message().contains("Inconsistent"), "{}", a.text);
    let updated = BREED.replace("8080/http", "9090/http");
    let a = http
        .send(Method::PUT, "/api/v1/breeds/sava:1.0", &updated)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        http.get("/api/v1/breeds/sava:1.0").await.json()["ports"]["webport"],
        "9090/http"
    );
    // validate_only stores nothing.
    let a = http
        .send(
            Method::POST,
            "/api/v1/breeds?validate_only=true",
            &BREED.replace("sava:1.0", "dry"),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(
        http.get("/api/v1/breeds/dry").await.status,
        StatusCode::NOT_FOUND
    );
    // Paging: 35 breeds in pages of 30.
    for i in 0..34 {
        let b = BREED.replace("sava:1.0", &format!("b{i:02}"));
        assert_eq!(
            http.send(Method::POST, "/api/v1/breeds", &b).await.status,
            StatusCode::CREATED
        );
    }
    let first = http.get("/api/v1/breeds").await;
    assert_eq!(first.header("x-total-count"), Some("35"));
    assert_eq!(first.json().as_array().unwrap().len(), 30);
    let link = first.header("link").unwrap();
    assert!(link.contains("page=2&per_page=30>; rel=next"), "{link}");
    assert!(link.contains("page=2&per_page=30>; rel=last"), "{link}");
    let second = http.get("/api/v1/breeds?page=2").await;
    assert_eq!(second.json().as_array().unwrap().len(), 5);
    // A page past the last holds nothing, as Vamp's did (a client reading pages until an
    // empty one stops), and says which page is the last.
    for past in ["3", "18446744073709551615"] {
        let beyond = http.get(&format!("/api/v1/breeds?page={past}")).await;
        assert_eq!(beyond.status, StatusCode::OK, "{}", beyond.text);
        assert_eq!(beyond.json(), json!([]), "page {past}");
        assert_eq!(beyond.header("x-total-count"), Some("35"));
        let link = beyond.header("link").unwrap();
        assert!(link.contains("page=2&per_page=30>; rel=last"), "{link}");
    }
    let small = http.get("/api/v1/breeds?page=3&per_page=10").await;
    assert_eq!(small.json().as_array().unwrap().len(), 10);
    assert_eq!(
        small.json()[0]["name"],
        "b20",
        "sorted by name: b00…b33, sava:1.0"
    );
    // Delete: 204, then 404 with an empty body.
    let a = http.delete("/api/v1/breeds/b00").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = http.get("/api/v1/breeds/b00").await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::NOT_FOUND, ""));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blueprint_becomes_a_deployment_with_gateways_events_scale_and_sla() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    // Wait on the event stream for the deployment's synchronization.
    let stream = http
        .client
        .get(format!(
            "{}/api/v1/events/stream?tag=deployments:sava&tag=synchronization:deployed",
            http.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut stream = stream.bytes_stream();

    let a = http
        .send(Method::POST, "/api/v1/deployments", BLUEPRINT)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let results = a.json();
    assert_eq!(results[0]["name"], "sava:1.0", "the inline breed, stored");
    assert_eq!(results[1]["name"], "sava");
    assert_eq!(
        http.get("/api/v1/breeds/sava:1.0").await.status,
        StatusCode::OK
    );

    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !seen.contains("synchronization:deployed") {
            let chunk = stream.next().await.expect("the stream stays open").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the deployment is synchronised");
    assert!(seen.contains("event: synchronization"), "{seen}");

    // The deployment, as stored and as a blueprint.
    let d = http.get("/api/v1/deployments/sava").await.json();
    assert_eq!(
        d["clusters"]["sava"]["services"][0]["breed"]["name"],
        "sava:1.0"
    );
    let bp = http
        .get("/api/v1/deployments/sava?as_blueprint=true")
        .await
        .json();
    assert!(bp["clusters"]["sava"].is_object(), "{bp}");
    assert!(bp.get("status").is_none());
    // Its internal gateway, by a name with slashes.
    let list = http.get("/api/v1/gateways").await.json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "sava/sava/webport"),
        "{list}"
    );
    let g = http.get("/api/v1/gateways/sava/sava/webport").await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.text);
    // It cannot be created or deleted through the API.
    let a = http.delete("/api/v1/gateways/sava/sava/webport").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.message().contains("internal deployment gateway"),
        "{}",
        a.text
    );
    // A breed in use cannot be deleted.
    let a = http.delete("/api/v1/breeds/sava:1.0").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message().contains("in use"), "{}", a.text);

    // Scale through the service's scale route: the scheduler gets three instances.
    let a = http
        .send(
            Method::PUT,
            "/api/v1/deployments/sava/clusters/sava/services/sava:1.0/scale",
            "cpu: 0.2\nmemory: 64MB\ninstances: 3\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let scale = http
        .get("/api/v1/deployments/sava/clusters/sava/services/sava:1.0/scale")
        .await
        .json();
    assert_eq!(scale["instances"], 3);
    support::eventually("three instances", Duration::from_secs(30), async || {
        let d = http.get("/api/v1/deployments/sava").await.json();
        (d["clusters"]["sava"]["services"][0]["instances"]
            .as_array()
            .map(Vec::len)
            == Some(3))
        .then_some(())
    })
    .await;

    // The cluster SLA: set, read, remove.
    let sla = "type: response_time_sliding_window\nthreshold: {upper: 1000, lower: 100}\nwindow: {interval: 60, cooldown: 60}\n";
    let a = http
        .send(
            Method::PUT,
            "/api/v1/deployments/sava/clusters/sava/sla",
            sla,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let got = http.get("/api/v1/deployments/sava/clusters/sava/sla").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["type"], "response_time_sliding_window");
    let a = http
        .delete("/api/v1/deployments/sava/clusters/sava/sla")
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        http.get("/api/v1/deployments/sava/clusters/sava/sla")
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // DELETE with the blueprint as body slices the service out; the deployment goes.
    let a = http
        .call(
            Method::DELETE,
            "/api/v1/deployments/sava",
            Some("application/json"),
            Some("application/x-yaml"),
            Some(BLUEPRINT.into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    support::eventually(
        "the deployment is gone",
        Duration::from_secs(30),
        async || {
            (http.get("/api/v1/deployments/sava").await.status == StatusCode::NOT_FOUND)
                .then_some(())
        },
    )
    .await;
    // Now the breed can go.
    let a = http.delete("/api/v1/breeds/sava:1.0").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_create_and_delete_everything_in_a_multi_document_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    let body = format!(
        "kind: breed\n{BREED}---\nkind: blueprint\nname: shop\nclusters:\n  sava: sava:1.0\n---\nkind: deployment\n{BLUEPRINT}"
    );
    let a = http.send(Method::POST, "/api/v1", &body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json().as_array().unwrap().len(), 3);
    assert_eq!(
        http.get("/api/v1/blueprints/shop").await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get("/api/v1/deployments/sava").await.status,
        StatusCode::OK
    );
    // A document without a kind fails the whole request before anything is written.
    let a = http
        .send(
            Method::POST,
            "/api/v1",
            "name: x\n---\nkind: breed\nname: y\ndeployable: y\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        http.get("/api/v1/breeds/y").await.status,
        StatusCode::NOT_FOUND
    );
    // The same body deletes: the deployment is sliced, the blueprint and breed go.
    let a = http
        .call(
            Method::DELETE,
            "/api/v1",
            Some("application/json"),
            None,
            Some(body),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(
        http.get("/api/v1/blueprints/shop").await.status,
        StatusCode::NOT_FOUND
    );
    support::eventually(
        "the deployment is gone",
        Duration::from_secs(30),
        async || {
            (http.get("/api/v1/deployments/sava").await.status == StatusCode::NOT_FOUND)
                .then_some(())
        },
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployable_the_scheduler_cannot_run_is_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let local = format!("local://{}", dir.path().join("instances").display());
    let s = server(dir.path(), Some(local)).await;
    let http = Http::new(&s);
    let docker = "name: web\nclusters:\n  web:\n    breed:\n      name: web:1.0\n      deployable: magneticio/sava:1.0.0\n      ports: {port: 8080/http}\n";
    let a = http.send(Method::POST, "/api/v1/deployments", docker).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let m = a.message();
    assert!(m.contains("web:1.0") && m.contains("LocalScheduler"), "{m}");
    assert_eq!(http.get("/api/v1/deployments").await.json(), json!([]));
    assert_eq!(http.get("/api/v1/breeds").await.json(), json!([]));
    s.stop().await;
}

/// Events published and read back through the API, and the health and metrics routes that
/// answer from them (on whichever events store the server runs).
async fn events_health_and_metrics(http: &Http) {
    let a = http
        .send(
            Method::POST,
            "/api/v1/events",
            "tags: [gateways:sava, gateway, health]\ntype: health\nvalue: 0.75\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = http
        .send(
            Method::POST,
            "/api/v1/events",
            "tags: [gateways:sava, gateway, metrics:rate]\ntype: metrics\nvalue: 12.5\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let listed = http
        .get("/api/v1/events?tag=gateways:sava&type=health")
        .await;
    assert_eq!(listed.header("x-total-count"), Some("1"));
    assert_eq!(listed.json()[0]["value"], 0.75);
    // Pages of events: counted, newest first, only the page read.
    for i in 0..35 {
        let e = format!("tags: [paging]\ntype: paging\nvalue: {i}\n");
        assert_eq!(
            http.send(Method::POST, "/api/v1/events", &e).await.status,
            StatusCode::CREATED
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for page in 1..=4 {
        let listed = http
            .get(&format!(
                "/api/v1/events?tag=paging&per_page=10&page={page}"
            ))
            .await;
        assert_eq!(listed.header("x-total-count"), Some("35"));
        let got: Vec<i64> = listed
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["value"].as_i64().unwrap())
            .collect();
        assert_eq!(got.len(), if page == 4 { 5 } else { 10 }, "page {page}");
        seen.extend(got);
    }
    assert_eq!(seen, (0..35).collect(), "every event on exactly one page");
    assert_eq!(http.get("/api/v1/health/gateways/sava").await.json(), 0.75);
    assert_eq!(
        http.get("/api/v1/metrics/gateways/sava/rate").await.json(),
        12.5
    );
    assert_eq!(
        http.get("/api/v1/health/gateways/other").await.status,
        StatusCode::NOT_FOUND
    );
    // Route-level events answer the route's path, and do not mix with the gateway's.
    for e in [
        "tags: [gateways:sava, 'routes:sava:1.0', route, health]\ntype: health\nvalue: 0.5\n",
        "tags: [deployments:shop, clusters:web, ports:port, metrics:rate]\ntype: metrics\nvalue: 3\n",
    ] {
        assert_eq!(
            http.send(Method::POST, "/api/v1/events", e).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        http.get("/api/v1/health/gateways/sava/routes/sava:1.0")
            .await
            .json(),
        0.5
    );
    assert_eq!(http.get("/api/v1/health/gateways/sava").await.json(), 0.75);
    assert_eq!(
        http.get("/api/v1/metrics/deployments/shop/clusters/web/ports/port/rate")
            .await
            .json(),
        3
    );
    assert_eq!(
        http.get(
            "/api/v1/metrics/deployments/shop/clusters/web/services/s/instances/i/ports/port/rate"
        )
        .await
        .status,
        StatusCode::NOT_FOUND,
        "instance metrics are never served (as in Vamp)"
    );
}

/// The same on Elasticsearch's API (`VAMP_ELASTICSEARCH_URL`, osmem-server in the test command).
#[cfg(feature = "elasticsearch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_health_and_metrics_on_elasticsearch() {
    let Ok(url) = std::env::var("VAMP_ELASTICSEARCH_URL") else {
        assert!(!support::required(), "VAMP_ELASTICSEARCH_URL is required");
        eprintln!("SKIPPED: set VAMP_ELASTICSEARCH_URL");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(dir.path());
    config.stop_on_exit = true;
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.in_memory = true;
    config.kv = Some("memory://".into());
    config.scheduler = Some("memory://".into());
    config.no_agent = true;
    config.period_ms = 50;
    let run = std::process::id();
    config.metrics_store = Some(format!(
        "elasticsearch://{}?index=vamp-pulse-api{run}&logs=vamp-vga-api{run}",
        url.trim_start_matches("http://")
    ));
    let s = start(config)
        .await
        .expect("the server starts on Elasticsearch");
    assert!(
        s.events.to_string().contains("ElasticsearchStore"),
        "{}",
        s.events
    );
    let http = Http::new(&s);
    events_health_and_metrics(&http).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_health_metrics_info_config_and_workflow_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    events_health_and_metrics(&http).await;
    let info = http.get("/api/v1/info").await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.json()["persistence"]["status"], "ok");
    let config = http.get("/api/v1/config?flatten=true").await.json();
    assert_eq!(config["vamp.namespace"], "default");
    assert_eq!(
        http.get("/api/v1/config").await.json()["vamp"]["namespace"],
        "default"
    );
    // Workflow status: read and set.
    let wf =
        "name: tick\nbreed:\n  name: tick\n  deployable: command://echo tick\nschedule: daemon\n";
    let a = http.send(Method::POST, "/api/v1/workflows", wf).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    // The workflow loop starts it: starting, then running.
    support::eventually("the workflow runs", Duration::from_secs(30), async || {
        (http.get("/api/v1/workflows/tick/status").await.json() == "running").then_some(())
    })
    .await;
    let a = http
        .call(
            Method::PUT,
            "/api/v1/workflows/tick/status",
            Some("application/json"),
            Some("application/json"),
            Some("suspending".into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    // The loop undeploys it: suspending, then suspended.
    support::eventually(
        "the workflow is suspended",
        Duration::from_secs(30),
        async || {
            (http.get("/api/v1/workflows/tick/status").await.json() == "suspended").then_some(())
        },
    )
    .await;
    let a = http
        .call(
            Method::PUT,
            "/api/v1/workflows/tick/status",
            Some("application/json"),
            Some("application/json"),
            Some("flying".into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    // A time workflow naming a stored breed runs (its count in the detailed status); one
    // naming a breed that is not stored shows why there, and runs once it is stored.
    let a = http
        .send(
            Method::POST,
            "/api/v1/breeds",
            "name: ticker\ndeployable: command://echo tick\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    for (name, breed) in [("by-ref", "ticker"), ("dangling", "not-there")] {
        let wf = format!("name: {name}\nbreed: {breed}\nschedule:\n  time: {{period: PT1S}}\n");
        let a = http.send(Method::POST, "/api/v1/workflows", &wf).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    }
    let detailed = async |name: &str| {
        http.get(&format!("/api/v1/workflows/{name}/status?detailed=true"))
            .await
            .json()
    };
    let ran = support::eventually("by-ref runs", Duration::from_secs(30), async || {
        let d = detailed("by-ref").await;
        (d["runs"].as_i64() >= Some(1)).then_some(d)
    })
    .await;
    assert_eq!(ran["error"], serde_json::Value::Null, "{ran}");
    let failing = support::eventually(
        "dangling shows its error",
        Duration::from_secs(30),
        async || {
            let d = detailed("dangling").await;
            d["error"].is_string().then_some(d)
        },
    )
    .await;
    assert!(
        failing["error"]
            .as_str()
            .unwrap()
            .contains("its breed 'not-there' is not stored"),
        "{failing}"
    );
    assert_eq!(failing["runs"], serde_json::Value::Null, "{failing}");
    // The plain status stays Vamp's word.
    assert!(
        http.get("/api/v1/workflows/dangling/status")
            .await
            .json()
            .is_string()
    );
    let a = http
        .send(
            Method::POST,
            "/api/v1/breeds",
            "name: not-there\ndeployable: command://echo late\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    support::eventually(
        "dangling runs once its breed is stored, the error cleared",
        Duration::from_secs(30),
        async || {
            let d = detailed("dangling").await;
            (d["error"].is_null() && d["runs"].as_i64() >= Some(1)).then_some(())
        },
    )
    .await;
    s.stop().await;
}

/// The server restarted on the same SQLite file serves the same artifacts and deployments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_on_its_sqlite_file_serves_the_same_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = ServeConfig::new(dir.path());
        c.stop_on_exit = true;
        c.listen = Some("127.0.0.1:0".parse().unwrap());
        c.scheduler = Some("memory://".into());
        c.no_agent = true;
        c.period_ms = 50;
        c
    };
    let s = start(config()).await.unwrap();
    let http = Http::new(&s);
    assert_eq!(
        http.send(Method::POST, "/api/v1/deployments", BLUEPRINT)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let before_breed = http.get("/api/v1/breeds/sava:1.0").await.json();
    let before = http
        .get("/api/v1/deployments/sava?as_blueprint=true")
        .await
        .json();
    s.stop().await;
    assert!(dir.path().join("vamp.db").exists());
    let s = start(config()).await.unwrap();
    let http = Http::new(&s);
    assert_eq!(
        http.get("/api/v1/breeds/sava:1.0").await.json(),
        before_breed
    );
    assert_eq!(
        http.get("/api/v1/deployments/sava?as_blueprint=true")
            .await
            .json(),
        before
    );
    s.stop().await;
}

/// Stopping the server ends open event streams: a graceful shutdown waits for open
/// connections, and a stream would otherwise keep it waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_ends_open_event_streams() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    let response = http
        .client
        .get(format!("{}/api/v1/events/stream?tag=never", http.base))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    tokio::time::timeout(Duration::from_secs(20), s.stop())
        .await
        .expect("the server stops with a stream open");
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends");
}

/// The routes the other tests do not reach: `PUT …?delete=true`, `/information`,
/// `/config/{key}`, event queries in a body with an aggregation, YAML lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_by_put_aliases_config_keys_and_event_aggregations() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    assert_eq!(
        http.send(Method::POST, "/api/v1/deployments", BLUEPRINT)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // A merge by PUT of a second service, then its slice by PUT ?delete=true.
    let v2 = BLUEPRINT.replace("sava:1.0", "sava:1.1");
    let a = http
        .send(Method::PUT, "/api/v1/deployments/sava", &v2)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(
        a.json()["clusters"]["sava"]["services"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let a = http
        .send(Method::PUT, "/api/v1/deployments/sava?delete=true", &v2)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let services = a.json()["clusters"]["sava"]["services"].clone();
    let v11 = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["breed"]["name"] == "sava:1.1")
        .cloned()
        .expect("1.1 is still listed while it is undeployed");
    assert_eq!(v11["status"]["intention"], "Undeployment");
    // Slicing a deployment that does not exist names it.
    let a = http
        .send(Method::PUT, "/api/v1/deployments/nothing?delete=true", &v2)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message().contains("nothing"), "{}", a.text);
    // Aliases and single config keys.
    assert_eq!(http.get("/api/v1/information").await.status, StatusCode::OK);
    assert_eq!(
        http.get("/api/v1/configuration?flatten=true").await.json()["vamp.namespace"],
        "default"
    );
    assert_eq!(
        http.get("/api/v1/config/vamp.namespace").await.json()["vamp.namespace"],
        "default"
    );
    assert_eq!(
        http.get("/api/v1/config/vamp.nothing").await.status,
        StatusCode::NOT_FOUND
    );
    // An event query in the body, with an aggregation.
    for v in [10, 20, 60] {
        let e = format!("tags: [gateways:sava, metrics:responseTime]\ntype: metrics\nvalue: {v}\n");
        assert_eq!(
            http.send(Method::POST, "/api/v1/events", &e).await.status,
            StatusCode::CREATED
        );
    }
    let q = "tags: [gateways:sava, metrics:responseTime]\naggregator: {type: average}\n";
    let a = http
        .call(
            Method::GET,
            "/api/v1/events",
            Some("application/json"),
            Some("application/x-yaml"),
            Some(q.into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["value"], 30.0);
    // A YAML list.
    let y = http
        .call(
            Method::GET,
            "/api/v1/events?tag=metrics:responseTime",
            Some("application/x-yaml"),
            None,
            None,
        )
        .await;
    assert_eq!(y.header("content-type"), Some("application/x-yaml"));
    assert_eq!(y.text.matches("type: metrics").count(), 3, "{}", y.text);
    s.stop().await;
}

/// Docker compose import, JavaScript breeds, the gateway side's keys (`/vga/…`), dynamic
/// configuration, statistics and the scheduler's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_javascript_breeds_vga_keys_dynamic_config_stats_and_scheduler_routes() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    // docker-compose → blueprint.
    let compose = "services:\n  web:\n    image: magneticio/sava:1.0.0\n    ports: ['9050:8080']\n    volumes: ['/data']\n";
    let a = http
        .send(Method::POST, "/api/v1/docker-compose?name=shop", compose)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.header("content-type"), Some("application/x-yaml"));
    assert!(
        a.text.contains("# ") && a.text.contains("volumes"),
        "{}",
        a.text
    );
    assert!(a.text.contains("name: shop"), "{}", a.text);
    let bp = http.get("/api/v1/blueprints/shop").await;
    assert_eq!(bp.status, StatusCode::OK, "{}", bp.text);
    let a = http
        .send(Method::POST, "/api/v1/docker-compose", compose)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // A JavaScript breed: the body is the script.
    let a = http
        .call(
            Method::PUT,
            "/api/v1/breeds/tick",
            Some("application/json"),
            Some("application/javascript"),
            Some("console.log('tick')".into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let b = http.get("/api/v1/breeds/tick").await.json();
    assert_eq!(b["deployable"]["type"], "application/javascript");
    assert_eq!(b["deployable"]["definition"], "console.log('tick')");
    // The configuration the driver rendered for a deployment's gateways.
    assert_eq!(
        http.send(Method::POST, "/api/v1/deployments", BLUEPRINT)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let config = support::eventually(
        "a rendered configuration",
        Duration::from_secs(30),
        async || {
            let a = http.get("/api/v1/vga/haproxy/1.7/configuration").await;
            (a.status == StatusCode::OK && a.text.contains("frontend")).then_some(a.text)
        },
    )
    .await;
    assert!(
        config.contains("sava/sava/webport") || config.contains("bind"),
        "{config}"
    );
    assert_eq!(
        http.get("/api/v1/vga/nginx/1.7/configuration").await.status,
        StatusCode::NOT_FOUND
    );
    // The alias (the configuration may have changed meanwhile as instances came up).
    let alias = http.get("/api/v1/vga/haproxy/1.7/config").await;
    assert_eq!(alias.status, StatusCode::OK);
    assert!(alias.text.contains("frontend"), "{}", alias.text);
    // Template overrides: stored, read back, removed.
    let a = http
        .call(
            Method::PUT,
            "/api/v1/vga/haproxy/1.7/template",
            Some("application/json"),
            Some("application/octet-stream"),
            Some("global\n".into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        http.get("/api/v1/vga/haproxy/1.7/template").await.text,
        "global\n"
    );
    let a = http
        .call(
            Method::DELETE,
            "/api/v1/vga/haproxy/1.7/template",
            None,
            None,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(http.get("/api/v1/vga/haproxy/1.7/template").await.text, "");
    // Dynamic configuration: stored without the HTTP API's keys.
    let a = http
        .send(
            Method::PUT,
            "/api/v1/config",
            "vamp:\n  operation: {synchronization: {period: 3s}}\n  http-api: {port: 1}\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let dynamic = http.get("/api/v1/config?type=dynamic").await.json();
    assert_eq!(
        dynamic["vamp"]["operation"]["synchronization"]["period"],
        "3s"
    );
    assert!(dynamic["vamp"].get("http-api").is_none(), "{dynamic}");
    let a = http
        .send(Method::PUT, "/api/v1/config", "- not a map\n")
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.message(), "Configuration is not valid.");
    // Statistics and the scheduler's view.
    let stats = http.get("/api/v1/stats").await.json();
    assert_eq!(stats["persistence"]["blueprints"], 1);
    assert_eq!(
        http.get("/api/v1/statistics").await.json()["persistence"],
        stats["persistence"],
        "the alias"
    );
    assert_eq!(stats["persistence"]["deployments"], 1);
    support::eventually("the service runs", Duration::from_secs(30), async || {
        let routing = http
            .get("/api/v1/scheduler/routing?selector=sava")
            .await
            .json();
        (routing.as_array()?.len() == 1 && routing[0]["instances"].as_array()?.len() == 1)
            .then_some(())
    })
    .await;
    let nodes = http.get("/api/v1/scheduler/nodes").await.json();
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
    assert_eq!(http.get("/api/v1/mesosconfig").await.json(), "");
    s.stop().await;
}

/// Canary policies: stored like the other artifacts, their status changed through its route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_policies_are_stored_and_paused_resumed_and_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    let policy = "name: c\ngateway: sava/sava/webport\nstable: sava/sava/sava:1.0/webport\ncanary: sava/sava/sava:1.1/webport\nstep: 25%\n";
    let a = http
        .send(Method::POST, "/api/v1/canary-policies", policy)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json()["steps"], json!(["25%", "50%", "75%", "100%"]));
    let a = http
        .send(
            Method::POST,
            "/api/v1/canary-policies",
            "name: d\ngateway: g\nstable: a\ncanary: a\nstep: 5%\n",
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.message().contains("Invalid canary policy"), "{}", a.text);
    assert_eq!(
        http.get("/api/v1/canary-policies/c/status").await.json()["phase"],
        "pending"
    );
    let put = async |word: &str| {
        http.call(
            Method::PUT,
            "/api/v1/canary-policies/c/status",
            Some("application/json"),
            Some("application/x-yaml"),
            Some(word.into()),
        )
        .await
    };
    // Only a progressing release pauses; it resumes from paused; any unfinished one aborts.
    assert_eq!(put("paused").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(put("flying").await.status, StatusCode::BAD_REQUEST);
    let a = put("aborted").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json()["phase"], "aborted");
    assert_eq!(put("progressing").await.status, StatusCode::BAD_REQUEST);
    // An update without a status keeps the control plane's.
    let a = http
        .send(
            Method::PUT,
            "/api/v1/canary-policies/c",
            &policy.replace("25%", "50%"),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["status"]["phase"], "aborted");
    assert_eq!(a.json()["steps"], json!(["50%", "100%"]));
    s.stop().await;
}

/// Versioned writes: every artifact answer carries an `ETag`; `If-Match` on `PUT`/`DELETE`
/// is honoured, a stale one gets `412` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_and_if_match_guard_artifacts_and_deployments() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    let with_if_match = async |method: Method, path: &str, etag: &str, body: Option<&str>| {
        let mut r = http
            .client
            .request(method, format!("{}{path}", http.base))
            .header("Accept", "application/json")
            .header("If-Match", etag);
        if let Some(b) = body {
            r = r
                .header("Content-Type", "application/x-yaml")
                .body(b.to_owned());
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let etag = r
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, etag, r.text().await.unwrap())
    };
    assert_eq!(
        http.send(Method::POST, "/api/v1/breeds", BREED)
            .await
            .status,
        StatusCode::CREATED
    );
    let first = http.get("/api/v1/breeds/sava:1.0").await;
    let etag = first.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    // Changed by someone else meanwhile: the first reader's If-Match is stale.
    let changed = BREED.replace("600", "601");
    let (status, new_etag, _) = with_if_match(
        Method::PUT,
        "/api/v1/breeds/sava:1.0",
        &etag,
        Some(&changed),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let new_etag = new_etag.expect("the new version's ETag");
    assert_ne!(new_etag, etag);
    assert_eq!(
        http.get("/api/v1/breeds/sava:1.0").await.header("etag"),
        Some(new_etag.as_str())
    );
    let stale = BREED.replace("600", "602");
    let (status, _, text) =
        with_if_match(Method::PUT, "/api/v1/breeds/sava:1.0", &etag, Some(&stale)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{text}");
    assert!(text.contains("If-Match"), "{text}");
    let (status, _, _) =
        with_if_match(Method::DELETE, "/api/v1/breeds/sava:1.0", &etag, None).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let now = http.get("/api/v1/breeds/sava:1.0").await;
    assert!(now.text.contains("601"), "nothing changed: {}", now.text);
    // A malformed If-Match is a 400; the current one deletes.
    let (status, _, _) =
        with_if_match(Method::DELETE, "/api/v1/breeds/sava:1.0", "yesterday", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) =
        with_if_match(Method::DELETE, "/api/v1/breeds/sava:1.0", &new_etag, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Deployments: a merge with a stale If-Match changes nothing.
    assert_eq!(
        http.send(Method::POST, "/api/v1/deployments", BLUEPRINT)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let d = http.get("/api/v1/deployments/sava").await;
    assert!(d.header("etag").is_some(), "a deployment ETag");
    let scaled = format!("{BLUEPRINT}    scale: {{cpu: 0.2, memory: 128MB, instances: 3}}\n");
    let (status, _, text) = with_if_match(
        Method::PUT,
        "/api/v1/deployments/sava",
        "\"999999\"",
        Some(&scaled),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{text}");
    let same = http.get("/api/v1/deployments/sava").await;
    assert_eq!(
        same.json()["clusters"],
        d.json()["clusters"],
        "the stale merge changed nothing"
    );
    // The current ETag merges (the reconcile loop writes statuses too: read again and retry
    // until no write came between the read and the merge).
    support::eventually(
        "a merge at the current version",
        Duration::from_secs(30),
        async || {
            let current = http
                .get("/api/v1/deployments/sava")
                .await
                .header("etag")?
                .to_owned();
            let (status, _, _) = with_if_match(
                Method::PUT,
                "/api/v1/deployments/sava",
                &current,
                Some(&scaled),
            )
            .await;
            (status == StatusCode::ACCEPTED).then_some(())
        },
    )
    .await;
    let merged = http.get("/api/v1/deployments/sava").await.json();
    assert_eq!(
        merged["clusters"]["sava"]["services"][0]["scale"]["instances"], 3,
        "{merged}"
    );
    s.stop().await;
}

/// A bulk request is one persistence batch: one invalid document (here the third, after a
/// breed and a deployment that would have been stored) stores nothing, and the answer names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_request_with_one_invalid_document_stores_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    let body = format!(
        "kind: breed\n{BREED}---\nkind: deployment\n{}---\nkind: breed\nname: broken\n",
        BLUEPRINT.replace("name: sava\n", "name: bulk-shop\n")
    );
    let a = http.send(Method::POST, "/api/v1", &body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(
        a.message().starts_with("Document 3 (breeds 'broken')"),
        "{}",
        a.text
    );
    assert!(a.message().contains("Nothing was stored"), "{}", a.text);
    assert_eq!(
        http.get("/api/v1/breeds/sava:1.0").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http.get("/api/v1/deployments/bulk-shop").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(http.get("/api/v1/breeds").await.json(), json!([]));
    // Read well, but failing when applied: a deployment of a breed nobody stored, after two
    // documents that were applied to the stage.
    let unresolved = body.replace(
        "kind: breed\nname: broken\n",
        "kind: deployment\nname: other\nclusters:\n  c:\n    breed: missing-breed\n",
    );
    let a = http.send(Method::POST, "/api/v1", &unresolved).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(
        a.message().starts_with("Document 3 (deployments 'other')"),
        "{}",
        a.text
    );
    assert_eq!(http.get("/api/v1/breeds").await.json(), json!([]));
    assert_eq!(http.get("/api/v1/deployments").await.json(), json!([]));
    // The same documents without the broken one: all stored, in one batch.
    let good = body
        .split("---\nkind: breed\nname: broken")
        .next()
        .unwrap()
        .to_owned();
    let a = http.send(Method::POST, "/api/v1", &good).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(
        http.get("/api/v1/breeds/sava:1.0").await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get("/api/v1/deployments/bulk-shop").await.status,
        StatusCode::OK
    );
    s.stop().await;
}

/// Gateways bind on all addresses in the rendered configuration when the agents run elsewhere
/// (`--no-agent`, as Vamp rendered them), on the address given when one is
/// (`--gateway-bind-address`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_bind_where_the_agents_can_be_reached() {
    for (given, expected) in [(None, "0.0.0.0"), (Some("127.0.0.9"), "127.0.0.9")] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = support::memory_config(dir.path());
        config.gateway_bind_address = given.map(|a| a.parse().unwrap());
        let server = start(config).await.expect("the server starts");
        let http = Http::new(&server);
        let a = http
            .send(
                Method::POST,
                "/api/v1/gateways",
                "name: edge\nport: 9050\nroutes:\n  '[127.0.0.1:8080]': {weight: 100%}\n",
            )
            .await;
        assert!(a.status.is_success(), "{}", a.text);
        let key = vamp_core::kv::keys::haproxy_configuration("default", "1.7").unwrap();
        let text = support::eventually(
            "the gateway rendered",
            Duration::from_secs(30),
            async || {
                use vamp_core::kv::KeyValueStore;
                let v = server.kv.get(&key).await.ok()??;
                let text = String::from_utf8_lossy(&v.value).into_owned();
                text.contains("9050").then_some(text)
            },
        )
        .await;
        assert!(text.contains(&format!("bind {expected}:9050")), "{text}");
        server.stop().await;
    }
}

/// What Vamp's own clients send (its integration client ran against Vamp 1.x) works
/// unchanged: one trailing slash on any route, a bulk deletion reading only each document's
/// kind and name, `archive:update` after a bulk `PUT` that creates, and blueprint variables in
/// the two-part form of Vamp's documentation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vamp_clients_requests_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None).await;
    let http = Http::new(&s);
    // A bulk PUT that creates, sent to `/api/v1/`.
    let bulk =
        format!("kind: breed\n{BREED}---\nkind: breed\nname: other\ndeployable: command://true\n");
    let a = http.send(Method::PUT, "/api/v1/", &bulk).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let a = http.get("/api/v1/breeds/").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let listed = a.json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert!(
        names.contains(&"sava:1.0") && names.contains(&"other"),
        "{listed}"
    );
    // The query stays.
    let a = http.get("/api/v1/breeds/?per_page=1").await;
    assert_eq!(a.json().as_array().unwrap().len(), 1, "{}", a.text);
    let a = http.get("/api/v1/breeds/sava:1.0/").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["name"], "sava:1.0");
    assert_eq!(http.get("/api/v1/info/").await.status, StatusCode::OK);
    // One slash only.
    assert_eq!(
        http.get("/api/v1/breeds//").await.status,
        StatusCode::NOT_FOUND
    );
    // Both were created by a PUT: each archived as an update, as Vamp's bulk PUT did.
    for name in ["sava:1.0", "other"] {
        let events = |what: &str| format!("/api/v1/events?tag=breeds:{name}&tag=archive:{what}");
        let updates = http.get(&events("update")).await.json();
        assert_eq!(updates.as_array().unwrap().len(), 1, "{name}: {updates}");
        let creates = http.get(&events("create")).await.json();
        assert_eq!(creates.as_array().unwrap().len(), 0, "{name}: {creates}");
    }
    // A bulk deletion of references (kind and name, no deployable), with the trailing slash;
    // one names a breed that is not there.
    let a = http
        .call(
            Method::DELETE,
            "/api/v1/",
            Some("application/json"),
            Some("application/x-yaml"),
            Some("kind: breed\nname: other\n---\nkind: breed\nname: never-stored\n".into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json().as_array().unwrap().len(), 1, "{}", a.text);
    assert_eq!(
        http.get("/api/v1/breeds/other").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http.get("/api/v1/breeds/sava:1.0").await.status,
        StatusCode::OK
    );
    // A document to delete still needs a name; nothing is deleted then.
    let a = http
        .call(
            Method::DELETE,
            "/api/v1",
            Some("application/json"),
            None,
            Some("kind: breed\nname: sava:1.0\n---\nkind: breed\n".into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.message().contains("Document 2"), "{}", a.text);
    assert_eq!(
        http.get("/api/v1/breeds/sava:1.0").await.status,
        StatusCode::OK
    );
    // The two-part blueprint variable (cluster and name) is the three-part one.
    let blueprint = |name: &str, var: &str| {
        format!(
            "name: {name}\nenvironment_variables:\n  {var}: runner-7\nclusters:\n  sava:\n    breed:\n      name: runner:1.0\n      deployable: command://exec sleep 600\n      environment_variables: {{SAVA_RUNNER_ID: ~}}\n"
        )
    };
    let a = http
        .send(
            Method::POST,
            "/api/v1/blueprints",
            &blueprint("two", "sava.SAVA_RUNNER_ID"),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let two = http.get("/api/v1/blueprints/two").await.json();
    assert_eq!(
        two["environment_variables"]["sava.environment_variables.SAVA_RUNNER_ID"], "runner-7",
        "{two}"
    );
    let a = http
        .send(
            Method::POST,
            "/api/v1/deployments",
            &blueprint("runner", "sava.SAVA_RUNNER_ID"),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let d = http.get("/api/v1/deployments/runner").await.json();
    assert_eq!(
        d["environment_variables"],
        json!([{"name": "sava.environment_variables.SAVA_RUNNER_ID", "value": "runner-7"}]),
        "{d}"
    );
    // Named as written when no breed of the cluster declares it.
    let a = http
        .send(
            Method::POST,
            "/api/v1/blueprints",
            &blueprint("bad", "sava.NOPE"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.message().contains("sava.NOPE"), "{}", a.text);
    s.stop().await;
}
