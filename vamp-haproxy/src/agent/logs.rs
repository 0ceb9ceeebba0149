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

/// Receives datagrams on `socket` until it fails, batching records into `metrics` every
/// 100 ms (or 500 records). Lines that are not Vamp's log format are counted and skipped.
///
/// Records are timed by the agent's clock: arrival minus the request's total time. HAProxy's
/// `%t` is in the host's local time zone without an offset, so parsing it would need the time
/// zone; a log line arrives over loopback as the request ends.
pub(crate) async fn receive(socket: UdpSocket, metrics: Arc<DynMetricsStore>, tag: String) {
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
                        batch.push(record);
                        flush_at.get_or_insert_with(|| {
                            tokio::time::Instant::now() + Duration::from_millis(100)
                        });
                    }
                    None => {
                        metrics::counter!("vamp_gateway_agent_log_lines_total", "result" => "skipped")
                            .increment(1);
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
        if !batch.is_empty()
            && let Err(e) = metrics.record(std::mem::take(&mut batch)).await
        {
            tracing::warn!(error = %e, "could not store request records");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
