//! `vamp`: command-line access to Vamp's DSL.
//!
//! ```text
//! vamp validate [--kind KIND] [--output text|json] FILE...
//! ```
//!
//! Validates every document of every file. With `--output json` it prints one JSON object per
//! document. Exit codes: 0 all valid, 1 some invalid, 2 usage or I/O error.

use std::process::ExitCode;

use serde_json::json;
use vamp_core::dsl::{Artifact, document_kind, load_documents, read_node};
use vamp_core::model::ArtifactKind;

const USAGE: &str = "usage: vamp validate [--kind KIND] [--output text|json] FILE...";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("validate") => validate(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => usage("expected a command"),
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("vamp: {why}\n{USAGE}");
    ExitCode::from(2)
}

fn validate(args: &[String]) -> ExitCode {
    let mut kind = None;
    let mut output = Output::Text;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kind" => match it.next().map(|k| (k, ArtifactKind::parse(k))) {
                Some((_, Some(k))) => kind = Some(k),
                Some((k, None)) => return usage(&format!("unknown kind '{k}'")),
                None => return usage("--kind needs a value"),
            },
            "--output" => match it.next().map(String::as_str) {
                Some("text") => output = Output::Text,
                Some("json") => output = Output::Json,
                _ => return usage("--output takes text or json"),
            },
            s if s.starts_with("--") => return usage(&format!("unknown option '{s}'")),
            f => files.push(f.to_owned()),
        }
    }
    if files.is_empty() {
        return usage("no files given");
    }
    let mut all_valid = true;
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("vamp: cannot read {file}: {e}");
                return ExitCode::from(2);
            }
        };
        let docs = match load_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                all_valid = false;
                report_error(output, file, 1, &e);
                continue;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let n = i + 1;
            let declared = document_kind(&doc);
            match read_node(doc, kind.or(declared)) {
                Ok(a) => report_ok(output, file, n, &a),
                Err(e) => {
                    all_valid = false;
                    report_error(output, file, n, &e);
                }
            }
        }
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn report_ok(output: Output, file: &str, n: usize, a: &Artifact) {
    match output {
        Output::Json => println!(
            "{}",
            json!({"file": file, "document": n, "ok": true, "kind": a.kind().as_str(), "name": a.name()})
        ),
        Output::Text => println!("{file}#{n}: ok: {} '{}'", a.kind(), a.name()),
    }
}

fn report_error(output: Output, file: &str, n: usize, e: &vamp_core::error::ReadError) {
    match output {
        Output::Json => println!(
            "{}",
            json!({"file": file, "document": n, "ok": false,
                   "error": {"code": e.code(), "message": e.to_string()}})
        ),
        Output::Text => println!("{file}#{n}: {}: {e}", e.code()),
    }
}
