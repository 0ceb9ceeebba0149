//! HAProxy's request logs, received on a local UDP syslog socket and written to a
//! [`MetricsStore`] as [`RequestRecord`](vamp_core::metrics::RequestRecord)s, so request rate,
//! error rate and latency per gateway and route need no Elasticsearch or Filebeat.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use vamp_core::metrics::{DynMetricsStore, RequestRecord};

use crate::log::LogLine;

/// The JSON part of a syslog datagram (`<134>Nov 25 06:00:00 haproxy[12]: {...}`).
pub fn json_of(datagram: &str) -> Option<&str> {
    datagram.find('{').map(|i| datagram[i..].trim_end())
}

/// The JSON part of a datagram whose syslog header carries `tag` (`… <tag>[<pid>]: {...}`):
/// the agent puts a secret `log-tag` into HAProxy's configuration, so that only the HAProxy it
/// runs can feed request records (any local process can send UDP to loopback).
pub fn tagged_json<'a>(datagram: &'a str, tag: &str) -> Option<&'a str> {
    let i = datagram.find('{')?;
    let header = &datagram[..i];
    let at = header.find(tag)?;
    let before_ok = at == 0 || header[..at].ends_with(' ');
    let after = &header[at + tag.len()..];
    (before_ok && (after.starts_with('[') || after.starts_with(':')))
        .then(|| datagram[i..].trim_end())
}

/// The receive buffer the agent asks for on its syslog socket: HAProxy sends two datagrams per
/// request (the gateway's frontend and the route's), and the kernel's default buffer (about
/// 208 KiB) overflows within milliseconds at tens of thousands of requests per second.
pub const SYSLOG_RECEIVE_BUFFER: usize = 16 << 20;

/// Asks for [`SYSLOG_RECEIVE_BUFFER`]: beyond the kernel's `net.core.rmem_max` where the agent
/// may (as root: `SO_RCVBUFFORCE`), else up to it. Reports the size the kernel granted.
pub(crate) fn enlarge_receive_buffer(socket: &UdpSocket) {
    use rustix::net::sockopt;
    let forced = sockopt::set_socket_recv_buffer_size_force(socket, SYSLOG_RECEIVE_BUFFER);
    if forced.is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(socket, SYSLOG_RECEIVE_BUFFER);
    }
    let granted = sockopt::socket_recv_buffer_size(socket).unwrap_or(0);
    metrics::gauge!("vamp_gateway_agent_syslog_receive_buffer_bytes").set(granted as f64);
    tracing::info!(
        bytes = granted,
        forced = forced.is_ok(),
        "syslog socket receive buffer"
    );
}

/// Request records parsed but not yet stored, at most (about 60 MiB): beyond it, while the
/// store is away, new records are dropped and counted ([`LogCounts::dropped`]).
pub const MAX_PENDING_RECORDS: u64 = 250_000;

/// What became of the request records HAProxy logged, counted by the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogCounts {
    /// Log lines of this agent's HAProxy parsed into records.
    pub received: u64,
    /// Records the store accepted.
    pub stored: u64,
    /// Records waiting for the store (retried while it is away).
    pub pending: u64,
    /// Records dropped because [`MAX_PENDING_RECORDS`] were waiting.
    pub dropped: u64,
    /// Records the store refused for good (a mapping error, say): reported, not retried.
    pub refused: u64,
    /// Datagrams that were not a log line of this agent's HAProxy.
    pub skipped: u64,
}

impl LogCounts {
    /// The counts as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "received": self.received,
            "stored": self.stored,
            "pending": self.pending,
            "dropped": self.dropped,
            "refused": self.refused,
            "skipped": self.skipped,
        })
    }
}

type Counts = tokio::sync::watch::Sender<super::AgentStatus>;

fn count(status: &Counts, f: impl FnOnce(&mut LogCounts)) {
    status.send_modify(|s| f(&mut s.logs));
}

/// Receives datagrams on `socket` until it fails, recording each request's time in the
/// [`REQUEST_DURATION_HISTOGRAM`](vamp_core::metrics::REQUEST_DURATION_HISTOGRAM) and, with a
/// store, batching records (every 100 ms, or 500 records) for [`ship`]. Lines that are not Vamp's log format are counted and skipped. The
/// receiver never waits for the store, so a slow or absent store does not make the kernel
/// drop datagrams: batches queue for the shipper up to [`MAX_PENDING_RECORDS`], and beyond
/// that new ones are dropped and counted.
///
/// Records are timed by the agent's clock: arrival minus the request's total time. HAProxy's
/// `%t` is in the host's local time zone without an offset, so parsing it would need the time
/// zone; a log line arrives over loopback as the request ends.
pub(crate) async fn receive(
    socket: UdpSocket,
    metrics: Option<Arc<DynMetricsStore>>,
    tag: String,
    status: Counts,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<RequestRecord>>();
    let store = metrics.is_some();
    let _stop_shipper = metrics.map(|m| AbortOnDrop(tokio::spawn(ship(rx, m, status.clone()))));
    let mut buf = vec![0u8; 65_536];
    let mut batch: Vec<RequestRecord> = Vec::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let received = match flush_at {
            Some(at) => tokio::time::timeout_at(at, socket.recv_from(&mut buf))
                .await
                .ok(),
            None => Some(socket.recv_from(&mut buf).await),
        };
        match received {
            Some(Ok((_, from))) if !from.ip().is_loopback() => {
                metrics::counter!("vamp_gateway_agent_log_lines_total", "result" => "refused")
                    .increment(1);
                continue;
            }
            Some(Ok((n, _))) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                match tagged_json(&text, &tag)
                    .and_then(LogLine::parse)
                    .and_then(|l| l.to_request(0))
                {
                    Some(mut record) => {
                        let total = i64::try_from(record.total_time_ms).unwrap_or(0);
                        record.timestamp_ms = vamp_core::time::now_millis() - total;
                        metrics::counter!("vamp_gateway_agent_log_lines_total", "result" => "parsed")
                            .increment(1);
                        // For Prometheus: the program sets the histogram's buckets
                        // (`vamp_core::metrics::REQUEST_DURATION_BUCKETS`).
                        metrics::histogram!(
                            vamp_core::metrics::REQUEST_DURATION_HISTOGRAM,
                            "frontend" => record.frontend.clone()
                        )
                        .record(record.total_time_ms as f64 / 1000.0);
                        if !store {
                            continue;
                        }
                        batch.push(record);
                        flush_at.get_or_insert_with(|| {
                            tokio::time::Instant::now() + Duration::from_millis(100)
                        });
                    }
                    None => {
                        metrics::counter!("vamp_gateway_agent_log_lines_total", "result" => "skipped")
                            .increment(1);
                        count(&status, |c| c.skipped += 1);
                        tracing::debug!(bytes = n, "not a log line of this agent's HAProxy");
                    }
                }
                if batch.len() < 500 {
                    continue;
                }
            }
            Some(Err(e)) => {
                // ICMP errors and the like: keep receiving, without spinning.
                tracing::warn!(error = %e, "receiving a log datagram failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            None => {}
        }
        flush_at = None;
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let mut room = false;
        status.send_modify(|s| {
            s.logs.received += n;
            room = s.logs.pending + n <= MAX_PENDING_RECORDS;
            if room {
                s.logs.pending += n;
            } else {
                s.logs.dropped += n;
            }
        });
        if room {
            if tx.send(std::mem::take(&mut batch)).is_err() {
                return;
            }
        } else {
            metrics::counter!("vamp_gateway_agent_log_records_total", "result" => "dropped")
                .increment(n);
            tracing::warn!(
                records = n,
                pending = MAX_PENDING_RECORDS,
                "request records dropped: the store is behind"
            );
            batch.clear();
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes batches to the store in order. A batch the store could not take for now (it is
/// away, or busy) is sent again, unchanged, with backoff (100 ms up to 5 s) until it is
/// stored: unchanged, so a store that derives ids from the batch (Elasticsearch) stores
/// nothing twice when an earlier attempt got through without an answer. A batch refused for
/// good is counted and reported.
async fn ship(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<RequestRecord>>,
    metrics: Arc<DynMetricsStore>,
    status: Counts,
) {
    while let Some(batch) = rx.recv().await {
        let n = batch.len() as u64;
        let mut backoff = Duration::from_millis(100);
        loop {
            match metrics.record(batch.clone()).await {
                Ok(()) => {
                    metrics::counter!("vamp_gateway_agent_log_records_total", "result" => "stored")
                        .increment(n);
                    count(&status, |c| {
                        c.stored += n;
                        c.pending -= n;
                    });
                    break;
                }
                Err(e) if e.is_temporary() => {
                    tracing::warn!(error = %e, records = n, retry_in_ms = backoff.as_millis() as u64, "the metrics store is away; keeping the records");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    metrics::counter!("vamp_gateway_agent_log_records_total", "result" => "refused")
                        .increment(n);
                    count(&status, |c| {
                        c.refused += n;
                        c.pending -= n;
                    });
                    tracing::error!(error = %e, records = n, "the metrics store refused request records");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The syslog socket gets the larger buffer: all of it as root (`SO_RCVBUFFORCE`), else as
    /// much as `net.core.rmem_max` allows. (Linux reports twice the size set.)
    #[tokio::test]
    async fn the_syslog_socket_gets_a_large_receive_buffer() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = rustix::net::sockopt::socket_recv_buffer_size(&socket).unwrap();
        enlarge_receive_buffer(&socket);
        let granted = rustix::net::sockopt::socket_recv_buffer_size(&socket).unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let want = if rustix::process::geteuid().is_root() {
            SYSLOG_RECEIVE_BUFFER
        } else {
            SYSLOG_RECEIVE_BUFFER.min(rmem_max)
        };
        assert!(
            granted >= want && granted >= before,
            "granted {granted} bytes (was {before}), wanted at least {want}"
        );
    }

    #[test]
    fn the_json_is_cut_out_of_the_syslog_line() {
        assert_eq!(
            json_of("<134>Nov 25 06:00:00 haproxy[12]: {\"ci\":\"1\"}\n"),
            Some("{\"ci\":\"1\"}")
        );
        assert_eq!(json_of("<134>no json"), None);
    }

    #[test]
    fn only_datagrams_with_the_agent_s_tag_are_read() {
        let tag = "vga-0123456789abcdef";
        let line = "<134>Nov 25 06:00:00 vga-0123456789abcdef[12]: {\"ci\":\"1\"}";
        assert_eq!(tagged_json(line, tag), Some("{\"ci\":\"1\"}"));
        for forged in [
            "<134>Nov 25 06:00:00 haproxy[12]: {\"ci\":\"1\"}",
            "<134>Nov 25 06:00:00 xvga-0123456789abcdef[12]: {}",
            "<134>Nov 25 06:00:00 vga-0123456789abcdefff[12]: {}",
            "<134>Nov 25 06:00:00 haproxy[12]: {\"t\":\"vga-0123456789abcdef[\"}",
        ] {
            assert_eq!(tagged_json(forged, tag), None, "{forged}");
        }
    }
}
