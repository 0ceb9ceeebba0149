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

/// Receives datagrams on `socket` until it fails, batching records into `metrics` every
/// 100 ms (or 500 records). Lines that are not Vamp's log format are counted and skipped.
///
/// Records are timed by the agent's clock: arrival minus the request's total time. HAProxy's
/// `%t` is in the host's local time zone without an offset, so parsing it would need the time
/// zone; a log line arrives over loopback as the request ends.
pub(crate) async fn receive(socket: UdpSocket, metrics: Arc<DynMetricsStore>) {
    let mut buf = vec![0u8; 65_536];
    let mut batch: Vec<RequestRecord> = Vec::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let received = match flush_at {
            Some(at) => tokio::time::timeout_at(at, socket.recv(&mut buf))
                .await
                .ok(),
            None => Some(socket.recv(&mut buf).await),
        };
        match received {
            Some(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                match json_of(&text)
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
                        tracing::debug!(line = %text, "not a Vamp log line");
                    }
                }
                if batch.len() < 500 {
                    continue;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the log socket failed");
                return;
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
}
