//! systemd's notify protocol for `Type=notify` (the `sd-notify` crate):
//! `READY=1` once the daemon serves, `STATUS=` lines as its state changes,
//! `WATCHDOG=1` from the monitor loop while `WatchdogSec=` is set (so a
//! daemon whose loop hangs is restarted), `RELOADING=1` around a SIGHUP
//! reload and `STOPPING=1` on the way out. A daemon that systemd did not
//! start ($NOTIFY_SOCKET unset) sends nothing.
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tracing::warn;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "could not notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The monitor's side: watchdog pings and status changes.
pub struct Watchdog {
    /// Ping this often (half of `WatchdogSec=`), if systemd asked for it.
    every: Option<Duration>,
    last: Instant,
    status: String,
}

impl Watchdog {
    pub fn from_env() -> Self {
        Self {
            every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last: Instant::now(),
            status: String::new(),
        }
    }

    /// After each monitor pass: ping if due, and say `status` if it changed.
    pub fn pass(&mut self, status: String) {
        let mut states = Vec::new();
        if let Some(every) = self.every
            && self.last.elapsed() >= every
        {
            states.push(NotifyState::Watchdog);
            self.last = Instant::now();
        }
        let changed = status != self.status;
        if changed {
            self.status = status;
            states.push(NotifyState::Status(&self.status));
        }
        if !states.is_empty() {
            send(&states);
        }
    }
}
