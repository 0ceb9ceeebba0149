//! The HAProxy process the agent owns: master-worker mode, the master CLI (`show proc`,
//! `reload`) and the runtime API on the stats socket (`set weight`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use super::AgentError;
use crate::update::WeightChange;

/// What `show proc` on the master CLI says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// The master's PID.
    pub master_pid: u32,
    /// Reloads the master has done.
    pub reloads: u64,
    /// Reloads that failed.
    pub failed_reloads: u64,
    /// Current workers' PIDs.
    pub workers: Vec<u32>,
    /// Old workers (finishing their connections).
    pub old_workers: Vec<u32>,
}

/// Parses `show proc` (HAProxy 2.6):
///
/// ```text
/// #<PID>          <type>          <reloads>       <uptime>        <version>
/// 1378            master          2 [failed: 1]   0d00h00m05s     2.6.12-1+deb12u4
/// # workers
/// 1505            worker          1               0d00h00m01s     2.6.12-1+deb12u4
/// # old workers
/// 1381            worker          2               0d00h00m09s     2.6.12-1+deb12u4
/// # programs
/// ```
pub fn parse_show_proc(text: &str) -> Option<ProcInfo> {
    let mut info = ProcInfo::default();
    let mut section = "";
    let mut saw_master = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if !comment.starts_with('<') {
                section = match comment {
                    "workers" => "workers",
                    "old workers" => "old",
                    _ => "other",
                };
            }
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let (Some(pid), Some(kind)) = (
            tokens.first().and_then(|p| p.parse::<u32>().ok()),
            tokens.get(1),
        ) else {
            continue;
        };
        match (*kind, section) {
            ("master", _) => {
                saw_master = true;
                info.master_pid = pid;
                info.reloads = tokens.get(2).and_then(|r| r.parse().ok()).unwrap_or(0);
                info.failed_reloads = line
                    .split("[failed:")
                    .nth(1)
                    .and_then(|r| r.trim_start().split(']').next())
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
            }
            ("worker", "workers") => info.workers.push(pid),
            ("worker", "old") => info.old_workers.push(pid),
            _ => {}
        }
    }
    saw_master.then_some(info)
}

/// Sends one command to a HAProxy CLI socket and reads the whole answer. HAProxy keeps the
/// connection open until the client half-closes, so the write side is shut down first.
pub async fn cli(socket: &Path, command: &str, timeout: Duration) -> Result<String, AgentError> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(command.as_bytes()).await?;
        stream.write_all(b"\n").await?;
        stream.shutdown().await?;
        let mut out = String::new();
        stream.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(AgentError::Cli {
            socket: socket.to_owned(),
            command: command.to_owned(),
            message: e.to_string(),
        }),
        Err(_) => Err(AgentError::Cli {
            socket: socket.to_owned(),
            command: command.to_owned(),
            message: format!("no answer within {timeout:?}"),
        }),
    }
}

/// A running HAProxy in master-worker mode.
#[derive(Debug)]
pub struct HaProxy {
    master_socket: PathBuf,
    stats_socket: PathBuf,
    child: Child,
    timeout: Duration,
}

impl HaProxy {
    /// Starts `bin -W -S <master socket> -f <config>` and waits until a worker runs; returns
    /// it with the `show proc` that listed the worker.
    pub async fn start(
        bin: &Path,
        config: &Path,
        master_socket: &Path,
        stats_socket: &Path,
        timeout: Duration,
    ) -> Result<(Self, ProcInfo), AgentError> {
        let _ = std::fs::remove_file(master_socket);
        let mut child = Command::new(bin)
            .arg("-W")
            .arg("-S")
            .arg(format!("{},mode,600", master_socket.display()))
            .arg("-f")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AgentError::Start {
                message: format!("cannot run {}: {e}", bin.display()),
            })?;
        forward_lines(child.stdout.take(), "stdout");
        forward_lines(child.stderr.take(), "stderr");
        let mut haproxy = Self {
            master_socket: master_socket.to_owned(),
            stats_socket: stats_socket.to_owned(),
            child,
            timeout,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = haproxy.exited() {
                return Err(AgentError::Start {
                    message: format!("HAProxy exited at start ({status})"),
                });
            }
            if let Ok(info) = haproxy.show_proc().await
                && !info.workers.is_empty()
            {
                return Ok((haproxy, info));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(AgentError::Start {
                    message: format!("no HAProxy worker within {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status, if the master has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The master's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `show proc`.
    pub async fn show_proc(&self) -> Result<ProcInfo, AgentError> {
        let out = cli(&self.master_socket, "show proc", self.timeout).await?;
        parse_show_proc(&out).ok_or_else(|| AgentError::Cli {
            socket: self.master_socket.clone(),
            command: "show proc".into(),
            message: format!("unexpected answer: {out:?}"),
        })
    }

    /// Reloads through the master CLI and confirms it: the master's reload counter rises and a
    /// new worker appears. A reload the master reports as failed (or that shows no new worker
    /// in time) is an error; the old worker then keeps serving.
    pub async fn reload(&self) -> Result<ProcInfo, AgentError> {
        let before = self.show_proc().await?;
        cli(&self.master_socket, "reload", self.timeout).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            // The master re-executes itself: its CLI is briefly unavailable.
            if let Ok(now) = self.show_proc().await {
                if now.failed_reloads > before.failed_reloads {
                    return Err(AgentError::Reload {
                        message: "HAProxy reported the reload as failed; the previous worker keeps serving".into(),
                    });
                }
                if now.reloads > before.reloads
                    && now.workers.iter().any(|w| !before.workers.contains(w))
                {
                    return Ok(now);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(AgentError::Reload {
                    message: format!("no new worker within {:?}", self.timeout),
                });
            }
        }
    }

    /// Applies weights through the runtime API, all in one connection.
    pub async fn set_weights(&self, changes: &[WeightChange]) -> Result<(), AgentError> {
        if changes.is_empty() {
            return Ok(());
        }
        let command = changes
            .iter()
            .map(|c| format!("set weight {}/{} {}", c.backend, c.server, c.weight))
            .collect::<Vec<_>>()
            .join("; ");
        let out = cli(&self.stats_socket, &command, self.timeout).await?;
        // `set weight` answers nothing on success.
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(AgentError::Cli {
                socket: self.stats_socket.clone(),
                command,
                message: out.trim().to_owned(),
            })
        }
    }

    /// Stops HAProxy (the master and its workers).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGUSR1 would be a soft stop; the agent's owner asked for it to go.
            // The shell's own `kill`: no procps needed.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -s TERM {pid}"))
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Logs each line HAProxy writes on `pipe` through `tracing`.
fn forward_lines(pipe: Option<impl AsyncRead + Unpin + Send + 'static>, stream: &'static str) {
    if let Some(pipe) = pipe {
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "vamp_haproxy::agent::haproxy", stream, "{line}");
            }
        });
    }
}

/// Runs `haproxy -c -f <file>`: `Ok` or HAProxy's messages.
pub async fn validate(bin: &Path, file: &Path) -> Result<Result<(), String>, AgentError> {
    let out = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| AgentError::Start {
            message: format!("cannot run {}: {e}", bin.display()),
        })?;
    if out.status.success() {
        Ok(Ok(()))
    } else {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let alerts: Vec<&str> = text.lines().filter(|l| l.contains("[ALERT]")).collect();
        Ok(Err(if alerts.is_empty() {
            text.trim().to_owned()
        } else {
            alerts.join("\n")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_proc_is_parsed() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n1378            master          2 [failed: 1]   0d00h00m05s     2.6.12-1+deb12u4\n# workers\n1505            worker          1               0d00h00m01s     2.6.12-1+deb12u4\n# old workers\n1381            worker          2               0d00h00m09s     2.6.12\n# programs\n";
        assert_eq!(
            parse_show_proc(text),
            Some(ProcInfo {
                master_pid: 1378,
                reloads: 2,
                failed_reloads: 1,
                workers: vec![1505],
                old_workers: vec![1381],
            })
        );
        assert_eq!(parse_show_proc(""), None);
        assert_eq!(parse_show_proc("Unknown command\n"), None);
    }
}
