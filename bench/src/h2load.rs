//! h2load (Debian's `nghttp2-client`): HTTP/2 over cleartext with prior
//! knowledge (h2c), which wrk cannot speak. Its summary gives the rate and
//! the outcome of every request but no percentiles, so each run also writes
//! `--log-file` (one line per request: start, status, microseconds) and p50,
//! p99 and p99.9 come from that.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::stats::percentile;

/// One h2load load.
#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub connections: u32,
    /// Concurrent streams per connection (`-m`).
    pub streams: u32,
    pub secs: u32,
    /// Where h2load logs each request.
    pub log: PathBuf,
}

impl Load {
    /// h2load's arguments: one thread (its own pinned core, like wrk).
    pub fn args(&self) -> Vec<String> {
        vec![
            "h2load".to_string(),
            "-t1".into(),
            format!("-c{}", self.connections),
            format!("-m{}", self.streams),
            "-D".into(),
            self.secs.to_string(),
            // A stuck connection ends as an error, not a hang.
            "-N".into(),
            "2s".into(),
            format!("--log-file={}", self.log.display()),
            self.url.clone(),
        ]
    }
}

/// What one h2load run reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Requests that succeeded ("N succeeded").
    pub succeeded: u64,
    pub rps: f64,
    /// "failed", "errored", "timeout" of the "requests:" line.
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    /// 3xx + 4xx + 5xx of the "status codes:" line.
    pub non_2xx: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Report {
    pub fn errors(&self) -> u64 {
        self.failed + self.errored + self.timeout + self.non_2xx
    }

    pub fn describe_errors(&self) -> String {
        if self.errors() == 0 {
            return "none".into();
        }
        format!(
            "failed {}, errored {}, timeout {}; non-2xx {}",
            self.failed, self.errored, self.timeout, self.non_2xx
        )
    }
}

/// Parse h2load's summary, and the per-request log for the percentiles.
pub fn parse(out: &str, log: &Path) -> Result<Report> {
    let mut r = parse_summary(out)?;
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let lat = latencies(&text)?;
    r.p50_us = percentile(&lat, 0.50).unwrap_or(0.0);
    r.p99_us = percentile(&lat, 0.99).unwrap_or(0.0);
    r.p999_us = percentile(&lat, 0.999).unwrap_or(0.0);
    Ok(r)
}

fn parse_summary(out: &str) -> Result<Report> {
    let mut r = Report::default();
    let (mut seen_rate, mut seen_requests) = (false, false);
    let num = |s: &str, line: &str| -> Result<u64> {
        s.trim_end_matches(',')
            .parse()
            .with_context(|| format!("h2load line {line:?}"))
    };
    for line in out.lines().map(str::trim) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            // "finished in 3.00s, 44987.67 req/s, 2.92MB/s"
            ["finished", "in", _, rate, "req/s,", ..] => {
                r.rps = rate
                    .parse()
                    .with_context(|| format!("h2load line {line:?}"))?;
                seen_rate = true;
            }
            // "requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 0 errored, 0 timeout"
            ["requests:", rest @ ..] => {
                for pair in rest.chunks(2) {
                    if let [n, what] = pair {
                        let n = num(n, line)?;
                        match what.trim_end_matches(',') {
                            "succeeded" => r.succeeded = n,
                            "failed" => r.failed = n,
                            "errored" => r.errored = n,
                            "timeout" => r.timeout = n,
                            _ => {}
                        }
                    }
                }
                seen_requests = true;
            }
            // "status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx"
            ["status", "codes:", rest @ ..] => {
                for pair in rest.chunks(2) {
                    if let [n, what] = pair
                        && what.trim_end_matches(',') != "2xx"
                    {
                        r.non_2xx += num(n, line)?;
                    }
                }
            }
            _ => {}
        }
    }
    if !seen_rate || !seen_requests {
        bail!("no \"finished in\" or \"requests:\" line in h2load's output:\n{out}");
    }
    Ok(r)
}

/// The third column of h2load's log: each request's time in microseconds.
fn latencies(log: &str) -> Result<Vec<f64>> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split('\t')
                .nth(2)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .map(f64::from)
                .with_context(|| format!("h2load log line {l:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "starting benchmark...
spawning thread #0: 8 total client(s). 3 total requests
Application protocol: h2c
finished in 3.00s, 44987.67 req/s, 2.92MB/s
requests: 134963 total, 135027 started, 134963 done, 134960 succeeded, 2 failed, 1 errored, 0 timeout
status codes: 134960 2xx, 0 3xx, 2 4xx, 1 5xx
traffic: 8.75MB (9177876) total, 6.18MB (6478224) headers (space savings 51.02%), 263.60KB (269926) data
                     min         max         mean         sd        +/- sd
time for request:       17us     16.76ms      1.41ms      1.84ms    85.42%
";

    #[test]
    fn parses_the_summary() -> Result<()> {
        let r = parse_summary(OUT)?;
        assert!((r.rps - 44_987.67).abs() < 1e-6);
        assert_eq!(r.succeeded, 134_960);
        assert_eq!((r.failed, r.errored, r.timeout, r.non_2xx), (2, 1, 0, 3));
        assert_eq!(r.errors(), 6);
        Ok(())
    }

    #[test]
    fn refuses_output_without_a_rate() {
        assert!(parse_summary("connect: Connection refused\n").is_err());
    }

    #[test]
    fn percentiles_from_the_log() -> Result<()> {
        let log: String = (1..=100)
            .rev()
            .map(|i| format!("1795483310738372\t200\t{i}\n"))
            .collect();
        let v = latencies(&log)?;
        assert_eq!(v.len(), 100);
        assert_eq!(percentile(&v, 0.50), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 0.999), Some(100.0));
        assert!(latencies("1795483310738372\t200\n").is_err());
        Ok(())
    }

    #[test]
    fn args_name_the_log() {
        let l = Load {
            url: "http://127.0.0.1:1/".into(),
            connections: 8,
            streams: 8,
            secs: 3,
            log: "/tmp/x.log".into(),
        };
        let a = l.args();
        assert!(a.contains(&"-m8".to_string()));
        assert!(a.contains(&"--log-file=/tmp/x.log".to_string()));
        assert_eq!(a.last().map(String::as_str), Some("http://127.0.0.1:1/"));
    }
}
