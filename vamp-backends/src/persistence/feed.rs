//! The change feed every SQL store shares: read the log after the last version delivered,
//! page by page, and wait (poll, or a notification) when there is nothing new.

use std::collections::VecDeque;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use vamp_core::Error;
use vamp_core::kv::Version;
use vamp_core::persistence::ArtifactRecord;

/// Where a change feed reads from.
#[async_trait]
pub(crate) trait FeedSource: Send + 'static {
    /// The newest version handed out.
    async fn head(&mut self) -> Result<i64, Error>;
    /// The next records after version `after`, in version order (empty when none).
    async fn page(&mut self, after: i64) -> Result<Vec<ArtifactRecord>, Error>;
    /// Waits until new records may be there (a poll interval, or a notification).
    async fn idle(&mut self);
}

struct Feed<S> {
    source: S,
    last: Option<i64>,
    buffer: VecDeque<ArtifactRecord>,
}

/// The records written after `since` (or, without it, after the version current when the
/// stream is first polled), forever. A failure is yielded as an error item after an idle wait,
/// so a consumer reading through an outage does not spin; the feed then goes on.
pub(crate) fn change_feed<S: FeedSource>(
    source: S,
    since: Option<Version>,
) -> BoxStream<'static, Result<ArtifactRecord, Error>> {
    let feed = Feed {
        source,
        last: since.map(|v| v.0 as i64),
        buffer: VecDeque::new(),
    };
    stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(r) = f.buffer.pop_front() {
                return Some((Ok(r), f));
            }
            let last = match f.last {
                Some(l) => l,
                None => match f.source.head().await {
                    Ok(v) => {
                        f.last = Some(v);
                        v
                    }
                    Err(e) => {
                        f.source.idle().await;
                        return Some((Err(e), f));
                    }
                },
            };
            match f.source.page(last).await {
                Err(e) => {
                    f.source.idle().await;
                    return Some((Err(e), f));
                }
                Ok(records) if records.is_empty() => f.source.idle().await,
                Ok(records) => {
                    f.last = records.last().map(|r| r.version.0 as i64);
                    f.buffer.extend(records);
                }
            }
        }
    })
    .boxed()
}
