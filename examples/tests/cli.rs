//! vamp-cli's commands (`vamp_examples::cli`, the `vamp` program's `list`, `deploy`, …)
//! against a real `vamp serve` over HTTP (in-process, in-memory backends, API tokens on),
//! each command's effect checked through the API.

mod support;

use std::time::Duration;

use serde_json::Value;
use vamp_examples::cli::{self, CliError, Context};
use vamp_examples::serve::{Server, start};

const TOKEN: &str = "cli-writer-token-0123456789";

async fn server(dir: &std::path::Path) -> Server {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("writer write {TOKEN}\n")).unwrap();
    let mut config = support::memory_config(dir);
    config.api_tokens = Some(tokens);
    start(config).await.expect("the server starts")
}

/// Runs `vamp <args>` against `server` with `stdin`; what it printed, or its error.
async fn vamp(
    server: &Server,
    token: Option<&str>,
    args: &[&str],
    stdin: &str,
) -> Result<String, CliError> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let mut input = stdin.as_bytes();
    let mut out = Vec::new();
    cli::run(
        &args,
        Context {
            host: Some(format!("http://{}", server.addr)),
            token: token.map(str::to_owned),
            stdin: &mut input,
        },
        &mut out,
    )
    .await?;
    Ok(String::from_utf8(out).unwrap())
}

/// The API's JSON at `path`, read with the token.
async fn api(server: &Server, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/v1{path}", server.addr))
        .bearer_auth(TOKEN)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn services(d: &Value) -> Vec<String> {
    let mut names: Vec<String> = d["clusters"]["sava"]["services"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["breed"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const BREED: &str =
    "name: sava:1.0\ndeployable: command://exec sleep 600\nports: {webport: 8080/http}\n";

const BLUEPRINT: &str = "name: sava:1.0
gateways:
  9050: sava/webport
clusters:
  sava:
    services:
    - breed: sava:1.0
      scale: {cpu: 0.1, memory: 64MB, instances: 1}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vamp_cli_command_works_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let t = Some(TOKEN);

    // Without the token the server's refusal is the error, with its message.
    match vamp(&s, None, &["list", "breeds"], "").await {
        Err(CliError::Api {
            status: 401,
            message,
            ..
        }) => {
            assert!(message.contains("authentication"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Wrong command lines are usage errors, before any request.
    for args in [
        &["list"][..],
        &["list", "nonsense"],
        &["describe", "breed"],
        &["create", "breed"],
        &["update-gateway", "g"],
        &["list", "breeds", "--output", "xml"],
        &["generate", "breed", "--source", "x"],
    ] {
        assert!(
            matches!(vamp(&s, t, args, "").await, Err(CliError::Usage(_))),
            "{args:?}"
        );
    }

    // create --stdin and --file; describe reads back as the same artifact.
    let out = vamp(&s, t, &["create", "breed", "--stdin"], BREED)
        .await
        .unwrap();
    assert!(out.contains("name: sava:1.0"), "{out}");
    assert_eq!(api(&s, "/breeds/sava:1.0").await.0, 200);
    let file = dir.path().join("blueprint.yml");
    std::fs::write(&file, BLUEPRINT).unwrap();
    vamp(
        &s,
        t,
        &["create", "blueprint", "--file", file.to_str().unwrap()],
        "",
    )
    .await
    .unwrap();
    let described = vamp(&s, t, &["describe", "blueprint", "sava:1.0"], "")
        .await
        .unwrap();
    let read = vamp_core::dsl::read_str(&described, None).unwrap();
    let stored =
        vamp_core::dsl::read_str(BLUEPRINT, Some(vamp_core::model::ArtifactKind::Blueprint))
            .unwrap();
    assert_eq!(read[0].name(), stored[0].name());
    assert_eq!(read[0].kind(), stored[0].kind());

    // list: a table, or the server's JSON.
    let table = vamp(&s, t, &["list", "breeds"], "").await.unwrap();
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("sava:1.0") && l.contains("exec sleep 600")),
        "{table}"
    );
    // More than a page (the server's pages hold 30 at most): all of them.
    let more: String = (0..34)
        .map(|i| format!("kind: breed\nname: more-{i}\ndeployable: command://true\n---\n"))
        .collect();
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1", s.addr))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/x-yaml")
        .body(more)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let json: Value = serde_json::from_str(
        &vamp(&s, t, &["list", "breed", "--output", "json"], "")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 35, "{json}");

    // deploy: the stored blueprint, under the deployment's name.
    vamp(&s, t, &["deploy", "sava:1.0", "shop"], "")
        .await
        .unwrap();
    let (status, d) = api(&s, "/deployments/shop").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(services(&d), ["sava:1.0"]);

    // generate a breed and a blueprint from the stored ones, piped into create --stdin.
    let breed = vamp(
        &s,
        t,
        &[
            "generate",
            "breed",
            "--source",
            "sava:1.0",
            "--deployable",
            "command://exec sleep 601",
            "--target",
            "sava:1.1",
        ],
        "",
    )
    .await
    .unwrap();
    vamp(&s, t, &["create", "breed", "--stdin"], &breed)
        .await
        .unwrap();
    let (_, b) = api(&s, "/breeds/sava:1.1").await;
    assert_eq!(b["deployable"], "command://exec sleep 601", "{b}");
    let blueprint = vamp(
        &s,
        t,
        &[
            "generate",
            "blueprint",
            "--source",
            "sava:1.0",
            "--cluster",
            "sava",
            "--breed",
            "sava:1.1",
            "--target",
            "sava:1.1",
        ],
        "",
    )
    .await
    .unwrap();
    vamp(&s, t, &["create", "blueprint", "--stdin"], &blueprint)
        .await
        .unwrap();
    assert_eq!(api(&s, "/blueprints/sava:1.1").await.0, 200);

    // merge: into the deployment, which must exist.
    vamp(&s, t, &["merge", "sava:1.1", "shop"], "")
        .await
        .unwrap();
    let (_, d) = api(&s, "/deployments/shop").await;
    assert_eq!(services(&d), ["sava:1.0", "sava:1.1"], "{d}");
    assert!(matches!(
        vamp(&s, t, &["merge", "sava:1.1", "nowhere"], "").await,
        Err(CliError::Invalid(m)) if m.contains("nowhere")
    ));

    // update-gateway: weights, then a route's condition.
    let gateway = "shop/sava/webport";
    let (old, new) = ("shop/sava/sava:1.0/webport", "shop/sava/sava:1.1/webport");
    vamp(
        &s,
        t,
        &[
            "update-gateway",
            gateway,
            "--weights",
            &format!("{old}@30%,{new}@70%"),
        ],
        "",
    )
    .await
    .unwrap();
    let (_, g) = api(&s, &format!("/gateways/{gateway}")).await;
    assert_eq!(
        (
            g["routes"][old]["weight"].clone(),
            g["routes"][new]["weight"].clone()
        ),
        ("30%".into(), "70%".into()),
        "{g}"
    );
    vamp(
        &s,
        t,
        &[
            "update-gateway",
            gateway,
            "--route",
            new,
            "--condition",
            "User-Agent = Safari",
            "--strength",
            "100%",
        ],
        "",
    )
    .await
    .unwrap();
    let (_, g) = api(&s, &format!("/gateways/{gateway}")).await;
    let route = &g["routes"][new];
    assert!(route["condition"].to_string().contains("Safari"), "{g}");
    assert_eq!(route["condition_strength"], "100%", "{g}");
    assert_eq!(route["weight"], "70%", "{g}");
    match vamp(
        &s,
        t,
        &[
            "update-gateway",
            gateway,
            "--weights",
            "shop/sava/nope/webport@10%",
        ],
        "",
    )
    .await
    {
        Err(CliError::Invalid(m)) => assert!(
            m.contains("no route shop/sava/nope/webport") && m.contains(old),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }

    // emit: an event with its tags.
    vamp(&s, t, &["emit", "released", "--tags", "cli,release"], "")
        .await
        .unwrap();
    let (_, events) = api(&s, "/events?tag=cli&tag=release").await;
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events[0]["value"], "released", "{events}");

    // undeploy one service (its traffic moved first: Vamp refuses a slice that leaves the
    // weights short of 100%), then the whole deployment.
    vamp(
        &s,
        t,
        &[
            "update-gateway",
            gateway,
            "--weights",
            &format!("{old}@0%,{new}@100%"),
        ],
        "",
    )
    .await
    .unwrap();
    vamp(&s, t, &["undeploy", "shop", "--service", "sava:1.0"], "")
        .await
        .unwrap();
    support::eventually(
        "sava:1.0 is undeployed",
        Duration::from_secs(30),
        async || {
            let (_, d) = api(&s, "/deployments/shop").await;
            (services(&d) == ["sava:1.1"]).then_some(())
        },
    )
    .await;
    assert!(matches!(
        vamp(&s, t, &["undeploy", "shop", "--service", "sava:9"], "").await,
        Err(CliError::Invalid(m)) if m.contains("sava:9")
    ));
    vamp(&s, t, &["undeploy", "shop"], "").await.unwrap();
    support::eventually("shop is undeployed", Duration::from_secs(30), async || {
        (api(&s, "/deployments/shop").await.0 == 404).then_some(())
    })
    .await;

    // delete, and a deletion of what is not there.
    vamp(&s, t, &["delete", "blueprint", "sava:1.1"], "")
        .await
        .unwrap();
    assert_eq!(api(&s, "/blueprints/sava:1.1").await.0, 404);
    assert!(matches!(
        vamp(&s, t, &["describe", "blueprint", "sava:1.1"], "").await,
        Err(CliError::Api { status: 404, .. })
    ));

    // The token never shows.
    let client = cli::Client::new(&format!("http://{}", s.addr), Some(TOKEN.into())).unwrap();
    assert!(!format!("{client:?}").contains(TOKEN));
    s.stop().await;
}
