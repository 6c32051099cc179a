//! Health checks from the task definition's `healthCheck`, run by knit in
//! the task's cgroup (so the check sees what the task sees and is killed
//! with it).
//!
//! As ECS (Docker) does: `CMD` execs its arguments, `CMD-SHELL` runs them
//! through `/bin/sh -c`; exit 0 passes; a check that outlives `timeout`
//! fails; failures during `startPeriod` do not count; `retries` failures in
//! a row make the task unhealthy, and a pass ends the start period early.
//! One difference: until its first pass a
//! task is checked every second (at most every `interval`), so it gets
//! traffic as soon as it is ready rather than an interval later.
use std::{
    collections::BTreeMap, ffi::CString, os::unix::ffi::OsStrExt, path::Path, time::Duration,
};

use proxy_config::HealthCheck;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How often a task that never passed is checked.
const STARTING_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No check passed yet: no traffic.
    Starting,
    Healthy,
    /// `retries` checks failed in a row: out of rotation until one passes.
    Unhealthy,
}

#[derive(Debug, Clone)]
pub struct HealthState {
    pub spec: HealthCheck,
    pub status: Status,
    failures: u32,
    started: Instant,
    next_run: Instant,
    running: bool,
}

impl HealthState {
    pub fn new(spec: HealthCheck, status: Status, now: Instant) -> Self {
        Self {
            spec,
            status,
            failures: 0,
            started: now,
            next_run: now,
            running: false,
        }
    }

    /// Should a check start now? If so it is marked running.
    pub fn start_if_due(&mut self, now: Instant) -> bool {
        if self.running || now < self.next_run {
            return false;
        }
        self.running = true;
        true
    }

    /// Record a check's result. True when the status changed.
    pub fn record(&mut self, passed: bool, now: Instant) -> bool {
        let before = self.status;
        self.running = false;
        if passed {
            self.failures = 0;
            self.status = Status::Healthy;
        } else if self.status != Status::Starting
            || now >= self.started + Duration::from_secs(u64::from(self.spec.start_period_s))
        {
            // Failures count once a check has passed (the start period is
            // then over, as Docker has it) or once the period has run out.
            self.failures += 1;
            if self.failures >= self.spec.retries.max(1) {
                self.status = Status::Unhealthy;
            }
        }
        let interval = Duration::from_secs(u64::from(self.spec.interval_s.max(1)));
        self.next_run = now
            + if self.status == Status::Starting {
                interval.min(STARTING_INTERVAL)
            } else {
                interval
            };
        self.status != before
    }
}

/// Run one check in the cgroup `cgroup` with `env`. True when it passed.
pub async fn run_check(spec: &HealthCheck, cgroup: &Path, env: &BTreeMap<String, String>) -> bool {
    let (prog, args): (String, Vec<String>) = match spec.command.split_first() {
        Some((kind, rest)) if kind == "CMD-SHELL" => {
            ("/bin/sh".into(), vec!["-c".into(), rest.join(" ")])
        }
        Some((kind, rest)) if kind == "CMD" => match rest.split_first() {
            Some((p, a)) => (p.clone(), a.to_vec()),
            None => return false,
        },
        _ => return false,
    };
    let Ok(procs) = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()) else {
        return false;
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: join_cgroup only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || crate::cgroup::join(&procs));
    }
    let timeout = Duration::from_secs(u64::from(spec.timeout_s.max(1)));
    match cmd.spawn() {
        Ok(mut child) => matches!(
            tokio::time::timeout(timeout, child.wait()).await,
            Ok(Ok(status)) if status.success()
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(retries: u32, start_period_s: u32) -> HealthCheck {
        HealthCheck {
            command: vec!["CMD-SHELL".into(), "true".into()],
            interval_s: 5,
            timeout_s: 2,
            retries,
            start_period_s,
        }
    }

    #[test]
    fn healthy_on_first_pass_unhealthy_after_retries() {
        let t0 = Instant::now();
        let mut h = HealthState::new(spec(2, 0), Status::Starting, t0);
        assert!(h.start_if_due(t0));
        assert!(!h.start_if_due(t0), "one check at a time");
        assert!(!h.record(false, t0), "one failure of two");
        assert!(!h.start_if_due(t0 + Duration::from_millis(500)));
        assert!(
            h.start_if_due(t0 + Duration::from_secs(1)),
            "starting: every second"
        );
        assert!(h.record(true, t0 + Duration::from_secs(1)));
        assert_eq!(h.status, Status::Healthy);
        assert!(
            !h.start_if_due(t0 + Duration::from_secs(5)),
            "then every interval"
        );
        assert!(h.start_if_due(t0 + Duration::from_secs(6)));
        assert!(!h.record(false, t0 + Duration::from_secs(6)));
        assert!(h.start_if_due(t0 + Duration::from_secs(11)));
        assert!(h.record(false, t0 + Duration::from_secs(11)));
        assert_eq!(h.status, Status::Unhealthy);
        assert!(h.start_if_due(t0 + Duration::from_secs(16)));
        assert!(
            h.record(true, t0 + Duration::from_secs(16)),
            "back when a check passes"
        );
    }

    #[test]
    fn a_pass_ends_the_start_period() {
        let t0 = Instant::now();
        let mut h = HealthState::new(spec(1, 300), Status::Starting, t0);
        assert!(h.start_if_due(t0));
        assert!(h.record(true, t0));
        let t = t0 + Duration::from_secs(5);
        assert!(h.start_if_due(t));
        assert!(h.record(false, t));
        assert_eq!(h.status, Status::Unhealthy);
    }

    #[test]
    fn start_period_failures_do_not_count() {
        let t0 = Instant::now();
        let mut h = HealthState::new(spec(1, 10), Status::Starting, t0);
        for s in 0..10 {
            let t = t0 + Duration::from_secs(s);
            assert!(h.start_if_due(t));
            assert!(!h.record(false, t));
            assert_eq!(h.status, Status::Starting);
        }
        let t = t0 + Duration::from_secs(10);
        assert!(h.start_if_due(t));
        assert!(h.record(false, t));
        assert_eq!(h.status, Status::Unhealthy);
    }

    #[tokio::test]
    async fn commands_run_and_time_out() {
        let env = BTreeMap::from([("X".to_string(), "1".to_string())]);
        // No cgroup to join here: joining fails, so the check fails, as it must.
        let none = Path::new("/nonexistent-cgroup");
        assert!(!run_check(&spec(1, 0), none, &env).await);
    }
}
