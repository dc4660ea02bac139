//! Retention: with `retention.max_age_days` above 0, deletes the messages older than that
//! every `retention.interval_secs`, `retention.batch_size` at a time. Each batch is one
//! short write; between batches the task yields, so the writes of live traffic (on SQLite
//! they share one writer) are served in between and messages keep being answered.

use std::time::Duration;

use botd_actors::store::{queries, StoreError, StoreHandle};
use slog::{info, warn, Logger};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;

const MS_PER_DAY: i64 = 86_400_000;

/// Runs retention until `shutdown`; returns at once when `max_age_days` is 0.
pub async fn run(
    store: StoreHandle,
    settings: RetentionSettings,
    log: Logger,
    shutdown: CancellationToken,
) {
    if settings.max_age_days == 0 {
        return;
    }
    let interval = Duration::from_secs(settings.interval_secs.max(1));
    info!(log, "Retention is on."; "max_age_days" => settings.max_age_days, "interval_secs" => settings.interval_secs, "batch_size" => settings.batch_size);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let cutoff =
            chrono::Utc::now().timestamp_millis() - i64::from(settings.max_age_days) * MS_PER_DAY;
        match sweep(&store, cutoff, settings.batch_size, &shutdown).await {
            Ok(0) => {}
            Ok(n) => {
                info!(log, "Retention deleted old messages."; "deleted" => n, "max_age_days" => settings.max_age_days)
            }
            Err(e) => {
                warn!(log, "Retention failed; it tries again at the next interval."; "error" => e.to_string())
            }
        }
    }
}

/// Deletes every message created before `cutoff_ms` (Unix milliseconds), one batch of
/// `batch_size` at a time, yielding between batches; stops early on `shutdown`.
/// Returns how many it deleted.
pub async fn sweep(
    store: &StoreHandle,
    cutoff_ms: i64,
    batch_size: u32,
    shutdown: &CancellationToken,
) -> Result<usize, StoreError> {
    let batch = i64::from(batch_size.max(1));
    let mut total = 0;
    while !shutdown.is_cancelled() {
        let n = store
            .write(move |c| queries::delete_messages_older_than(c, cutoff_ms, batch))
            .await?;
        total += n;
        if (n as i64) < batch {
            break;
        }
        // Let the writes of live traffic that queued meanwhile go first.
        tokio::task::yield_now().await;
    }
    Ok(total)
}
