//! The commands of vamp-cli (Vamp 1.x's Node.js command-line client) against a running
//! `vamp serve`, for the scripts Vamp's users already have:
//!
//! ```text
//! vamp list <kind>                                   a table (NAME, and per kind what vamp-cli showed)
//! vamp describe <kind> <name>                        the artifact as YAML
//! vamp create <kind> --file F | --stdin              the created artifact as YAML
//! vamp delete <kind> <name>
//! vamp deploy <blueprint> <deployment>               the stored blueprint deployed under that name
//! vamp merge <blueprint> <deployment>                merged into a deployment that exists
//! vamp undeploy <deployment> [--service BREED]       all of it, or the services of that breed
//! vamp update-gateway <name> --weights ROUTE@W%,...  or --route R --condition C [--strength S%]
//! vamp emit <value> [--tags a,b]                     an event
//! vamp generate breed --source S --deployable D --target T
//! vamp generate blueprint --source S --cluster C --breed B --target T
//! ```
//!
//! The server is `--host URL`, else `VAMP_HOST`, else `http://127.0.0.1:8080`; the API token
//! is `VAMP_TOKEN` (sent as `Authorization: Bearer`; never printed, and not a flag, which
//! would show in the process list). `--output json` prints the server's JSON for scripts;
//! the default prints tables for lists and YAML for artifacts. Any failure is an error with
//! the server's message (the `vamp` program exits 1 then). `generate` prints YAML to pipe into
//! `vamp create <kind> --stdin`.

use std::io::{Read, Write};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use vamp_core::dsl::node_to_yaml;
use vamp_core::model::ArtifactKind;
use vamp_core::node::Node;

/// The commands, for the `vamp` program's dispatch.
pub const COMMANDS: [&str; 10] = [
    "list",
    "describe",
    "create",
    "delete",
    "deploy",
    "merge",
    "undeploy",
    "update-gateway",
    "emit",
    "generate",
];

/// The usage of the commands.
pub const USAGE: &str = "       vamp list <kind> | describe <kind> <name> | delete <kind> <name>
       vamp create <kind> --file FILE | --stdin
       vamp deploy <blueprint> <deployment> | merge <blueprint> <deployment>
       vamp undeploy <deployment> [--service BREED]
       vamp update-gateway <name> --weights ROUTE@W%,... | --route ROUTE --condition C [--strength S%]
       vamp emit <value> [--tags a,b]
       vamp generate breed --source S --deployable D --target T
       vamp generate blueprint --source S --cluster C --breed B --target T
       (options of these: --host URL (else VAMP_HOST), --output text|json; the token: VAMP_TOKEN)";

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// The server refused the request, with its message.
    #[error("{message} (HTTP {status} from {method} {path})")]
    Api {
        /// Its status.
        status: u16,
        /// The request's method.
        method: String,
        /// The request's path below the host.
        path: String,
        /// The server's message (Vamp's `message`), or its body.
        message: String,
    },
    /// The server could not be reached, or what it sent could not be read.
    #[error("{0}")]
    Transport(String),
    /// What the command needs is not there (a route, a service, a file).
    #[error("{0}")]
    Invalid(String),
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Tables for lists, YAML for artifacts.
    Text,
    /// The server's JSON.
    Json,
}

/// The client of a `vamp serve`.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the server at `host` (`http://host:port`), with the API `token` if any.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (its TLS roots).
    pub fn new(host: &str, token: Option<String>) -> Result<Self, CliError> {
        let host = host.trim_end_matches('/');
        let host = if host.contains("://") {
            host.to_owned()
        } else {
            format!("http://{host}")
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| CliError::Transport(format!("the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{host}/api/v1"),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// Sends a request to `path` (below `/api/v1`) with a JSON or YAML `body`; the JSON of
    /// a successful answer (`null` when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Value, CliError> {
        Ok(self.exchange(method, path, body).await?.0)
    }

    /// [`Client::call`], with the answer's `X-Total-Count` (of a list).
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<(Value, Option<usize>), CliError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        request = match body {
            Some(Body::Json(v)) => request
                .header("Content-Type", "application/json")
                .body(v.to_string()),
            Some(Body::Yaml(text)) => request
                .header("Content-Type", "application/x-yaml")
                .body(text),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| CliError::Transport(format!("{} is not answering: {e}", self.base)))?;
        let status = response.status();
        let total = response
            .headers()
            .get("x-total-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response
            .text()
            .await
            .map_err(|e| CliError::Transport(format!("the answer to {method} {path}: {e}")))?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok((value, total));
        }
        let message = match &value {
            Value::Object(o) => o
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| value.to_string(), str::to_owned),
            Value::String(s) => s.trim().to_owned(),
            _ => status.canonical_reason().unwrap_or("no message").to_owned(),
        };
        Err(CliError::Api {
            status: status.as_u16(),
            method: method.to_string(),
            path: path.to_owned(),
            message: if status == StatusCode::NOT_FOUND && message == "null" {
                "not found".into()
            } else {
                message
            },
        })
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::GET, path, None).await
    }

    /// Every artifact of `kind`, page by page (the server caps a page's size) until its
    /// `X-Total-Count`.
    async fn list(&self, kind: ArtifactKind) -> Result<Vec<Value>, CliError> {
        let mut all = Vec::new();
        for page in 1.. {
            let (answer, total) = self
                .exchange(
                    Method::GET,
                    &format!("/{}?page={page}&per_page=30", kind.as_str()),
                    None,
                )
                .await?;
            let Value::Array(items) = answer else {
                return Err(CliError::Transport(format!(
                    "the list of {} is not a list: {answer}",
                    kind.as_str()
                )));
            };
            let empty = items.is_empty();
            all.extend(items);
            // Without a count, one page is all there is.
            if empty || total.is_none_or(|t| all.len() >= t) {
                break;
            }
        }
        Ok(all)
    }
}

enum Body {
    Json(Value),
    Yaml(String),
}

/// Where a command runs: the server (`VAMP_HOST`) and token (`VAMP_TOKEN`) of the
/// environment, and its standard input.
pub struct Context<'a> {
    /// `VAMP_HOST`.
    pub host: Option<String>,
    /// `VAMP_TOKEN`.
    pub token: Option<String>,
    /// Read by `create --stdin`.
    pub stdin: &'a mut dyn Read,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("host", &self.host)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// The process's environment and standard input.
    pub fn of_process(stdin: &mut dyn Read) -> Context<'_> {
        Context {
            host: std::env::var("VAMP_HOST").ok().filter(|h| !h.is_empty()),
            token: std::env::var("VAMP_TOKEN").ok().filter(|t| !t.is_empty()),
            stdin,
        }
    }
}

/// A command's arguments: its positional ones and its `--flag value` options.
struct Args {
    positional: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

impl Args {
    /// Flags that take no value.
    const SWITCHES: [&'static str; 1] = ["--stdin"];

    fn parse(args: &[String]) -> Result<Self, CliError> {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(flag) = a.strip_prefix("--") {
                let (flag, inline) = match flag.split_once('=') {
                    Some((f, v)) => (f, Some(v.to_owned())),
                    None => (flag, None),
                };
                let name = format!("--{flag}");
                if Self::SWITCHES.contains(&name.as_str()) {
                    options.push((name, None));
                    continue;
                }
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| CliError::Usage(format!("{name} needs a value")))?,
                };
                options.push((name, Some(value)));
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Self {
            positional,
            options,
        })
    }

    fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn switch(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| n == name)
    }

    fn required(&self, name: &str, what: &str) -> Result<&str, CliError> {
        self.option(name)
            .ok_or_else(|| CliError::Usage(format!("{what} needs {name}")))
    }

    /// Refuses options other than `allowed` (and the common ones).
    fn only(&self, allowed: &[&str], what: &str) -> Result<(), CliError> {
        for (n, _) in &self.options {
            if !allowed.contains(&n.as_str()) && n != "--host" && n != "--output" {
                return Err(CliError::Usage(format!("{what} takes no option {n}")));
            }
        }
        Ok(())
    }

    /// The `N` positional arguments, or a usage error naming `what`.
    fn positional<const N: usize>(&self, what: &str) -> Result<[&str; N], CliError> {
        let given: Vec<&str> = self.positional.iter().map(String::as_str).collect();
        <[&str; N]>::try_from(given).map_err(|_| {
            CliError::Usage(format!(
                "{what} takes {N} argument{}",
                if N == 1 { "" } else { "s" }
            ))
        })
    }
}

fn kind_of(name: &str) -> Result<ArtifactKind, CliError> {
    ArtifactKind::parse(name).ok_or_else(|| CliError::Usage(format!("unknown kind '{name}'")))
}

/// An artifact's name in a URL path: each of its segments (a gateway's name has several)
/// percent-encoded.
fn encode(name: &str) -> String {
    name.split('/')
        .map(vamp_backends::url::encode_component)
        .collect::<Vec<_>>()
        .join("/")
}

/// Runs the command `args` (`args[0]` one of [`COMMANDS`]) and prints its result to `out`.
///
/// # Errors
/// A [`CliError`]: a wrong command line, the server's refusal with its message, or no server.
pub async fn run(args: &[String], cx: Context<'_>, out: &mut dyn Write) -> Result<(), CliError> {
    let Some((command, rest)) = args.split_first() else {
        return Err(CliError::Usage("expected a command".into()));
    };
    let a = Args::parse(rest)?;
    let output = match a.option("--output") {
        None | Some("text") => Output::Text,
        Some("json") => Output::Json,
        Some(other) => {
            return Err(CliError::Usage(format!(
                "--output takes text or json, not '{other}'"
            )));
        }
    };
    let host = a
        .option("--host")
        .map(str::to_owned)
        .or(cx.host)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let client = Client::new(&host, cx.token)?;
    let printed = match command.as_str() {
        "list" => {
            a.only(&[], "list")?;
            let [kind] = a.positional("list <kind>")?;
            let kind = kind_of(kind)?;
            let items = client.list(kind).await?;
            match output {
                Output::Json => Value::Array(items).to_string(),
                Output::Text => table(kind, &items),
            }
        }
        "describe" => {
            a.only(&[], "describe")?;
            let [kind, name] = a.positional("describe <kind> <name>")?;
            let kind = kind_of(kind)?;
            let v = client
                .get(&format!("/{}/{}", kind.as_str(), encode(name)))
                .await?;
            show(&v, output)
        }
        "create" => {
            a.only(&["--file", "--stdin"], "create")?;
            let [kind] = a.positional("create <kind> --file FILE | --stdin")?;
            let kind = kind_of(kind)?;
            let text = match (a.option("--file"), a.switch("--stdin")) {
                (Some(file), false) => std::fs::read_to_string(file)
                    .map_err(|e| CliError::Invalid(format!("{file}: {e}")))?,
                (None, true) => {
                    let mut text = String::new();
                    cx.stdin
                        .read_to_string(&mut text)
                        .map_err(|e| CliError::Invalid(format!("standard input: {e}")))?;
                    text
                }
                _ => {
                    return Err(CliError::Usage(
                        "create reads the artifact from --file FILE or --stdin (one of them)"
                            .into(),
                    ));
                }
            };
            let v = client
                .call(
                    Method::POST,
                    &format!("/{}", kind.as_str()),
                    Some(Body::Yaml(text)),
                )
                .await?;
            show(&v, output)
        }
        "delete" => {
            a.only(&[], "delete")?;
            let [kind, name] = a.positional("delete <kind> <name>")?;
            let kind = kind_of(kind)?;
            let v = client
                .call(
                    Method::DELETE,
                    &format!("/{}/{}", kind.as_str(), encode(name)),
                    None,
                )
                .await?;
            match output {
                Output::Json => v.to_string(),
                Output::Text => format!("{} {name} deleted", singular(kind)),
            }
        }
        "deploy" | "merge" => {
            a.only(&[], command)?;
            let [blueprint, deployment] =
                a.positional(&format!("{command} <blueprint> <deployment>"))?;
            let path = format!("/deployments/{}", encode(deployment));
            if command == "merge" {
                // Merged into what runs: a deployment that is not there is an error.
                client.get(&path).await.map_err(|e| match e {
                    CliError::Api { status: 404, .. } => CliError::Invalid(format!(
                        "there is no deployment {deployment} to merge into"
                    )),
                    other => other,
                })?;
            }
            let mut bp = client
                .get(&format!("/blueprints/{}", encode(blueprint)))
                .await?;
            if let Some(o) = bp.as_object_mut() {
                o.insert("name".into(), json!(deployment));
                o.remove("kind");
            }
            let v = client
                .call(Method::PUT, &path, Some(Body::Json(bp)))
                .await?;
            match output {
                Output::Json => v.to_string(),
                Output::Text => format!(
                    "blueprint {blueprint} {} deployment {deployment}: accepted",
                    if command == "merge" {
                        "merged into"
                    } else {
                        "deployed as"
                    }
                ),
            }
        }
        "undeploy" => {
            a.only(&["--service"], "undeploy")?;
            let [deployment] = a.positional("undeploy <deployment> [--service BREED]")?;
            let path = format!("/deployments/{}", encode(deployment));
            let mut bp = client.get(&format!("{path}?as_blueprint=true")).await?;
            if let Some(service) = a.option("--service") {
                bp = only_service(&bp, service).ok_or_else(|| {
                    CliError::Invalid(format!(
                        "deployment {deployment} runs no service of breed {service}"
                    ))
                })?;
            }
            let v = client
                .call(Method::DELETE, &path, Some(Body::Json(bp)))
                .await?;
            match output {
                Output::Json => v.to_string(),
                Output::Text => match a.option("--service") {
                    Some(s) => format!("service {s} of deployment {deployment}: undeploying"),
                    None => format!("deployment {deployment}: undeploying"),
                },
            }
        }
        "update-gateway" => {
            a.only(
                &["--weights", "--route", "--condition", "--strength"],
                "update-gateway",
            )?;
            let [name] = a.positional("update-gateway <name>")?;
            // The command line is read before any request.
            let change = GatewayChange::of(&a)?;
            let path = format!("/gateways/{}", encode(name));
            let mut g = client.get(&path).await?;
            change.apply(&mut g)?;
            let v = client.call(Method::PUT, &path, Some(Body::Json(g))).await?;
            show(&v, output)
        }
        "emit" => {
            a.only(&["--tags", "--type"], "emit")?;
            let [value] = a.positional("emit <value> [--tags a,b]")?;
            let tags: Vec<&str> = a
                .option("--tags")
                .map(|t| {
                    t.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let mut event = json!({"tags": tags, "value": value});
            if let Some(t) = a.option("--type") {
                event["type"] = json!(t);
            }
            let v = client
                .call(Method::POST, "/events", Some(Body::Json(event)))
                .await?;
            show(&v, output)
        }
        "generate" => {
            let [kind] = a.positional("generate breed|blueprint")?;
            let v = generate(&client, kind, &a).await?;
            show(&v, output)
        }
        other => return Err(CliError::Usage(format!("unknown command '{other}'"))),
    };
    writeln!(out, "{}", printed.trim_end())
        .map_err(|e| CliError::Transport(format!("standard output: {e}")))
}

fn singular(kind: ArtifactKind) -> &'static str {
    let s = kind.as_str();
    s.strip_suffix('s').unwrap_or(s)
}

/// An artifact as YAML (text) or JSON.
fn show(v: &Value, output: Output) -> String {
    match output {
        Output::Json => v.to_string(),
        Output::Text => node_to_yaml(&Node::from_json(v)),
    }
}

/// The blueprint that slices the services of breed `breed` out of `bp` (a deployment as a
/// blueprint): its name and those services in their clusters, nothing else (the clusters'
/// gateways would name routes of the services it leaves); `None` when there is none.
fn only_service(bp: &Value, breed: &str) -> Option<Value> {
    let mut clusters = serde_json::Map::new();
    for (name, cluster) in bp.get("clusters")?.as_object()? {
        let services: Vec<Value> = cluster
            .get("services")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter(|s| breed_name(s) == Some(breed))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !services.is_empty() {
            clusters.insert(name.clone(), json!({ "services": services }));
        }
    }
    (!clusters.is_empty()).then(|| json!({"name": bp["name"], "clusters": clusters}))
}

/// The breed name of a service (`breed: name`, `breed: {name: …}` or `{reference: …}`).
fn breed_name(service: &Value) -> Option<&str> {
    match service.get("breed")? {
        Value::String(s) => Some(s),
        Value::Object(b) => b
            .get("name")
            .or_else(|| b.get("reference"))
            .or_else(|| b.get("ref"))
            .and_then(Value::as_str),
        _ => None,
    }
}

/// What `update-gateway` changes: the weights (`--weights route@w%,…`) or a route's
/// condition (`--route R --condition C [--strength S%]`; a condition `null` removes it).
enum GatewayChange {
    Weights(Vec<(String, String)>),
    Condition {
        route: String,
        condition: Option<String>,
        strength: Option<String>,
    },
}

impl GatewayChange {
    fn of(a: &Args) -> Result<Self, CliError> {
        match (a.option("--weights"), a.option("--condition")) {
            (Some(_), Some(_)) => Err(CliError::Usage(
                "update-gateway changes either --weights or a --condition, not both".into(),
            )),
            (Some(weights), None) => weights
                .split(',')
                .map(|pair| {
                    let (route, weight) = pair.rsplit_once('@').ok_or_else(|| {
                        CliError::Usage(format!("--weights takes route@weight%, not '{pair}'"))
                    })?;
                    Ok((route.to_owned(), percent(weight, "--weights")?))
                })
                .collect::<Result<_, _>>()
                .map(Self::Weights),
            (None, Some(condition)) => Ok(Self::Condition {
                route: a.required("--route", "a condition")?.to_owned(),
                condition: (condition != "null").then(|| condition.to_owned()),
                strength: a
                    .option("--strength")
                    .map(|s| percent(s, "--strength"))
                    .transpose()?,
            }),
            (None, None) => Err(CliError::Usage(
                "update-gateway needs --weights, or --route and --condition".into(),
            )),
        }
    }

    /// The change made to the gateway `g` (as the API answers it).
    fn apply(&self, g: &mut Value) -> Result<(), CliError> {
        let name = g["name"].as_str().unwrap_or_default().to_owned();
        let routes = g
            .get_mut("routes")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| CliError::Invalid(format!("gateway {name} has no routes")))?;
        let missing = |r: &str, routes: &serde_json::Map<String, Value>| {
            CliError::Invalid(format!(
                "gateway {name} has no route {r} (its routes: {})",
                routes.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        };
        match self {
            Self::Weights(weights) => {
                for (r, weight) in weights {
                    if !routes.contains_key(r) {
                        return Err(missing(r, routes));
                    }
                    routes[r.as_str()]["weight"] = json!(weight);
                }
            }
            Self::Condition {
                route: r,
                condition,
                strength,
            } => {
                if !routes.contains_key(r) {
                    return Err(missing(r, routes));
                }
                let target = &mut routes[r.as_str()];
                match condition {
                    None => {
                        if let Some(o) = target.as_object_mut() {
                            o.remove("condition");
                            o.remove("condition_strength");
                        }
                    }
                    Some(c) => {
                        target["condition"] = json!(c);
                        if let Some(s) = strength {
                            target["condition_strength"] = json!(s);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A percentage as Vamp writes it (`50%`), from `50%` or `50`.
fn percent(value: &str, flag: &str) -> Result<String, CliError> {
    let number = value.trim().trim_end_matches('%');
    match number.parse::<u8>() {
        Ok(n) if n <= 100 => Ok(format!("{n}%")),
        _ => Err(CliError::Usage(format!(
            "{flag} takes a percentage from 0% to 100%, not '{value}'"
        ))),
    }
}

/// A breed with another deployable, or a blueprint with another breed in a cluster, from a
/// stored one: YAML to pipe into `vamp create … --stdin`.
async fn generate(client: &Client, kind: &str, a: &Args) -> Result<Value, CliError> {
    let source = a.required("--source", "generate")?;
    let target = a.required("--target", "generate")?;
    match kind_of(kind)? {
        ArtifactKind::Breed => {
            a.only(&["--source", "--target", "--deployable"], "generate breed")?;
            let deployable = a.required("--deployable", "generate breed")?;
            let mut b = client.get(&format!("/breeds/{}", encode(source))).await?;
            b["name"] = json!(target);
            b["deployable"] = json!(deployable);
            Ok(b)
        }
        ArtifactKind::Blueprint => {
            a.only(
                &["--source", "--target", "--cluster", "--breed"],
                "generate blueprint",
            )?;
            let cluster = a.required("--cluster", "generate blueprint")?;
            let breed = a.required("--breed", "generate blueprint")?;
            let mut bp = client
                .get(&format!("/blueprints/{}", encode(source)))
                .await?;
            let clusters = bp
                .get_mut("clusters")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| CliError::Invalid(format!("blueprint {source} has no clusters")))?;
            let c = clusters.get_mut(cluster).ok_or_else(|| {
                CliError::Invalid(format!("blueprint {source} has no cluster {cluster}"))
            })?;
            c["services"] = json!([{"breed": {"reference": breed}}]);
            bp["name"] = json!(target);
            Ok(bp)
        }
        other => Err(CliError::Usage(format!(
            "generate makes a breed or a blueprint, not {}",
            other.as_str()
        ))),
    }
}

/// The table `vamp list` prints: NAME, and per kind what vamp-cli showed.
fn table(kind: ArtifactKind, items: &[Value]) -> String {
    let keys = |v: &Value| -> String {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    let text = |v: &Value| -> String {
        match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let (headers, rows): (&[&str], Vec<Vec<String>>) = match kind {
        ArtifactKind::Deployment => (
            &["NAME", "CLUSTERS", "PORTS"],
            items
                .iter()
                .map(|d| {
                    let ports = d["ports"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| format!("{k}:{}", text(v)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    vec![text(&d["name"]), keys(&d["clusters"]), ports]
                })
                .collect(),
        ),
        ArtifactKind::Gateway => (
            &[
                "NAME",
                "PORT",
                "SERVICE HOST",
                "SERVICE PORT",
                "STICKY",
                "TYPE",
            ],
            items
                .iter()
                .map(|g| {
                    vec![
                        text(&g["name"]),
                        text(&g["port"]),
                        text(&g["service"]["host"]),
                        text(&g["service"]["port"]),
                        (!g["sticky"].is_null()).to_string(),
                        if g["internal"] == true {
                            "internal"
                        } else {
                            "external"
                        }
                        .into(),
                    ]
                })
                .collect(),
        ),
        ArtifactKind::Blueprint => (
            &["NAME", "CLUSTERS"],
            items
                .iter()
                .map(|b| vec![text(&b["name"]), keys(&b["clusters"])])
                .collect(),
        ),
        ArtifactKind::Breed => (
            &["NAME", "DEPLOYABLE"],
            items
                .iter()
                .map(|b| {
                    let d = &b["deployable"];
                    let deployable = match d {
                        Value::Object(_) => {
                            format!("{}://{}", text(&d["type"]), text(&d["definition"]))
                        }
                        other => text(other),
                    };
                    vec![text(&b["name"]), deployable]
                })
                .collect(),
        ),
        ArtifactKind::Workflow => (
            &["NAME", "SCHEDULE", "STATUS", "BREED"],
            items
                .iter()
                .map(|w| {
                    let schedule = match &w["schedule"] {
                        Value::Object(o) => o.keys().cloned().collect::<Vec<_>>().join(", "),
                        other => text(other),
                    };
                    let breed = match &w["breed"] {
                        Value::Object(b) => text(
                            b.get("reference")
                                .or_else(|| b.get("name"))
                                .unwrap_or(&Value::Null),
                        ),
                        other => text(other),
                    };
                    vec![text(&w["name"]), schedule, text(&w["status"]), breed]
                })
                .collect(),
        ),
        _ => (
            &["NAME"],
            items.iter().map(|a| vec![text(&a["name"])]).collect(),
        ),
    };
    draw(headers, &rows)
}

/// Columns padded to their widest cell.
fn draw(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}
