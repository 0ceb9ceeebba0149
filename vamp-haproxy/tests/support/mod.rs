//! Test support: a real `haproxy -c`, and gateways built from the DSL plus targets.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::model::{ArtifactKind, Gateway, Route, RouteTarget};

pub use vamp_haproxy::BASE_CONFIG;

/// Whether integration tests must run (a missing server is a failure).
pub fn integration_required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The HAProxy binary, if installed; panics when integration tests are required and it is not.
pub fn haproxy() -> Option<PathBuf> {
    let bin = std::env::var("VAMP_HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
    match Command::new(&bin).arg("-v").output() {
        Ok(o) if o.status.success() => Some(PathBuf::from(bin)),
        _ => {
            assert!(
                !integration_required(),
                "HAProxy ('{bin}') is required: install Debian's haproxy package or set VAMP_HAPROXY_BIN"
            );
            eprintln!("SKIPPED: HAProxy not found; set VAMP_TEST_INTEGRATION=1 to require it");
            None
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `haproxy -c` on the base config followed by `generated`; `Ok(())` or HAProxy's output.
/// `None` when HAProxy is not installed and not required.
pub fn haproxy_check(generated: &str) -> Option<Result<(), String>> {
    let bin = haproxy()?;
    let dir = std::env::temp_dir().join(format!("vamp-haproxy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "check-{}.cfg",
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&file, format!("{BASE_CONFIG}\n{generated}")).unwrap();
    let out = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// Asserts that HAProxy accepts the configuration (when HAProxy is available).
pub fn assert_haproxy_accepts(generated: &str) {
    if let Some(Err(e)) = haproxy_check(generated) {
        panic!("haproxy -c rejected the configuration:\n{e}\n--- configuration ---\n{generated}");
    }
}

/// A gateway from DSL text.
pub fn gateway(yaml: &str) -> Gateway {
    match read_str(yaml, Some(ArtifactKind::Gateway))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .remove(0)
    {
        AnyArtifact::Gateway(g) => g,
        other => panic!("{other:?}"),
    }
}

/// An internal target.
pub fn target(name: &str, host: Option<&str>, port: i64) -> RouteTarget {
    RouteTarget::Internal {
        name: name.into(),
        host: host.map(str::to_owned),
        port,
    }
}

/// Sets the targets of route `index`.
pub fn with_targets(mut g: Gateway, index: usize, targets: Vec<RouteTarget>) -> Gateway {
    match &mut g.routes[index] {
        Route::Default(d) => d.targets = targets,
        other => panic!("{other:?}"),
    }
    g
}

/// Vamp's normalisation (haproxy-cases.md §0).
pub fn normalize(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\n\s*\n\s*\n").unwrap();
    let collapsed = re.replace_all(text, "\n\n");
    let ws = regex::Regex::new(r"\s+").unwrap();
    collapsed
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| ws.replace_all(l, " ").into_owned())
        .collect()
}
