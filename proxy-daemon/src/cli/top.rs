//! `knit top`: live rates per service from the daemon's counters, read
//! every `--interval-ms`: requests/s, share of 5xx, p50 and p99 response
//! time and new connections/s per client alias, and the service graph's
//! edges with their requests/s (HTTP, gRPC) and TCP connections/s and
//! bytes/s (counted in the kernel per connecting task). On a terminal the screen is redrawn until
//! Ctrl-C; otherwise (a pipe, a file) one frame is printed and it exits,
//! unless `--iterations` says how many.
use std::{collections::BTreeMap, io::IsTerminal, path::Path, time::Duration};

use serde::Serialize;

use super::{Failure, call, report, tables};
use crate::control::{Request, StatsReport};

/// One service's rates over an interval.
#[derive(Debug, Serialize)]
pub struct Rates {
    pub service: String,
    pub alias: String,
    pub protocol: String,
    pub healthy: usize,
    pub endpoints: usize,
    pub requests_per_s: f64,
    pub errors_5xx_pct: f64,
    pub mean_latency_ms: Option<f64>,
    /// Over the interval, from the response time buckets.
    pub p50_latency_ms: Option<f64>,
    pub p99_latency_ms: Option<f64>,
    pub new_connections_per_s: f64,
    pub active_connections: u64,
}

#[derive(Debug, Serialize)]
pub struct EdgeRate {
    pub source: String,
    pub target: String,
    pub requests_per_s: f64,
    /// TCP connections to the target's TCP aliases (the kernel's count).
    pub connections_per_s: f64,
    pub bytes_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Frame {
    pub at_unix_ms: u64,
    pub services: Vec<Rates>,
    pub edges: Vec<EdgeRate>,
}

/// The rates between two reports.
pub fn frame(prev: &StatsReport, cur: &StatsReport) -> Frame {
    let dt = (cur.at_unix_ms.saturating_sub(prev.at_unix_ms) as f64 / 1000.0).max(0.001);
    let key = |s: &crate::control::ServiceStats| (s.service.clone(), s.dns_name.clone(), s.port);
    let before: BTreeMap<_, _> = prev.services.iter().map(|s| (key(s), s)).collect();
    let mut services: Vec<Rates> = cur
        .services
        .iter()
        .map(|s| {
            let p = before.get(&key(s));
            let d = |f: fn(&crate::control::ServiceStats) -> u64| {
                f(s).saturating_sub(p.map_or(0, |p| f(p)))
            };
            let requests = d(|s| s.requests);
            let errors = d(|s| s.codes[3]);
            let count = d(|s| s.latency_count);
            let buckets: Vec<u64> = s
                .latency_buckets
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    c.saturating_sub(
                        p.and_then(|p| p.latency_buckets.get(i).copied())
                            .unwrap_or(0),
                    )
                })
                .collect();
            Rates {
                service: s.service.clone(),
                alias: format!("{}:{}", s.dns_name, s.port),
                protocol: s.protocol.clone(),
                healthy: s.healthy,
                endpoints: s.endpoints,
                requests_per_s: requests as f64 / dt,
                errors_5xx_pct: if requests == 0 {
                    0.0
                } else {
                    errors as f64 * 100.0 / requests as f64
                },
                mean_latency_ms: (count > 0)
                    .then(|| d(|s| s.latency_sum_us) as f64 / count as f64 / 1000.0),
                p50_latency_ms: crate::metrics::quantile_ms(&buckets, 0.5),
                p99_latency_ms: crate::metrics::quantile_ms(&buckets, 0.99),
                new_connections_per_s: d(|s| s.new_connections) as f64 / dt,
                active_connections: s.active_connections,
            }
        })
        .collect();
    services.sort_by(|a, b| {
        (b.requests_per_s + b.new_connections_per_s)
            .total_cmp(&(a.requests_per_s + a.new_connections_per_s))
            .then_with(|| a.service.cmp(&b.service))
    });
    let before: BTreeMap<_, _> = prev
        .edges
        .iter()
        .map(|e| ((e.source.as_str(), e.target.as_str()), e))
        .collect();
    let mut edges: Vec<EdgeRate> = cur
        .edges
        .iter()
        .map(|e| {
            let p = before.get(&(e.source.as_str(), e.target.as_str()));
            let d = |f: fn(&crate::control::EdgeStats) -> u64| {
                f(e).saturating_sub(p.map_or(0, |p| f(p))) as f64 / dt
            };
            EdgeRate {
                source: e.source.clone(),
                target: e.target.clone(),
                requests_per_s: d(|e| e.requests),
                connections_per_s: d(|e| e.connections),
                bytes_per_s: d(|e| e.bytes),
            }
        })
        .collect();
    edges.sort_by(|a, b| {
        (b.requests_per_s + b.connections_per_s)
            .total_cmp(&(a.requests_per_s + a.connections_per_s))
            .then_with(|| (&a.source, &a.target).cmp(&(&b.source, &b.target)))
    });
    Frame {
        at_unix_ms: cur.at_unix_ms,
        services,
        edges,
    }
}

/// Frames to print: `--iterations` (0: until Ctrl-C), else until Ctrl-C
/// on a terminal and one frame into a pipe or a file.
fn frames(iterations: Option<u64>, terminal: bool) -> Option<u64> {
    match iterations {
        Some(0) => None,
        Some(n) => Some(n),
        None if terminal => None,
        None => Some(1),
    }
}

pub fn top(socket: &Path, interval_ms: u64, iterations: Option<u64>, json: bool) -> i32 {
    let interval = Duration::from_millis(interval_ms.max(100));
    let terminal = std::io::stdout().is_terminal();
    let redraw = !json && terminal;
    let iterations = frames(iterations, terminal);
    let fetch = || call::<StatsReport>(socket, &Request::Stats);
    let mut prev = match fetch() {
        Ok(s) => s,
        Err(f) => return report(f),
    };
    let mut shown = 0;
    loop {
        std::thread::sleep(interval);
        let cur = match fetch() {
            Ok(s) => s,
            Err(f) => {
                return report(Failure::new(
                    f.code,
                    format!("the daemon went away: {}", f.message),
                ));
            }
        };
        let f = frame(&prev, &cur);
        if json {
            super::sayln!("{}", serde_json::to_string(&f).unwrap_or_default());
        } else {
            if redraw {
                super::say!("\x1b[2J\x1b[H");
            }
            super::say!("{}", tables::top(&f, interval));
        }
        prev = cur;
        shown += 1;
        if iterations.is_some_and(|n| shown >= n) {
            return 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_gets_one_frame_a_terminal_until_ctrl_c() {
        assert_eq!(frames(None, false), Some(1));
        assert_eq!(frames(None, true), None);
        assert_eq!(frames(Some(0), false), None);
        assert_eq!(frames(Some(3), true), Some(3));
    }
}
