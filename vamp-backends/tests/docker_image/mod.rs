//! The Docker tests' image and namespaces, shared by the scheduler's tests and the
//! programs' end-to-end test (`#[path]`-included there).
#![allow(dead_code)]

/// The test image: busybox's `httpd` serving `$VERSION` (or the host name) on `$PORT`; with
/// `$FAIL_PERCENT` set, a CGI that answers `503` with `$VERSION failing` to about that share of
/// requests, drawn at random (busybox `sh`'s `$RANDOM`), and `$VERSION` to the rest.
pub const IMAGE: &str = "vamp-test/busybox-httpd:2";

/// The CGI of a service failing a share of its requests (`$FAIL_PERCENT`).
const FAILING_CGI: &str = r#"#!/bin/sh
if [ "$((RANDOM % 100))" -lt "$FAIL_PERCENT" ]; then
  printf 'Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\n%s failing\n' "$VERSION"
else
  printf 'Content-Type: text/plain\r\n\r\n%s\n' "$VERSION"
fi
"#;

pub fn integration_required() -> bool {
    std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Builds the test image once per machine (tagged; rebuilt only when missing).
pub fn ensure_image() -> Result<(), String> {
    // One build at a time: parallel imports would leave untagged copies behind.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("the docker command: {e}"))?;
    if present.success() {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("busybox is not installed (Debian: apt-get install busybox-static)")?;
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    for applet in ["sh", "httpd", "mkdir", "echo", "sleep", "cat", "cp"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    let cgi = root.path().join("failing.cgi");
    std::fs::write(&cgi, FAILING_CGI).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    // Without index.html, busybox httpd answers `/` with /cgi-bin/index.cgi.
    let script = r#"mkdir -p /www/cgi-bin && echo ok > /www/health && if [ -n "$FAIL_PERCENT" ]; then cp /failing.cgi /www/cgi-bin/index.cgi; else echo "${VERSION:-$HOSTNAME}" > /www/index.html; fi && exec httpd -f -p "${PORT:-8080}" -h /www"#;
    let cmd = serde_json::to_string(&["/bin/sh", "-c", script]).unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -cf - . | docker import --change 'CMD {cmd}' --change 'LABEL io.vamp.test=1' - {IMAGE} >/dev/null",
            root.path().display()
        ))
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("docker import of {IMAGE} failed"))
    }
}

/// A namespace of this test's own; its containers and volumes are removed on drop.
pub struct Namespace(pub String);

impl Namespace {
    /// `<run>-<test>`: the test command names the run (`VAMP_TEST_RUN`) to remove what a
    /// killed test left.
    pub fn new(test: &str) -> Self {
        let run = std::env::var("VAMP_TEST_RUN")
            .ok()
            .filter(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
            .unwrap_or_else(|| format!("p{}", std::process::id()));
        Self(format!("{run}-{test}"))
    }
}

impl Namespace {
    /// The ids of its containers, running or not.
    pub fn containers(&self) -> Result<Vec<String>, String> {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.vamp.namespace={}", self.0),
            ])
            .output()
            .map_err(|e| format!("the docker command: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "docker ps: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let label = format!("label=io.vamp.namespace={}", self.0);
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker ps -aq --filter '{label}' | xargs -r docker rm -f >/dev/null 2>&1; docker volume ls -q --filter '{label}' | xargs -r docker volume rm -f >/dev/null 2>&1"
            ))
            .status();
    }
}
