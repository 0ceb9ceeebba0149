//! Two `vamp serve` on one PostgreSQL database (each with its own process, write lock and
//! loops) racing merges and weight changes on one deployment: no acknowledged write is lost.
//! Required with CI=true or VAMP_TEST_INTEGRATION=1 (the test command starts PostgreSQL and
//! sets VAMP_POSTGRES_URL).
#![cfg(feature = "postgres")]

mod support;

use reqwest::{Client, StatusCode};
use serde_json::Value;
use vamp_examples::serve::{Server, start};

async fn server(dir: &std::path::Path, url: &str) -> Server {
    let mut config = support::memory_config(dir);
    config.persistence = Some(url.to_owned());
    // Each server leads its own loops, as before replicas elected one: this test is about
    // the API's writes on a shared database (the election has examples/tests/replicas.rs).
    config.lease = Some("memory://".into());
    start(config).await.expect("the server starts")
}

fn breed(name: &str) -> String {
    format!(
        "    - breed:\n        name: {name}\n        deployable: magneticio/sava:1.0.0\n        ports: {{port: 8080/http}}\n"
    )
}

async fn write(client: &Client, method: reqwest::Method, url: String, body: String) -> bool {
    let (status, text) = support::request_yaml(client, method, url, body).await;
    // A lost race retried five times may end in a 409: not acknowledged, and said so.
    assert!(
        status == StatusCode::ACCEPTED || status == StatusCode::CONFLICT,
        "{status}: {text}"
    );
    status == StatusCode::ACCEPTED
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_lose_no_acknowledged_merge_or_weight_change() {
    let Ok(base) = std::env::var("VAMP_POSTGRES_URL") else {
        assert!(!support::required(), "VAMP_POSTGRES_URL is required");
        eprintln!("SKIPPED: set VAMP_POSTGRES_URL");
        return;
    };
    let table = format!("race_{}", std::process::id());
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}table={table}");
    let dir = tempfile::tempdir().unwrap();
    let a = server(&dir.path().join("a"), &url).await;
    let b = server(&dir.path().join("b"), &url).await;
    let client = Client::new();
    let on = |s: &Server, path: &str| format!("http://{}/api/v1{path}", s.addr);
    let first = format!(
        "name: race\nclusters:\n  web:\n    services:\n{}{}",
        breed("web:a"),
        breed("web:b")
    );
    assert!(
        write(
            &client,
            reqwest::Method::POST,
            on(&a, "/deployments"),
            first
        )
        .await
    );
    // Server a merges 100 new services; server b moves the weights between web:a and web:b
    // 100 times; both at once.
    let merges = async {
        let mut acknowledged = Vec::new();
        for i in 0..100 {
            let name = format!("web:n{i}");
            let merge = format!(
                "name: race\nclusters:\n  web:\n    services:\n{}",
                breed(&name)
            );
            if write(
                &client,
                reqwest::Method::PUT,
                on(&a, "/deployments/race"),
                merge,
            )
            .await
            {
                acknowledged.push(name);
            }
        }
        acknowledged
    };
    let weights = async {
        let mut last = None;
        for i in 0..100u32 {
            let w = 1 + i % 99;
            // An internal gateway's routes are its cluster's services: the weight writer names
            // them as they are now (web:a and web:b weighted, the merged ones at 0%). A merge
            // between its read and its write changes them: that write is refused (400, not
            // acknowledged) and made again from a new read.
            for _ in 0..10 {
                let g = support::get_json(&client, &on(&b, "/gateways/race/web/port")).await;
                let mut body = String::from("name: race/web/port\nroutes:\n");
                for route in g["routes"].as_object().expect("routes").keys() {
                    let weight = match route.as_str() {
                        "race/web/web:a/port" => w,
                        "race/web/web:b/port" => 100 - w,
                        _ => 0,
                    };
                    body.push_str(&format!("  {route}: {{weight: {weight}%}}\n"));
                }
                match support::request_yaml(
                    &client,
                    reqwest::Method::PUT,
                    on(&b, "/gateways/race/web/port"),
                    body,
                )
                .await
                {
                    (StatusCode::ACCEPTED, _) => {
                        last = Some(w);
                        break;
                    }
                    (StatusCode::CONFLICT, _) => break,
                    (StatusCode::BAD_REQUEST, text)
                        if text.contains("internal deployment gateway") =>
                    {
                        continue;
                    }
                    (status, text) => panic!("{status}: {text}"),
                }
            }
        }
        last
    };
    let (merged, last) = tokio::join!(merges, weights);
    assert!(
        merged.len() > 80,
        "most merges acknowledged: {}",
        merged.len()
    );
    let last = last.expect("weight changes acknowledged");
    // Read through either server: the same deployment, every acknowledged write in it.
    for s in [&a, &b] {
        let d: Value = support::get_json(&client, &on(s, "/deployments/race")).await;
        let services: Vec<&str> = d["clusters"]["web"]["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["breed"]["name"].as_str())
            .collect();
        for name in &merged {
            assert!(
                services.contains(&name.as_str()),
                "{name} was merged and is gone: {services:?}"
            );
        }
        let routes = &d["clusters"]["web"]["gateways"]["port"]["routes"];
        assert_eq!(
            routes["race/web/web:a/port"]["weight"],
            format!("{last}%"),
            "{routes}"
        );
        assert_eq!(
            routes["race/web/web:b/port"]["weight"],
            format!("{}%", 100 - last),
            "{routes}"
        );
    }
    a.stop().await;
    b.stop().await;
}
