//! The Marathon scheduler against an in-process **double** of Marathon's REST API
//! (`marathon_double`), and against a real Marathon when `VAMP_TEST_MARATHON_URL` is set
//! (`cargo test -p vamp-backends --features scheduler-marathon --test marathon -- --ignored`).
#![cfg(feature = "scheduler-marathon")]

#[allow(dead_code)]
mod http_double;
mod marathon_double;

use std::time::Duration;

use marathon_double::MarathonDouble;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vamp_backends::Secret;
use vamp_backends::scheduler::marathon::{MarathonOptions, MarathonScheduler, app_id};
use vamp_core::conformance::scheduler as suite;
use vamp_core::model::{Argument, Deployable, HealthCheck, PortType};
use vamp_core::scheduler::*;

fn image() -> Deployable {
    Deployable {
        deployable_type: Some("docker".into()),
        definition: "magneticio/sava:1.0.0".into(),
    }
}

async fn scheduler(double: &MarathonDouble) -> MarathonScheduler {
    let mut opts = MarathonOptions::new(double.address());
    opts.poll = Duration::from_millis(200);
    MarathonScheduler::connect(opts).await.unwrap()
}

/// A raw HTTP request to the double (as an operator's `curl` would).
async fn raw(double: &MarathonDouble, method: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(double.addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_passes_the_scheduler_conformance_suite_on_the_double() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    suite::run_all(&s, "conformance", &image()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_scheduler_finds_the_apps_of_the_first() {
    let double = MarathonDouble::start().await;
    let (first, second) = (scheduler(&double).await, scheduler(&double).await);
    suite::a_second_scheduler_finds_the_services(&first, &second, "adopt", &image()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_killed_behind_the_scheduler_s_back_shows_in_the_watch() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let app = app_id("vamp", &ServiceId::new("lost", "lost", "svc:1.0.0"));
    suite::replaces_an_instance_lost_behind_its_back(&s, "lost", &image(), async |victim| {
        let answer = raw(
            &double,
            "DELETE",
            &format!("/v2/apps{app}/tasks/{}", victim.name),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await;
}

fn full_spec() -> ServiceSpec {
    let mut s = ServiceSpec::new(ServiceId::new("sava", "sava", "sava:1.0.0"), image())
        .with_instances(3)
        .with_port("webport", 8080, PortType::Http)
        .with_port("admin", 9000, PortType::Tcp)
        .with_env("SAVA_DEBUG", "true");
    s.cpu = 0.5;
    s.memory_mb = 256.0;
    s.labels.insert("team".into(), "canary".into());
    s.arguments.push(Argument {
        key: "privileged".into(),
        value: "true".into(),
    });
    s.arguments.push(Argument {
        key: "log-driver".into(),
        value: "syslog".into(),
    });
    s.health_checks.push(HealthCheck {
        path: "/health".into(),
        port: "webport".into(),
        initial_delay: 30,
        timeout: 5,
        interval: 10,
        failures: 3,
        protocol: "HTTP".into(),
    });
    s
}

/// The exact app sent, in the field names and shapes of Marathon's reference example
/// (`docs/docs/rest-api/public/api/v2/examples/app.json`): `container.docker.portMappings`,
/// `parameters` as `{key, value}`, `healthChecks` with `portIndex`, `upgradeStrategy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sent_is_vamp_s_payload_in_marathon_s_field_names() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let spec = full_spec();
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let posts: Vec<Value> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v2/apps")
        .map(|r| r.body)
        .collect();
    assert_eq!(posts.len(), 1);
    let mut sent = posts[0].clone();
    // The stored spec label is checked apart (it is the spec as JSON).
    let stored = sent["labels"]
        .as_object_mut()
        .unwrap()
        .remove("io.vamp.spec")
        .expect("the spec label");
    assert!(stored.as_str().unwrap().contains("\"SAVA_DEBUG\":\"true\""));
    let breed = &vamp_core::lookup::hex_sha1("sava:1.0.0", "")[..20];
    let tuple = &vamp_core::lookup::hex_sha1("sava\u{0}sava\u{0}sava:1.0.0", "")[..10];
    assert_eq!(
        sent,
        json!({
            "id": format!("/vamp/deployment-sava-service-sava-{breed}-{tuple}"),
            "instances": 3,
            "cpus": 0.5,
            "mem": 256.0,
            "env": {"SAVA_DEBUG": "true"},
            "labels": {
                "team": "canary",
                "io.vamp.deployment": "sava",
                "io.vamp.cluster": "sava",
                "io.vamp.service": "sava:1.0.0",
                "io.vamp.namespace": "vamp"
            },
            "healthChecks": [{
                "portIndex": 0,
                "protocol": "HTTP",
                "path": "/health",
                "gracePeriodSeconds": 30,
                "intervalSeconds": 10,
                "timeoutSeconds": 5,
                "maxConsecutiveFailures": 3
            }],
            "upgradeStrategy": {"maximumOverCapacity": 1.0, "minimumHealthCapacity": 1.0},
            "container": {
                "type": "DOCKER",
                "docker": {
                    "image": "magneticio/sava:1.0.0",
                    "network": "BRIDGE",
                    "parameters": [{"key": "log-driver", "value": "syslog"}],
                    "privileged": true,
                    "forcePullImage": false,
                    "portMappings": [
                        {"containerPort": 8080, "hostPort": 0, "protocol": "tcp", "name": "webport"},
                        {"containerPort": 9000, "hostPort": 0, "protocol": "tcp", "name": "admin"}
                    ]
                }
            }
        })
    );
    // Read back: the same spec, three tasks with the task ports zipped to the breed ports.
    let back = s.service(&spec.id).await.unwrap().unwrap();
    assert_eq!(back.spec, spec.clone().normalized().unwrap());
    assert_eq!(back.instances.len(), 3);
    for i in &back.instances {
        assert_eq!(i.host, "127.0.0.1");
        assert_eq!(i.ports.keys().collect::<Vec<_>>(), ["webport", "admin"]);
        assert!(i.running);
        assert_eq!(i.healthy, Some(true));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_with_port_definitions_and_marathon_s_ports() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let spec = ServiceSpec::new(
        ServiceId::new("cmd", "web", "web"),
        Deployable {
            deployable_type: Some("command".into()),
            definition: "python3 -m http.server $PORT0".into(),
        },
    )
    .with_port("web", 8080, PortType::Http);
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let app = double.app(&app_id("vamp", &spec.id)).unwrap();
    assert_eq!(app["cmd"], "python3 -m http.server $PORT0");
    assert_eq!(
        app["portDefinitions"],
        json!([{"port": 0, "protocol": "tcp", "name": "web"}])
    );
    assert!(app.get("container").is_none_or(Value::is_null));
    let mut with_argument = spec.clone();
    with_argument.arguments.push(Argument {
        key: "log-driver".into(),
        value: "x".into(),
    });
    let e = s
        .deploy(with_argument, DeployOptions::default())
        .await
        .expect_err("arguments of a command");
    assert!(e.to_string().contains("Docker only"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_sends_only_what_changed_and_an_unchanged_spec_nothing() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let spec = full_spec();
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let writes = || {
        double
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT" || r.method == "POST")
            .collect::<Vec<_>>()
    };
    assert_eq!(writes().len(), 1);
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    assert_eq!(writes().len(), 1, "an unchanged spec sends nothing");
    s.deploy(
        spec.clone().with_env("SAVA_DEBUG", "false"),
        DeployOptions::default(),
    )
    .await
    .unwrap();
    let put = writes().pop().unwrap();
    assert_eq!(put.method, "PUT");
    let fields: Vec<&String> = put.body.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["env", "labels"],
        "the environment and the spec label"
    );
    assert_eq!(put.body["env"], json!({"SAVA_DEBUG": "false"}));
    s.scale(&spec.id, 5).await.unwrap();
    let put = writes().pop().unwrap();
    assert_eq!(put.body, json!({"instances": 5}));
    let scaled = s.service(&spec.id).await.unwrap().unwrap();
    assert_eq!(scaled.instances.len(), 5);
    assert_eq!(scaled.spec.instances, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_an_app_held_by_a_deployment_is_forced() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let spec = full_spec();
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let app = app_id("vamp", &spec.id);
    double.lock(&app);
    let deployments = s.deployments().await.unwrap();
    assert_eq!(deployments.len(), 1);
    assert_eq!(deployments[0].affected_apps, std::slice::from_ref(&app));
    s.scale(&spec.id, 1).await.unwrap();
    let puts: Vec<String> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        puts,
        [
            format!("/v2/apps{app}"),
            format!("/v2/apps{app}?force=true")
        ]
    );
    assert_eq!(
        s.service(&spec.id).await.unwrap().unwrap().instances.len(),
        1
    );
    assert!(s.deployments().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_s_validation_errors_reach_the_caller_by_field() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let mut spec = full_spec();
    spec.dialects.insert(
        "marathon".into(),
        vamp_core::node::Node::from_json(
            &json!({"healthChecks": [{"portIndex": 7, "protocol": "TCP"}]}),
        ),
    );
    let e = s
        .deploy(spec.clone(), DeployOptions::default())
        .await
        .expect_err("a health check on a port that does not exist");
    assert!(matches!(e, vamp_core::Error::Invalid { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("/healthChecks(0)") && text.contains("port indices"),
        "{text}"
    );
    assert!(s.service(&spec.id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc_os_tokens_are_sent_and_never_shown() {
    let double = MarathonDouble::start_with(Some("s3cr3t-token")).await;
    let mut opts = MarathonOptions::new(double.address());
    opts.token = Some(Secret("wrong-token".into()));
    let e = MarathonScheduler::connect(opts.clone())
        .await
        .expect_err("a wrong token");
    let text = format!("{e} {e:?}");
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains("wrong-token"), "{text}");
    assert!(!format!("{opts:?}").contains("wrong-token"));
    opts.token = Some(Secret("s3cr3t-token".into()));
    let s = MarathonScheduler::connect(opts).await.unwrap();
    assert!(!format!("{s:?} {s}").contains("s3cr3t"));
    assert!(
        s.info().await.unwrap()["version"]
            .as_str()
            .unwrap()
            .contains("double")
    );
    // Selected by URL, token included.
    let url = format!("marathon://{}?group=vamp&token=s3cr3t-token", double.addr);
    let selected = vamp_backends::scheduler::SchedulerBackendConfig::from_url(&url)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert!(selected.services().await.unwrap().is_empty());
    assert!(!selected.to_string().contains("s3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_marathon_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = MarathonScheduler::connect(MarathonOptions::new(format!("http://127.0.0.1:{port}")))
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, vamp_core::Error::Unavailable { .. }), "{e:?}");
}

/// A real Marathon: `VAMP_TEST_MARATHON_URL` (e.g. `http://marathon.mesos:8080`, DC/OS:
/// `https://cluster/service/marathon` with `VAMP_TEST_MARATHON_TOKEN`), and an image serving
/// HTTP on port 8080 (`VAMP_TEST_MARATHON_IMAGE`, default `nginxinc/nginx-unprivileged`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Marathon: set VAMP_TEST_MARATHON_URL"]
async fn a_real_marathon_passes_the_conformance_suite() {
    let url = std::env::var("VAMP_TEST_MARATHON_URL").expect("VAMP_TEST_MARATHON_URL");
    let mut opts = MarathonOptions::new(url);
    opts.group = format!("vamp-test-{}", std::process::id());
    opts.token = std::env::var("VAMP_TEST_MARATHON_TOKEN").ok().map(Secret);
    let s = MarathonScheduler::connect(opts).await.unwrap();
    let image = Deployable {
        deployable_type: Some("docker".into()),
        definition: std::env::var("VAMP_TEST_MARATHON_IMAGE")
            .unwrap_or_else(|_| "nginxinc/nginx-unprivileged".into()),
    };
    suite::run_all(&s, "real", &image).await;
}

/// A credential in the environment reaches the app, but the spec label holds its digest;
/// deploying the same spec again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_not_copied_into_the_spec_label() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let spec = full_spec()
        .with_env("API_TOKEN", "tok-secret-123")
        .with_env("STORE", "etcd://root:pw-secret@etcd:2379");
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let app = double.app(&app_id("vamp", &spec.id)).unwrap();
    let label = app["labels"]["io.vamp.spec"].as_str().unwrap();
    assert!(
        !label.contains("tok-secret-123") && !label.contains("pw-secret"),
        "{label}"
    );
    assert!(label.contains("\"API_TOKEN\":\"sha1:"), "{label}");
    assert_eq!(app["env"]["API_TOKEN"], "tok-secret-123");
    let before = double.requests().len();
    s.deploy(spec, DeployOptions::default()).await.unwrap();
    let writes = double.requests()[before..]
        .iter()
        .filter(|r| r.method != "GET")
        .count();
    assert_eq!(writes, 0, "the same spec is not sent again");
}

/// Tuples whose parts join to the same text get two apps; an app at a service's id that this
/// scheduler did not make for it is neither updated, scaled nor deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_tuples_get_two_apps_and_foreign_ones_are_left_alone() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let one = ServiceSpec::new(ServiceId::new("a-b", "c", "d"), image());
    let two = ServiceSpec::new(ServiceId::new("a", "b-c", "d"), image());
    assert_ne!(app_id("vamp", &one.id), app_id("vamp", &two.id));
    s.deploy(one.clone(), DeployOptions::default())
        .await
        .unwrap();
    s.deploy(two.clone(), DeployOptions::default())
        .await
        .unwrap();
    assert!(double.app(&app_id("vamp", &one.id)).is_some());
    assert!(double.app(&app_id("vamp", &two.id)).is_some());
    assert!(s.undeploy(&one.id).await.unwrap());
    assert!(
        double.app(&app_id("vamp", &two.id)).is_some(),
        "the other one stays"
    );
    // An app made by someone else at the id a service would get.
    let foreign = ServiceId::new("shop", "web", "web");
    let id = app_id("vamp", &foreign);
    let created = reqwest::Client::new()
        .post(format!("http://{}/v2/apps", double.addr))
        .header("Content-Type", "application/json")
        .body(
            json!({"id": id, "cmd": "sleep 1000", "instances": 2, "labels": {"owner": "theirs"}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let e = s
        .deploy(
            ServiceSpec::new(foreign.clone(), image()),
            DeployOptions::default(),
        )
        .await
        .expect_err("not updated");
    assert!(format!("{e} {e:?}").contains("left alone"), "{e:?}");
    assert!(s.scale(&foreign, 5).await.is_err());
    assert!(!s.undeploy(&foreign).await.unwrap(), "not deleted");
    let theirs = double.app(&id).expect("still there");
    assert_eq!(theirs["instances"], 2);
    assert_eq!(theirs["cmd"], "sleep 1000");
}

/// A service's app under an earlier version's id (without the tuple's digest) is replaced by
/// the one under its own id, and goes with an undeploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_under_an_earlier_id_are_moved_and_removed() {
    let double = MarathonDouble::start().await;
    let s = scheduler(&double).await;
    let spec = ServiceSpec::new(ServiceId::new("shop", "web", "web"), image());
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let mut legacy = double
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/v2/apps")
        .expect("the create")
        .body;
    assert!(s.undeploy(&spec.id).await.unwrap());
    let old_id = "/vamp/deployment-shop-service-web-web";
    legacy["id"] = json!(old_id);
    let create = async |body: &Value| {
        let r = reqwest::Client::new()
            .post(format!("http://{}/v2/apps", double.addr))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    };
    create(&legacy).await;
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    assert!(double.app(old_id).is_none(), "the earlier id is gone");
    assert!(double.app(&app_id("vamp", &spec.id)).is_some());
    create(&legacy).await;
    assert!(s.undeploy(&spec.id).await.unwrap());
    assert!(double.app(old_id).is_none() && double.app(&app_id("vamp", &spec.id)).is_none());
}
