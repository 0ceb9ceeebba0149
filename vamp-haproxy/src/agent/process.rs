//! The HAProxy process the agent owns: master-worker mode, the master CLI (`show proc`,
//! `reload`) and the runtime API on the stats socket (`set weight`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::Signal;
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

/// How a reload that HAProxy refused (rather than one that did not finish) is reported.
pub(crate) const RELOAD_FAILED: &str = "HAProxy reported the reload as failed";

/// A running HAProxy in master-worker mode: started by this agent, or adopted from an earlier
/// run of it (found on the master socket after the agent was killed).
#[derive(Debug)]
pub struct HaProxy {
    master_socket: PathBuf,
    stats_socket: PathBuf,
    /// `None` when adopted: the master is not this process's child.
    child: Option<Child>,
    pid: u32,
    timeout: Duration,
}

/// What an earlier run left on the master socket.
#[derive(Debug)]
pub enum Found {
    /// Nothing answers.
    Nothing,
    /// An HAProxy master of this agent's configuration file, now managed by this agent.
    Adopted(HaProxy, ProcInfo),
    /// A master that answers on the socket but runs another configuration file.
    Foreign(u32),
}

/// Whether a process runs (and is not a zombie).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S ...`: the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A process's command line.
pub(crate) fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is an HAProxy running `config`.
pub(crate) fn runs_config(pid: u32, config: &Path) -> bool {
    let args = cmdline(pid);
    let config = config.to_string_lossy();
    args.windows(2).any(|w| w[0] == "-f" && w[1] == config)
}

/// Sends `signal` to `pid` with the `kill` system call. Not through a shell's `kill`: the
/// agent's container image has no shell, and a signal sent that way was silently lost (a
/// stopped container's HAProxy was never drained, and the engine killed the agent).
pub(crate) async fn signal(pid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, signal) {
        tracing::debug!(pid = pid.as_raw_nonzero().get(), error = %e, "signal not delivered");
    }
}

/// Stops a process that is not this agent's child: TERM, then KILL after `grace`.
pub(crate) async fn terminate(pid: u32, grace: Duration) {
    signal(pid, Signal::TERM).await;
    let deadline = tokio::time::Instant::now() + grace;
    while alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if alive(pid) {
        signal(pid, Signal::KILL).await;
        let deadline = tokio::time::Instant::now() + grace;
        while alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl HaProxy {
    /// Starts `bin -W -S <master socket> -p <pid file> -f <config>` and waits until a worker
    /// runs; returns it with the `show proc` that listed the worker.
    pub async fn start(
        bin: &Path,
        config: &Path,
        master_socket: &Path,
        stats_socket: &Path,
        pid_file: &Path,
        timeout: Duration,
    ) -> Result<(Self, ProcInfo), AgentError> {
        let _ = std::fs::remove_file(master_socket);
        let mut child = Command::new(bin)
            .arg("-W")
            .arg("-S")
            .arg(format!("{},mode,600", master_socket.display()))
            .arg("-p")
            .arg(pid_file)
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
        let pid = child.id().unwrap_or_default();
        let mut haproxy = Self {
            master_socket: master_socket.to_owned(),
            stats_socket: stats_socket.to_owned(),
            child: Some(child),
            pid,
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
                haproxy.stop().await;
                return Err(AgentError::Start {
                    message: format!("no HAProxy worker within {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Looks for a master left by an earlier run on `master_socket`: adopts it when it runs
    /// `config`.
    pub async fn find(
        config: &Path,
        master_socket: &Path,
        stats_socket: &Path,
        timeout: Duration,
    ) -> Found {
        if !master_socket.exists() {
            return Found::Nothing;
        }
        let Ok(out) = cli(master_socket, "show proc", timeout).await else {
            return Found::Nothing;
        };
        let Some(info) = parse_show_proc(&out) else {
            return Found::Nothing;
        };
        if info.master_pid == 0 || !alive(info.master_pid) {
            return Found::Nothing;
        }
        if !runs_config(info.master_pid, config) {
            return Found::Foreign(info.master_pid);
        }
        let haproxy = Self {
            master_socket: master_socket.to_owned(),
            stats_socket: stats_socket.to_owned(),
            child: None,
            pid: info.master_pid,
            timeout,
        };
        Found::Adopted(haproxy, info)
    }

    /// Whether the master has exited, and how.
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
            None => (!alive(self.pid)).then(|| "the adopted master is gone".to_owned()),
        }
    }

    /// The master's PID.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid).filter(|p| *p != 0)
    }

    /// Whether this agent adopted the master from an earlier run.
    pub fn adopted(&self) -> bool {
        self.child.is_none()
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
                        message: format!("{RELOAD_FAILED}; the previous worker keeps serving"),
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

    /// Applies weights through the runtime API, all in one connection, then reads each back
    /// (`get weight`): the change counts only when HAProxy reports every new weight.
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
        if !out.trim().is_empty() {
            return Err(AgentError::Cli {
                socket: self.stats_socket.clone(),
                command,
                message: out.trim().to_owned(),
            });
        }
        let query = changes
            .iter()
            .map(|c| format!("get weight {}/{}", c.backend, c.server))
            .collect::<Vec<_>>()
            .join("; ");
        let out = cli(&self.stats_socket, &query, self.timeout).await?;
        // One `<weight> (initial <weight>)` line per server.
        let live: Vec<Option<u16>> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().next().and_then(|w| w.parse().ok()))
            .collect();
        let expected: Vec<Option<u16>> = changes.iter().map(|c| Some(c.weight)).collect();
        if live == expected {
            Ok(())
        } else {
            Err(AgentError::Cli {
                socket: self.stats_socket.clone(),
                command: query,
                message: format!("HAProxy reports weights {live:?}, not {expected:?}"),
            })
        }
    }

    /// Leaves the master running: it is no longer this process's to stop (a later agent on
    /// the same sockets adopts it). Its handle is forgotten, not dropped, so that it is not
    /// killed with it.
    pub fn let_go(mut self) {
        if let Some(child) = self.child.take() {
            std::mem::forget(child);
        }
    }

    /// Stops HAProxy gracefully: a soft stop (`SIGUSR1`: the listeners close, connections in
    /// flight finish) for at most `grace`, then [`HaProxy::stop`]. A zero `grace` stops at once.
    pub async fn drain_and_stop(mut self, grace: Duration) {
        if !grace.is_zero() {
            let pid = self
                .child
                .as_ref()
                .and_then(tokio::process::Child::id)
                .unwrap_or(self.pid);
            signal(pid, Signal::USR1).await;
            let exited = match &mut self.child {
                Some(child) => tokio::time::timeout(grace, child.wait()).await.is_ok(),
                None => {
                    let deadline = tokio::time::Instant::now() + grace;
                    while alive(pid) && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    !alive(pid)
                }
            };
            if exited {
                tracing::info!(pid, "HAProxy drained and exited");
                return;
            }
            tracing::warn!(
                pid,
                grace_ms = grace.as_millis() as u64,
                "HAProxy still had connections after the drain period; stopping it"
            );
        }
        self.stop().await;
    }

    /// Stops HAProxy (the master and its workers).
    pub async fn stop(mut self) {
        match &mut self.child {
            Some(child) => {
                if let Some(pid) = child.id() {
                    // SIGUSR1 would be a soft stop; the agent's owner asked for it to go.
                    signal(pid, Signal::TERM).await;
                }
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            None => terminate(self.pid, Duration::from_secs(5)).await,
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

/// Runs `haproxy -c -f <file>` within `timeout` (the process is killed past it): `Ok` or
/// HAProxy's messages. A check that cannot run or does not finish is an [`AgentError::Start`].
pub async fn validate(
    bin: &Path,
    file: &Path,
    timeout: Duration,
) -> Result<Result<(), String>, AgentError> {
    let child = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| AgentError::Start {
            message: format!("cannot run {}: {e}", bin.display()),
        })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(AgentError::Start {
                message: format!("{} -c failed: {e}", bin.display()),
            });
        }
        Err(_) => {
            return Err(AgentError::Start {
                message: format!("{} -c did not finish within {timeout:?}", bin.display()),
            });
        }
    };
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
