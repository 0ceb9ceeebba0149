//! `vamp`: command-line access to Vamp's DSL.
//!
//! ```text
//! vamp validate [--kind KIND] [--output text|json] FILE...
//! vamp convert --to yaml|json [--kind KIND] FILE
//! vamp render haproxy [--check] [--socket-dir DIR] FILE...
//! vamp serve [--listen ADDR] [--data-dir DIR] [--in-memory] [--persistence URL] [--kv URL]
//!            [--scheduler URL] [--no-agent] [--haproxy BIN] ...
//! vamp list|describe|create|delete|deploy|merge|undeploy|update-gateway|emit|generate ...
//! ```
//!
//! The last line is vamp-cli's commands (Vamp 1.x's Node.js client) against a `vamp serve` at
//! `VAMP_HOST` with the token `VAMP_TOKEN` ([`vamp_examples::cli`]).
//!
//! `serve` runs a one-machine Vamp: its REST API (`/api/v1`), the reconcile loop and a
//! gateway agent with its own HAProxy, on SQLite, the in-memory key-value store and local
//! processes unless told otherwise (`vamp serve --help`; [`vamp_examples::serve`]).
//!
//! `render haproxy` reads gateways and deployments (documents need `kind:`), resolves their
//! route targets as Vamp's synchroniser did, and prints the HAProxy configuration; `--check`
//! also runs `haproxy -c` on it (with [`vamp_haproxy::BASE_CONFIG`]) and reports the verdict.
//!
//! `validate` checks every document of every file; with `--output json` it prints one JSON
//! object per document. `convert` prints the canonical form of every document (YAML documents
//! separated by `---`; JSON as one object, or an array for several). Exit codes: 0 all valid,
//! 1 some invalid, 2 usage or I/O error.

/// mimalloc: under concurrent requests glibc's malloc made the server several times slower
/// and kept more memory (README, "The server at scale").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;
use vamp_core::dsl::{AnyArtifact, document_kind, load_documents, read_node, to_node, to_yaml};

type Artifact = AnyArtifact;
use vamp_core::model::ArtifactKind;

const USAGE: &str = concat!(
    "usage: vamp validate [--kind KIND] [--output text|json] FILE...\n       vamp convert --to yaml|json [--kind KIND] FILE\n       vamp render haproxy [--check] [--socket-dir DIR] FILE...\n       vamp serve [--help]\n       vamp check-health [HOST:PORT]\n",
    "       (against a vamp serve, as vamp-cli:)\n"
);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return vamp_examples::serve::main(&args[1..]);
    }
    let code = run(
        &args,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}

/// Runs the tool; returns the exit code.
fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match args.first().map(String::as_str) {
        Some("validate") => validate(&args[1..], out, err),
        Some("convert") => convert(&args[1..], out, err),
        Some("render") => render(&args[1..], out, err),
        Some("check-health") => check_health(&args[1..], err),
        Some(c) if vamp_examples::cli::COMMANDS.contains(&c) => client(args, out, err),
        Some("-h" | "--help" | "help") => {
            let _ = writeln!(out, "{USAGE}{}", vamp_examples::cli::USAGE);
            0
        }
        _ => usage(err, "expected a command"),
    }
}

/// `check-health [HOST:PORT]`: 0 when a `vamp serve` there (default `127.0.0.1` and
/// `VAMP_HTTP_API_PORT`, else 8080) answers its liveness probe, `GET /healthz` (a container's
/// health check; it needs no token).
fn check_health(args: &[String], err: &mut dyn Write) -> u8 {
    let addr = args.first().cloned().unwrap_or_else(|| {
        let port = std::env::var("VAMP_HTTP_API_PORT").unwrap_or_else(|_| "8080".into());
        format!("127.0.0.1:{port}")
    });
    match vamp_examples::health::probe(&addr, vamp_examples::auth::LIVENESS_PATH) {
        Ok(()) => 0,
        Err(why) => {
            let _ = writeln!(err, "vamp: {why}");
            1
        }
    }
}

/// A vamp-cli command against a `vamp serve` ([`vamp_examples::cli`]): 0 done, 1 refused or
/// unreachable (with the server's message), 2 a wrong command line.
fn client(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    use vamp_examples::cli;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "vamp: {e}");
            return 1;
        }
    };
    let mut stdin = std::io::stdin().lock();
    match runtime.block_on(cli::run(args, cli::Context::of_process(&mut stdin), out)) {
        Ok(()) => 0,
        Err(cli::CliError::Usage(why)) => usage(err, &why),
        Err(e) => {
            let _ = writeln!(err, "vamp: {e}");
            1
        }
    }
}

fn usage(err: &mut dyn Write, why: &str) -> u8 {
    let _ = writeln!(err, "vamp: {why}\n{USAGE}{}", vamp_examples::cli::USAGE);
    2
}

fn validate(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut kind = None;
    let mut output = Output::Text;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kind" => match it.next().map(|k| (k, ArtifactKind::parse(k))) {
                Some((_, Some(k))) => kind = Some(k),
                Some((k, None)) => return usage(err, &format!("unknown kind '{k}'")),
                None => return usage(err, "--kind needs a value"),
            },
            "--output" => match it.next().map(String::as_str) {
                Some("text") => output = Output::Text,
                Some("json") => output = Output::Json,
                _ => return usage(err, "--output takes text or json"),
            },
            s if s.starts_with("--") => return usage(err, &format!("unknown option '{s}'")),
            f => files.push(f.to_owned()),
        }
    }
    if files.is_empty() {
        return usage(err, "no files given");
    }
    let mut all_valid = true;
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(err, "vamp: cannot read {file}: {e}");
                return 2;
            }
        };
        let docs = match load_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                all_valid = false;
                report_error(out, output, file, 1, &e);
                continue;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let n = i + 1;
            let declared = document_kind(&doc);
            match read_node(doc, kind.or(declared)) {
                Ok(a) => report_ok(out, output, file, n, &a),
                Err(e) => {
                    all_valid = false;
                    report_error(out, output, file, n, &e);
                }
            }
        }
    }
    if all_valid { 0 } else { 1 }
}

fn report_ok(out: &mut dyn Write, output: Output, file: &str, n: usize, a: &AnyArtifact) {
    match output {
        Output::Json => drop(writeln!(
            out,
            "{}",
            json!({"file": file, "document": n, "ok": true, "kind": a.kind().as_str(), "name": a.name()})
        )),
        Output::Text => {
            let _ = writeln!(out, "{file}#{n}: ok: {} '{}'", a.kind(), a.name());
        }
    }
}

fn report_error(
    out: &mut dyn Write,
    output: Output,
    file: &str,
    n: usize,
    e: &vamp_core::error::ReadError,
) {
    match output {
        Output::Json => drop(writeln!(
            out,
            "{}",
            json!({"file": file, "document": n, "ok": false,
                   "error": {"code": e.code(), "message": e.to_string()}})
        )),
        Output::Text => {
            let _ = writeln!(out, "{file}#{n}: {}: {e}", e.code());
        }
    }
}

fn convert(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut kind = None;
    let mut to = None;
    let mut file = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--to" => match it.next().map(String::as_str) {
                Some("yaml") => to = Some(false),
                Some("json") => to = Some(true),
                _ => return usage(err, "--to takes yaml or json"),
            },
            "--kind" => match it.next().map(|k| (k, ArtifactKind::parse(k))) {
                Some((_, Some(k))) => kind = Some(k),
                Some((k, None)) => return usage(err, &format!("unknown kind '{k}'")),
                None => return usage(err, "--kind needs a value"),
            },
            s if s.starts_with("--") => return usage(err, &format!("unknown option '{s}'")),
            f if file.is_none() => file = Some(f.to_owned()),
            _ => return usage(err, "convert takes one file"),
        }
    }
    let (Some(json), Some(file)) = (to, file) else {
        return usage(err, "convert needs --to and a file");
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "vamp: cannot read {file}: {e}");
            return 2;
        }
    };
    let docs = match load_documents(&text) {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "{file}#1: {}: {e}", e.code());
            return 1;
        }
    };
    let mut artifacts = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let declared = document_kind(&doc);
        match read_node(doc, kind.or(declared)) {
            Ok(a) => artifacts.push(a),
            Err(e) => {
                let _ = writeln!(err, "{file}#{}: {}: {e}", i + 1, e.code());
                return 1;
            }
        }
    }
    if json {
        let values: Vec<serde_json::Value> =
            artifacts.iter().map(|a| to_node(a).to_json()).collect();
        let doc = if values.len() == 1 {
            values[0].clone()
        } else {
            serde_json::Value::Array(values)
        };
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
    } else {
        let docs: Vec<String> = artifacts.iter().map(to_yaml).collect();
        let _ = write!(out, "{}", docs.join("---\n"));
    }
    0
}

fn render(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    use vamp_core::model::Gateway;
    if args.first().map(String::as_str) != Some("haproxy") {
        return usage(err, "render takes 'haproxy'");
    }
    let mut check = false;
    let mut opts = vamp_haproxy::RenderOptions::default();
    let mut files = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--check" => check = true,
            "--socket-dir" => match it.next() {
                Some(d) => opts = opts.with_socket_dir(d.clone()),
                None => return usage(err, "--socket-dir needs a directory"),
            },
            s if s.starts_with("--") => return usage(err, &format!("unknown option '{s}'")),
            f => files.push(f.to_owned()),
        }
    }
    if files.is_empty() {
        return usage(err, "no files given");
    }
    let mut gateways: Vec<Gateway> = Vec::new();
    let mut deployments = Vec::new();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(err, "vamp: cannot read {file}: {e}");
                return 2;
            }
        };
        let docs = match load_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(err, "{file}#1: {}: {e}", e.code());
                return 1;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let kind = document_kind(&doc).or(Some(ArtifactKind::Gateway));
            match read_node(doc, kind) {
                Ok(Artifact::Gateway(g)) => gateways.push(g),
                Ok(Artifact::Deployment(d)) => {
                    gateways.extend(vamp_haproxy::targets::deployment_gateways(&d));
                    deployments.push(d);
                }
                Ok(other) => {
                    let _ = writeln!(
                        err,
                        "{file}#{}: {} '{}' is not a gateway or a deployment",
                        i + 1,
                        other.kind(),
                        other.name()
                    );
                    return 1;
                }
                Err(e) => {
                    let _ = writeln!(err, "{file}#{}: {}: {e}", i + 1, e.code());
                    return 1;
                }
            }
        }
    }
    vamp_haproxy::targets::resolve_targets(&mut gateways, &deployments);
    let config = match vamp_haproxy::render(&gateways, &opts) {
        Ok(c) => c.render(),
        Err(e) => {
            let _ = writeln!(err, "vamp: {e}");
            return 1;
        }
    };
    let _ = write!(out, "{config}");
    if check {
        let path = std::env::temp_dir().join(format!("vamp-render-{}.cfg", std::process::id()));
        if let Err(e) = std::fs::write(&path, format!("{}\n{config}", vamp_haproxy::BASE_CONFIG)) {
            let _ = writeln!(err, "vamp: cannot write {}: {e}", path.display());
            return 2;
        }
        let bin = std::env::var("VAMP_HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
        let result = std::process::Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output();
        let _ = std::fs::remove_file(&path);
        match result {
            Err(e) => {
                let _ = writeln!(
                    err,
                    "vamp: cannot run {bin}: {e} (install HAProxy 2.6+, e.g. apt-get install haproxy)"
                );
                return 2;
            }
            Ok(o) if o.status.success() => {
                let _ = writeln!(err, "haproxy -c: configuration is valid");
            }
            Ok(o) => {
                let _ = writeln!(
                    err,
                    "haproxy -c: configuration is INVALID\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                return 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vamp-core/tests/fixtures/reader"
    );

    fn vamp(args: &[&str]) -> (u8, String, String) {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(&args, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn validate_json_reports_kind_name_and_vamp_codes() {
        let ok = format!("{FIXTURES}/breed/breed1.yml");
        let bad = format!("{FIXTURES}/breed/breed11.yml");
        let (code, out, _) = vamp(&["validate", "--kind", "breed", "--output", "json", &ok, &bad]);
        assert_eq!(code, 1);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            json!({"file": ok, "document": 1, "ok": true, "kind": "breeds", "name": "monarch"})
        );
        assert_eq!(lines[1]["ok"], false);
        assert_eq!(lines[1]["error"]["code"], "MissingPortValueError");
        let message = lines[1]["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("breeds 'monarch'") && message.contains("ports/port"),
            "{message}"
        );
    }

    #[test]
    fn validate_exit_codes() {
        let ok = format!("{FIXTURES}/breed/breed1.yml");
        assert_eq!(vamp(&["validate", "--kind", "breed", &ok]).0, 0);
        assert_eq!(vamp(&["validate", "/nonexistent/file.yml"]).0, 2);
        assert_eq!(vamp(&["validate"]).0, 2);
        assert_eq!(vamp(&["validate", "--kind", "nonsense", &ok]).0, 2);
        assert_eq!(vamp(&["frobnicate"]).0, 2);
        // Without --kind, a document without `kind:` cannot be read: invalid, not a crash.
        let no_kind = format!("{FIXTURES}/breed/breed3.yml");
        let (code, out, _) = vamp(&["validate", "--output", "json", &no_kind]);
        assert_eq!(code, 1);
        assert!(out.contains("UnexpectedArtifact"), "{out}");
    }

    #[test]
    fn validate_reports_every_document_of_a_stream() {
        let dir = std::env::temp_dir().join(format!("vamp-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("multi.yml");
        std::fs::write(&file, "kind: scale\nname: small\ncpu: 0.1\nmemory: 64MB\n---\nkind: scale\nname: bad\ncpu: 0.1\nmemory: 64\n").unwrap();
        let (code, out, _) = vamp(&["validate", "--output", "json", file.to_str().unwrap()]);
        assert_eq!(code, 1);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0]["ok"].clone(), lines[0]["name"].clone()),
            (json!(true), json!("small"))
        );
        assert_eq!(
            (
                lines[1]["document"].clone(),
                lines[1]["error"]["code"].clone()
            ),
            (json!(2), json!("UnexpectedTypeError"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn render_haproxy_from_gateways_and_deployments() {
        let dir = std::env::temp_dir().join(format!("vamp-cli-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gateways.yml");
        std::fs::write(&file, "kind: gateways\nname: sava\nport: 9050\nroutes:\n  '[127.0.0.1:8080]': {weight: 90%}\n  '[127.0.0.1:8081]': {weight: 10%, condition: has header X-Canary}\n").unwrap();
        let (code, out, errs) = vamp(&["render", "haproxy", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{errs}");
        assert!(out.contains("bind 0.0.0.0:9050"), "{out}");
        assert!(
            out.contains("127.0.0.1:8080") && out.contains("weight 90 check"),
            "{out}"
        );
        assert!(out.contains("req.hdr_cnt(X-Canary) gt 0"), "{out}");
        if std::process::Command::new("haproxy")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            let (code, _, errs) = vamp(&["render", "haproxy", "--check", file.to_str().unwrap()]);
            assert_eq!(code, 0, "{errs}");
            assert!(errs.contains("configuration is valid"), "{errs}");
        }
        std::fs::write(
            &file,
            "kind: gateways\nname: bad\nport: 9050\nroutes: {a: {weight: 100%, balance: custom}}\n",
        )
        .unwrap();
        let (code, _, errs) = vamp(&["render", "haproxy", file.to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(errs.contains("unsupported balance 'custom'"), "{errs}");
        assert_eq!(vamp(&["render", "nginx", file.to_str().unwrap()]).0, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn convert_prints_canonical_forms_that_validate() {
        let file = format!("{FIXTURES}/gateway/gateway12.yml");
        let (code, json_out, _) = vamp(&["convert", "--to", "json", "--kind", "gateway", &file]);
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&json_out).unwrap();
        assert_eq!(v["kind"], "gateways");
        assert_eq!(
            v["service"],
            json!({"host": "127.0.0.1", "port": "31234/http"})
        );
        let (code, yaml_out, _) = vamp(&["convert", "--to", "yaml", "--kind", "gateway", &file]);
        assert_eq!(code, 0);
        let from_yaml = vamp_core::dsl::read_str(&yaml_out, None).unwrap();
        let from_json = vamp_core::dsl::read_str(&json_out, None).unwrap();
        assert_eq!(from_yaml, from_json);
        assert_eq!(vamp(&["convert", "--kind", "gateway", &file]).0, 2);
        let bad = format!("{FIXTURES}/gateway/gateway16.yml");
        assert_eq!(
            vamp(&["convert", "--to", "yaml", "--kind", "gateway", &bad]).0,
            1
        );
    }
}
