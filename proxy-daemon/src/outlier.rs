//! L4 outlier detection from the kernel's connect counters.
//!
//! A backend whose connects keep failing (its `consecutive_failures` counter,
//! reset by the kernel on every established connection, reaches the
//! threshold) is ejected for `base * times ejected`, capped, as Envoy does.
//! Ejection stops when the ejected share of a service's backends would pass
//! `max_ejection_percent`, except that one may always go when none is out,
//! and never the last eligible one.
use std::{collections::BTreeMap, time::Duration};

use proxy_config::OutlierConfig;
use tokio::time::Instant;

#[derive(Debug, Default, Clone)]
pub struct BackendOutlier {
    pub ejections: u32,
    pub ejected_until: Option<Instant>,
    /// The kernel's consecutive-failure count when the backend last returned.
    baseline: u64,
}

#[derive(Debug, Default)]
pub struct Outliers {
    by_backend: BTreeMap<u32, BackendOutlier>,
    returned: bool,
}

impl Outliers {
    /// Out of rotation now. A backend stays out until [`Outliers::restore`]
    /// puts it back (the monitor does, once its time is over), so that what
    /// this says always matches the maps.
    pub fn is_ejected(&self, backend_id: u32) -> bool {
        self.by_backend
            .get(&backend_id)
            .is_some_and(|b| b.ejected_until.is_some())
    }

    /// True when [`Outliers::observe`] of `backend_id` with no failures
    /// would change nothing: not ejected, and no failure count to forget.
    pub fn quiet(&self, backend_id: u32) -> bool {
        self.by_backend
            .get(&backend_id)
            .is_none_or(|b| b.ejected_until.is_none() && b.baseline == 0)
    }

    /// How long an ejected backend stays out from `now`.
    pub fn out_for(&self, backend_id: u32, now: Instant) -> Option<std::time::Duration> {
        let until = self.by_backend.get(&backend_id)?.ejected_until?;
        Some(until.saturating_duration_since(now))
    }

    pub fn ejections(&self, backend_id: u32) -> u32 {
        self.by_backend.get(&backend_id).map_or(0, |b| b.ejections)
    }

    pub fn forget(&mut self, backend_id: u32) {
        self.by_backend.remove(&backend_id);
    }

    /// Backends whose ejection time is over (still marked ejected).
    pub fn due(&self, now: Instant) -> Vec<u32> {
        self.by_backend
            .iter()
            .filter(|(_, b)| b.ejected_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Put a backend back in rotation; `consecutive` is its failure count
    /// now, from which new failures are counted.
    pub fn restore(&mut self, backend_id: u32, consecutive: u64) {
        if let Some(b) = self.by_backend.get_mut(&backend_id) {
            b.ejected_until = None;
            b.baseline = consecutive;
            self.returned = true;
        }
    }

    /// Did any backend return since the last call?
    pub fn take_returned(&mut self) -> bool {
        std::mem::take(&mut self.returned)
    }

    /// Return backends whose ejection time is over. True when any returned.
    #[cfg(test)]
    pub fn expire(&mut self, now: Instant, consecutive: impl Fn(u32) -> u64) -> bool {
        for id in self.due(now) {
            self.restore(id, consecutive(id));
        }
        self.take_returned()
    }

    /// Look at one backend of a group of `total` eligible-or-ejected backends
    /// of which `ejected` are out now. True when it gets ejected.
    pub fn observe(
        &mut self,
        cfg: &OutlierConfig,
        backend_id: u32,
        consecutive_failures: u64,
        total: usize,
        ejected: usize,
        now: Instant,
    ) -> bool {
        let b = self.by_backend.entry(backend_id).or_default();
        if b.ejected_until.is_some() {
            return false;
        }
        if consecutive_failures < b.baseline {
            // The kernel reset the count: a connect succeeded since.
            b.baseline = 0;
        }
        let failures = consecutive_failures - b.baseline;
        if failures < u64::from(cfg.consecutive_failures) {
            return false;
        }
        let eligible_after = total.saturating_sub(ejected + 1);
        let share_now = (ejected * 100).checked_div(total).unwrap_or(100);
        if eligible_after == 0 || (ejected > 0 && share_now >= cfg.max_ejection_percent as usize) {
            return false;
        }
        b.ejections += 1;
        let ms = cfg
            .base_ejection_ms
            .saturating_mul(u64::from(b.ejections))
            .min(cfg.max_ejection_ms.max(cfg.base_ejection_ms));
        b.ejected_until = Some(now + Duration::from_millis(ms));
        b.baseline = consecutive_failures;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection_ms: 1000,
            max_ejection_ms: 2500,
            max_ejection_percent: 10,
            interval_ms: 100,
        }
    }

    #[test]
    fn ejects_after_threshold_and_returns() {
        let now = Instant::now();
        let mut o = Outliers::default();
        assert!(!o.observe(&cfg(), 1, 4, 3, 0, now));
        assert!(o.observe(&cfg(), 1, 5, 3, 0, now));
        assert!(!o.expire(now + Duration::from_millis(999), |_| 5));
        assert!(o.is_ejected(1));
        assert!(o.expire(now + Duration::from_millis(1000), |_| 5));
        assert!(!o.is_ejected(1));
        // Needs 5 fresh failures to go again, and then stays out twice as long.
        assert!(!o.observe(&cfg(), 1, 9, 3, 0, now));
        assert!(o.observe(&cfg(), 1, 10, 3, 0, now));
        assert!(!o.expire(now + Duration::from_millis(1999), |_| 10));
        assert!(o.expire(now + Duration::from_millis(2000), |_| 10));
    }

    #[test]
    fn ejection_time_is_capped() {
        let now = Instant::now();
        let mut o = Outliers::default();
        let mut count = 0;
        for round in 0..5u64 {
            count += 5;
            let t = now + Duration::from_secs(10 * round);
            o.expire(t, |_| count - 5);
            assert!(o.observe(&cfg(), 1, count, 3, 0, t));
        }
        let t = now + Duration::from_secs(40);
        assert!(!o.expire(t + Duration::from_millis(2499), |_| count));
        assert!(o.expire(t + Duration::from_millis(2500), |_| count));
    }

    #[test]
    fn never_the_last_and_capped_share() {
        let now = Instant::now();
        let mut o = Outliers::default();
        assert!(!o.observe(&cfg(), 1, 50, 1, 0, now), "the last one stays");
        assert!(o.observe(&cfg(), 2, 50, 3, 0, now), "one may always go");
        assert!(!o.observe(&cfg(), 3, 50, 3, 1, now), "33% out is over 10%");
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut o = Outliers::default();
        assert!(o.observe(&cfg(), 1, 5, 3, 0, now));
        o.expire(now + Duration::from_secs(1), |_| 5);
        // The kernel reset to 0 after a success, then 5 new failures.
        assert!(!o.observe(&cfg(), 1, 0, 3, 0, now + Duration::from_secs(2)));
        assert!(o.observe(&cfg(), 1, 5, 3, 0, now + Duration::from_secs(2)));
    }
}
