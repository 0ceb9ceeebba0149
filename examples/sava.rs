//! `sava`: the demo service of the canary demo, on its own.
//!
//! ```text
//! sava --version 1.1 [--port 8080] [--fail-percent 5]
//! ```
//!
//! Answers every HTTP request with its version; `--fail-percent N` answers N of every 100
//! requests with a 500. Environment: `VAMP_SAVA_VERSION`, `VAMP_SAVA_PORT`,
//! `VAMP_SAVA_FAIL_PERCENT`.

#[path = "common/sava_service.rs"]
mod sava_service;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut version = std::env::var("VAMP_SAVA_VERSION").unwrap_or_else(|_| "1.0".into());
    let mut port = std::env::var("VAMP_SAVA_PORT").unwrap_or_else(|_| "8080".into());
    let mut fail = std::env::var("VAMP_SAVA_FAIL_PERCENT").unwrap_or_else(|_| "0".into());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--version" => &mut version,
            "--port" => &mut port,
            "--fail-percent" => &mut fail,
            _ => {
                eprintln!("usage: sava --version V [--port P] [--fail-percent N]");
                return ExitCode::from(2);
            }
        };
        match args.next() {
            Some(v) => *slot = v,
            None => {
                eprintln!("sava: {arg} needs a value");
                return ExitCode::from(2);
            }
        }
    }
    let (Ok(port), Ok(fail)) = (port.parse::<u16>(), fail.parse::<u32>()) else {
        eprintln!("sava: --port and --fail-percent take numbers");
        return ExitCode::from(2);
    };
    if fail > 100 {
        eprintln!("sava: --fail-percent is at most 100");
        return ExitCode::from(2);
    }
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sava: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("sava {version} on 127.0.0.1:{port}, failing {fail}% of requests");
    sava_service::serve(listener, version, fail);
    ExitCode::SUCCESS
}
