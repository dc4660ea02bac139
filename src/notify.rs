//! systemd's notify protocol: `READY=1` once botd serves, `STATUS=` with the bot counts,
//! `WATCHDOG=1` from a ping that goes through the Registry, `STOPPING=1` on shutdown.
//!
//! The keep-alive ping is a message through the Registry's mailbox, answered on its
//! thread: when the actor system hangs, the ping gets no answer, no `WATCHDOG=1` goes
//! out, and systemd restarts botd after `WatchdogSec`. Without `NOTIFY_SOCKET` (a
//! terminal, the tests that run the daemon in-process) nothing is sent and no task runs.

use std::collections::BTreeMap;
use std::time::Duration;

use botd_actors::registry::RegistryHandle;
use sd_notify::NotifyState;
use slog::{debug, warn, Logger};
use tokio_util::sync::CancellationToken;

/// How often `STATUS=` is refreshed when systemd asked for no watchdog.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Talks to systemd, if systemd is listening.
#[derive(Clone)]
pub struct Notifier {
    /// Whether `NOTIFY_SOCKET` was set when botd started.
    enabled: bool,
    /// `WATCHDOG_USEC`, when set for this process.
    watchdog: Option<Duration>,
    log: Logger,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (with `WATCHDOG_PID`, when set, naming
    /// this process).
    pub fn from_env(log: Logger) -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        Notifier {
            enabled,
            watchdog: watchdog.filter(|_| enabled),
            log,
        }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The keep-alive period: half the watchdog interval, as sd_watchdog_enabled(3)
    /// advises, or [`STATUS_INTERVAL`] without a watchdog.
    pub fn period(&self) -> Duration {
        self.watchdog
            .map_or(STATUS_INTERVAL, |w| (w / 2).max(Duration::from_millis(1)))
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            warn!(self.log, "systemd could not be notified."; "error" => e.to_string());
        }
    }

    /// `READY=1` with the first status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("Stopping.")]);
    }

    /// Pings the Registry every [`Notifier::period`] until `shutdown`; each answered ping
    /// sends `WATCHDOG=1` (when systemd asked for it) and the current `STATUS=`.
    pub async fn keep_alive(self, registry: RegistryHandle, shutdown: CancellationToken) {
        if !self.enabled {
            return;
        }
        let period = self.period();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = String::new();
        let mut hung = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let answered = tokio::time::timeout(period, registry.ping())
                .await
                .unwrap_or(false);
            if !answered {
                if !hung {
                    warn!(self.log, "The Registry did not answer the watchdog ping; no keep-alive is sent."; "duration_ms" => period.as_millis() as u64);
                }
                hung = true;
                continue;
            }
            if hung {
                warn!(self.log, "The Registry answers the watchdog ping again.");
                hung = false;
            }
            let status = match tokio::time::timeout(period, registry.counts()).await {
                Ok(Ok(counts)) => status_line(&counts),
                _ => last_status.clone(),
            };
            let mut states = Vec::with_capacity(2);
            if self.watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
            if status != last_status {
                states.push(NotifyState::Status(&status));
            }
            if !states.is_empty() {
                self.send(&states);
            }
            if status != last_status {
                debug!(self.log, "The systemd status changed."; "status" => &status);
                last_status = status;
            }
        }
    }
}

/// `3 bots: 2 running, 1 failed` (states with no bots left out).
pub fn status_line(counts: &BTreeMap<&'static str, usize>) -> String {
    let total: usize = counts.values().sum();
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let noun = if total == 1 { "bot" } else { "bots" };
    if parts.is_empty() {
        format!("{total} {noun}")
    } else {
        format!("{total} {noun}: {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::status_line;
    use std::collections::BTreeMap;

    #[test]
    fn the_status_line_counts_bots_by_state_and_leaves_out_empty_states() {
        let mut counts = BTreeMap::new();
        assert_eq!(status_line(&counts), "0 bots");
        counts.insert("running", 2);
        counts.insert("failed", 1);
        counts.insert("stopped", 0);
        assert_eq!(status_line(&counts), "3 bots: 1 failed, 2 running");
        let one = BTreeMap::from([("running", 1)]);
        assert_eq!(status_line(&one), "1 bot: 1 running");
    }
}
