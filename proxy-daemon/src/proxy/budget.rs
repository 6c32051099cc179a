//! A retry budget: retries may add at most 20% to the requests of the last
//! ten seconds, plus 10 a second, so that retries cannot multiply an outage
//! (linkerd2-proxy's default budget).
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

const WINDOW: Duration = Duration::from_secs(10);
const RATIO: f64 = 0.2;
const MIN_PER_SECOND: u64 = 10;

#[derive(Debug)]
struct Buckets {
    /// (second since start, requests, retries), one per second of the window.
    slots: [(u64, u64, u64); 10],
    start: Instant,
}

#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<Buckets>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Buckets {
                slots: [(u64::MAX, 0, 0); 10],
                start: Instant::now(),
            }),
        }
    }
}

impl Buckets {
    fn slot(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let sec = now.saturating_duration_since(self.start).as_secs();
        let s = &mut self.slots[(sec % 10) as usize];
        if s.0 != sec {
            *s = (sec, 0, 0);
        }
        s
    }

    fn totals(&self, now: Instant) -> (u64, u64) {
        let sec = now.saturating_duration_since(self.start).as_secs();
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && sec.saturating_sub(s.0) < WINDOW.as_secs())
            .fold((0, 0), |(r, t), s| (r + s.1, t + s.2))
    }
}

impl RetryBudget {
    /// Count a request (first attempts only).
    pub fn request(&self, now: Instant) {
        // A poisoned lock only means another request panicked mid-count.
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.slot(now).1 += 1;
    }

    /// May a retry go now? If so, it is counted.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (requests, retries) = b.totals(now);
        let allowed = (requests as f64 * RATIO) as u64 + MIN_PER_SECOND * WINDOW.as_secs();
        if retries >= allowed {
            return false;
        }
        b.slot(now).2 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_requests() {
        let b = RetryBudget::default();
        let now = Instant::now();
        for _ in 0..1000 {
            b.request(now);
        }
        let granted = (0..1000).filter(|_| b.try_retry(now)).count();
        assert_eq!(granted, 200 + 100);
    }

    #[test]
    fn the_window_slides() {
        let b = RetryBudget::default();
        let now = Instant::now();
        let granted = (0..500).filter(|_| b.try_retry(now)).count();
        assert_eq!(granted, 100);
        let later = now + Duration::from_secs(11);
        assert!(b.try_retry(later));
    }
}
