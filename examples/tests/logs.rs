//! `GET /api/v1/logs`: the server's own log records as Server-Sent Events over a real HTTP
//! connection, with the `level` and `logger` filters (`vamp_examples::logs` installed as the
//! process's subscriber, as `vamp serve` installs it).

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use vamp_examples::serve::start;

/// An open stream: its `log` events' data, in order.
struct Stream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Stream {
    async fn open(base: &str, query: &str) -> Self {
        let r = reqwest::Client::new()
            .get(format!("{base}/api/v1/logs{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{query}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            body: Box::pin(r.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next `log` event's record (within a bound).
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let event: String = self.buffer.drain(..end + 2).collect();
                    if event.lines().any(|l| l == "event: log") {
                        let data = event
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .expect("a data line");
                        return serde_json::from_str(data).unwrap();
                    }
                    continue;
                }
                let chunk = self
                    .body
                    .next()
                    .await
                    .expect("the stream stays open")
                    .unwrap();
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("a log record within 30 s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_streams_its_own_log_records_filtered_by_level_and_logger() {
    vamp_examples::logs::install();
    let dir = tempfile::tempdir().unwrap();
    let server = start(support::memory_config(dir.path())).await.unwrap();
    let base = format!("http://{}", server.addr);
    let mut all = Stream::open(&base, "?level=info").await;
    let mut errors = Stream::open(&base, "?level=ERROR").await;
    let mut mine = Stream::open(&base, "/?logger=logs").await;

    // A write is logged (INFO, by the server's security layer).
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/breeds"))
        .header("Content-Type", "application/x-yaml")
        .body("name: logged\ndeployable: command://true\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let write = loop {
        let record = all.next().await;
        if record["message"]
            .as_str()
            .unwrap()
            .contains("/api/v1/breeds")
        {
            break record;
        }
    };
    assert_eq!(write["level"], "INFO", "{write}");
    assert!(
        write["logger"]
            .as_str()
            .unwrap()
            .starts_with("vamp_examples"),
        "{write}"
    );
    assert!(
        write["timestamp"].as_str().unwrap().ends_with('Z'),
        "{write}"
    );

    // An ERROR from this test's own logger: the first record the ERROR stream and the
    // `logs` logger's stream see (the INFO write before it, from another logger, filtered).
    tracing::error!(target: "logs", answer = 42, "the test's own record");
    for stream in [&mut errors, &mut mine] {
        let record = stream.next().await;
        assert_eq!(record["level"], "ERROR", "{record}");
        assert_eq!(record["logger"], "logs", "{record}");
        assert_eq!(
            record["message"], "the test's own record answer=42",
            "{record}"
        );
    }

    // A level that is not one is refused.
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/logs?level=loud"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown log level 'loud'"));
    server.stop().await;
}
