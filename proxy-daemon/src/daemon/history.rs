//! The last 15 minutes of every client alias, for the dashboard: every
//! [`EVERY`] the read side's cumulative counters are read and the rates
//! over the interval are kept in a fixed-size ring per alias ([`POINTS`]
//! points of [`Point`], 28 bytes each: 5 KiB per alias, at most
//! [`MAX_SERIES`] aliases, so at most 5 MiB).
use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use serde::{Serialize, ser::SerializeSeq};

use crate::control::{ServiceStats, StatsReport};

/// How often a point is taken.
pub const EVERY: Duration = Duration::from_secs(5);
/// Points kept per alias: 15 minutes.
pub const POINTS: usize = 180;
/// Aliases with a history (the rest have none; a fleet that large reads
/// Prometheus).
pub const MAX_SERIES: usize = 1000;

/// One interval of one alias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When it ended (seconds since the epoch).
    pub at_s: u32,
    pub requests_per_s: f32,
    pub errors_5xx_per_s: f32,
    /// NaN: no response in the interval.
    pub p50_ms: f32,
    pub p99_ms: f32,
    pub new_connections_per_s: f32,
    pub bytes_per_s: f32,
}

/// JSON: `[at_unix_ms, req/s, 5xx/s, p50 ms|null, p99 ms|null, conn/s,
/// bytes/s]`, compact for 180 points per alias.
impl Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let opt = |v: f32| v.is_finite().then_some(v);
        let mut seq = s.serialize_seq(Some(7))?;
        seq.serialize_element(&(u64::from(self.at_s) * 1000))?;
        seq.serialize_element(&self.requests_per_s)?;
        seq.serialize_element(&self.errors_5xx_per_s)?;
        seq.serialize_element(&opt(self.p50_ms))?;
        seq.serialize_element(&opt(self.p99_ms))?;
        seq.serialize_element(&self.new_connections_per_s)?;
        seq.serialize_element(&self.bytes_per_s)?;
        seq.end()
    }
}

/// An alias: namespace, service, `dnsName:port`.
type Key = (String, String, String);

fn key(s: &ServiceStats) -> Key {
    (
        s.namespace.clone(),
        s.service.clone(),
        format!("{}:{}", s.dns_name, s.port),
    )
}

/// One alias's series, for `/api/v1/history`.
#[derive(Debug, Serialize)]
pub struct Series {
    pub namespace: String,
    pub service: String,
    pub alias: String,
    pub protocol: String,
    pub points: Vec<Point>,
}

/// `/api/v1/history`.
#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub every_s: u64,
    /// The fields of each point, in order.
    pub fields: [&'static str; 7],
    pub series: Vec<Series>,
    /// Outlier ejections and returns of the window, newest first (at most
    /// [`MAX_EVENTS`]).
    pub ejections: Vec<EjectionEvent>,
}

/// Ejection events kept (the oldest go first).
pub const MAX_EVENTS: usize = 200;

/// An endpoint ejected by outlier detection, or back in rotation.
#[derive(Debug, Clone, Serialize)]
pub struct EjectionEvent {
    pub at_unix_ms: u64,
    pub service: String,
    pub task: String,
    pub endpoint: String,
    /// `ejected` or `returned`.
    pub event: &'static str,
    /// Failures in a row that ejected it (0 for a return).
    pub failures: u64,
    /// How long it is out (0 for a return).
    pub for_ms: u64,
}

#[derive(Default)]
struct Rings {
    series: BTreeMap<Key, (String, VecDeque<Point>)>,
    prev: Option<StatsReport>,
    events: VecDeque<EjectionEvent>,
}

/// The rings, filled by [`History::sample`].
#[derive(Default)]
pub struct History(Mutex<Rings>);

/// The rates of `cur` over the interval since `prev` (same alias; `None`:
/// the alias is new since the last point, so its counters started within
/// the interval, from zero).
fn point(prev: Option<&ServiceStats>, cur: &ServiceStats, dt_s: f64, at_ms: u64) -> Point {
    let d = |f: fn(&ServiceStats) -> u64| f(cur).saturating_sub(prev.map_or(0, f)) as f64;
    let buckets: Vec<u64> = cur
        .latency_buckets
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.saturating_sub(
                prev.and_then(|p| p.latency_buckets.get(i).copied())
                    .unwrap_or(0),
            )
        })
        .collect();
    let q = |q: f64| crate::metrics::quantile_ms(&buckets, q).map_or(f32::NAN, |v| v as f32);
    Point {
        at_s: u32::try_from(at_ms / 1000).unwrap_or(u32::MAX),
        requests_per_s: (d(|s| s.requests) / dt_s) as f32,
        errors_5xx_per_s: (d(|s| s.codes[3]) / dt_s) as f32,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        new_connections_per_s: (d(|s| s.new_connections) / dt_s) as f32,
        bytes_per_s: (d(|s| s.bytes) / dt_s) as f32,
    }
}

impl History {
    /// Take a point per alias from `cur` (the first call only remembers).
    pub fn sample(&self, cur: StatsReport) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = &r.prev {
            let dt_s = (cur.at_unix_ms.saturating_sub(prev.at_unix_ms) as f64 / 1000.0).max(0.001);
            let before: BTreeMap<Key, &ServiceStats> =
                prev.services.iter().map(|s| (key(s), s)).collect();
            let points: Vec<(Key, String, Point)> = cur
                .services
                .iter()
                .map(|s| {
                    let k = key(s);
                    let p = point(before.get(&k).copied(), s, dt_s, cur.at_unix_ms);
                    (k, s.protocol.clone(), p)
                })
                .collect();
            for (k, protocol, p) in points {
                if !r.series.contains_key(&k) && r.series.len() >= MAX_SERIES {
                    continue;
                }
                let (proto, ring) = r.series.entry(k).or_default();
                *proto = protocol;
                if ring.len() == POINTS {
                    ring.pop_front();
                }
                ring.push_back(p);
            }
            // Aliases gone for the whole window leave.
            let oldest = u32::try_from(cur.at_unix_ms / 1000)
                .unwrap_or(u32::MAX)
                .saturating_sub((EVERY.as_secs() as usize * POINTS) as u32);
            r.series
                .retain(|_, (_, ring)| ring.back().is_some_and(|p| p.at_s >= oldest));
        }
        r.prev = Some(cur);
    }

    /// Keep an ejection or a return.
    pub fn ejection(&self, ev: EjectionEvent) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if r.events.len() == MAX_EVENTS {
            r.events.pop_front();
        }
        r.events.push_back(ev);
    }

    /// Every alias's points, oldest first.
    pub fn report(&self) -> HistoryReport {
        let r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let since = crate::daemon::engine::now_ms()
            .saturating_sub(EVERY.as_millis() as u64 * POINTS as u64);
        HistoryReport {
            every_s: EVERY.as_secs(),
            fields: [
                "at_unix_ms",
                "requests_per_s",
                "errors_5xx_per_s",
                "p50_ms",
                "p99_ms",
                "new_connections_per_s",
                "bytes_per_s",
            ],
            series: r
                .series
                .iter()
                .map(|((namespace, service, alias), (protocol, ring))| Series {
                    namespace: namespace.clone(),
                    service: service.clone(),
                    alias: alias.clone(),
                    protocol: protocol.clone(),
                    points: ring.iter().copied().collect(),
                })
                .collect(),
            ejections: r
                .events
                .iter()
                .rev()
                .filter(|e| e.at_unix_ms >= since)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(at_ms: u64, requests: u64, errors: u64) -> StatsReport {
        StatsReport {
            at_unix_ms: at_ms,
            latency_bounds_ms: crate::metrics::LATENCY_BOUNDS_MS.to_vec(),
            services: vec![ServiceStats {
                service: "web".into(),
                namespace: "default".into(),
                dns_name: "web".into(),
                port: 80,
                requests,
                codes: [requests - errors, 0, 0, errors],
                latency_buckets: {
                    let mut b = vec![0; crate::metrics::LATENCY_BOUNDS_MS.len() + 1];
                    b[6] = requests;
                    b
                },
                ..Default::default()
            }],
            edges: vec![],
        }
    }

    #[test]
    fn rates_per_interval_in_a_bounded_ring() {
        let h = History::default();
        h.sample(stats(1_000_000, 0, 0));
        h.sample(stats(1_005_000, 500, 50));
        let r = h.report();
        let p = r.series[0].points[0];
        assert_eq!((p.requests_per_s, p.errors_5xx_per_s), (100.0, 10.0));
        assert!((5.0..=10.0).contains(&p.p50_ms), "{p:?}");
        let json = serde_json::to_value(r.series[0].points[0]).unwrap_or_default();
        assert_eq!(json[0], 1_005_000);
        for i in 2..(POINTS as u64 + 10) {
            h.sample(stats(1_000_000 + i * 5000, 500 * i, 0));
        }
        assert_eq!(h.report().series[0].points.len(), POINTS);
        // A quiet interval has no percentile.
        let last = *h.report().series[0].points.last().unwrap_or(&p);
        h.sample(stats(
            1_000_000 + (POINTS as u64 + 10) * 5000,
            500 * (POINTS as u64 + 9),
            0,
        ));
        let quiet = *h.report().series[0].points.last().unwrap_or(&last);
        assert!(quiet.p50_ms.is_nan() && quiet.requests_per_s == 0.0);
        assert_eq!(std::mem::size_of::<Point>(), 28);
    }
}
