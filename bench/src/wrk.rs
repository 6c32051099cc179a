//! wrk: the command line the benchmarks use, and the parts of its report
//! they read (requests, Requests/sec, the latency distribution, errors).
//! `--latency` prints p50 to p99; p99.9 comes from a `done` hook in Lua
//! ([`LATENCY_SCRIPT`]), which runs once at the end, so requests keep wrk's
//! fast path (no per-request Lua).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// wrk's `-s` script: one line with p99.9 in microseconds.
pub const LATENCY_SCRIPT: &str = "-- knit bench: p99.9, which --latency does not print.
done = function(summary, latency, requests)
  io.write(string.format(\"Latency p99.9: %d\\n\", latency:percentile(99.9)))
end
";

/// Write [`LATENCY_SCRIPT`] into `dir`; its path, for [`Load::script`].
pub fn write_script(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("latency.lua");
    std::fs::write(&p, LATENCY_SCRIPT).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// One wrk load: where, how many connections, how long, keep-alive or not.
#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub connections: u32,
    pub secs: u32,
    /// Send `Connection: close`: the server closes after each response and
    /// wrk opens a new connection per request, so Requests/sec is the rate
    /// of new connections.
    pub close: bool,
    /// wrk's `-s` script ([`write_script`]: p99.9); None: no p99.9.
    pub script: Option<PathBuf>,
}

impl Load {
    /// wrk's arguments. One thread: wrk has one core of its own (see the
    /// pinning in the callers) and one event loop saturates it.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "wrk".to_string(),
            "-t1".into(),
            format!("-c{}", self.connections),
            format!("-d{}s", self.secs),
            "--latency".into(),
            // A stuck connection shows up as a timeout error, not a hang.
            "--timeout".into(),
            "2s".into(),
        ];
        if self.close {
            a.push("-H".into());
            a.push("Connection: close".into());
        }
        if let Some(script) = &self.script {
            a.push("-s".into());
            a.push(script.display().to_string());
        }
        a.push(self.url.clone());
        a
    }
}

/// What one wrk run reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Completed requests ("N requests in 10.00s").
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// From [`LATENCY_SCRIPT`]'s line (0 without it).
    pub p999_us: f64,
    /// connect, read, write, timeout ("Socket errors:" line; absent = 0).
    pub socket_errors: [u64; 4],
    /// "Non-2xx or 3xx responses:" (absent = 0).
    pub non_2xx: u64,
}

impl Report {
    /// Errors of any kind, for the "must be zero or reported" rule.
    pub fn errors(&self) -> u64 {
        self.socket_errors.iter().sum::<u64>() + self.non_2xx
    }

    /// The errors in wrk's words, or "none".
    pub fn describe_errors(&self) -> String {
        if self.errors() == 0 {
            return "none".into();
        }
        let [c, r, w, t] = self.socket_errors;
        format!(
            "socket errors connect {c}, read {r}, write {w}, timeout {t}; non-2xx {}",
            self.non_2xx
        )
    }
}

/// Parse wrk's text report (run with `--latency`).
pub fn parse(out: &str) -> Result<Report> {
    let mut r = Report::default();
    let (mut seen_rps, mut seen_requests) = (false, false);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => {
                r.rps = v.parse().with_context(|| format!("wrk line {line:?}"))?;
                seen_rps = true;
            }
            [n, "requests", "in", ..] => {
                r.requests = n.parse().with_context(|| format!("wrk line {line:?}"))?;
                seen_requests = true;
            }
            ["50%", v] => r.p50_us = duration_us(v)?,
            ["99%", v] => r.p99_us = duration_us(v)?,
            ["Latency", "p99.9:", v] => {
                r.p999_us = v.parse().with_context(|| format!("wrk line {line:?}"))?;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                r.non_2xx = n.parse().with_context(|| format!("wrk line {line:?}"))?;
            }
            _ if line.starts_with("Socket errors:") => r.socket_errors = socket_errors(line)?,
            _ => {}
        }
    }
    if !seen_rps || !seen_requests {
        bail!("no \"Requests/sec:\" or \"requests in\" line in wrk's output:\n{out}");
    }
    Ok(r)
}

/// "Socket errors: connect 0, read 3, write 0, timeout 1" -> [0, 3, 0, 1].
fn socket_errors(line: &str) -> Result<[u64; 4]> {
    let mut e = [0; 4];
    let rest = line.trim_start_matches("Socket errors:");
    for (i, part) in rest.split(',').enumerate().take(4) {
        let n = part
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("wrk line {line:?}"))?;
        e[i] = n.parse().with_context(|| format!("wrk line {line:?}"))?;
    }
    Ok(e)
}

/// wrk's durations ("612.00us", "1.15ms", "2.00s", "3.00m") in microseconds.
fn duration_us(v: &str) -> Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("wrk duration {v:?} has no unit"))?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("wrk duration {v:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("wrk duration {v:?}: unknown unit"),
    };
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEPALIVE: &str = "Running 3s test @ http://127.0.0.1:18080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   226.05us  144.86us   3.74ms   91.39%
    Req/Sec   160.34k     2.38k  163.68k    66.67%
  Latency Distribution
     50%  196.00us
     75%  207.00us
     90%  354.00us
     99%    1.45ms
  478276 requests in 3.00s, 67.96MB read
Requests/sec: 159332.87
Transfer/sec:     22.64MB
Latency p99.9: 3120
";

    #[test]
    fn parses_a_clean_report() -> Result<()> {
        let r = parse(KEEPALIVE)?;
        assert_eq!(r.requests, 478_276);
        assert!((r.rps - 159_332.87).abs() < 1e-6);
        assert!((r.p50_us - 196.0).abs() < 1e-9);
        assert!((r.p99_us - 1450.0).abs() < 1e-9);
        assert!((r.p999_us - 3120.0).abs() < 1e-9);
        assert_eq!(r.errors(), 0);
        assert_eq!(r.describe_errors(), "none");
        Ok(())
    }

    #[test]
    fn reads_error_lines() -> Result<()> {
        let out = KEEPALIVE.replace(
            "Requests/sec:",
            "  Socket errors: connect 1, read 20, write 0, timeout 3\n  Non-2xx or 3xx responses: 7\nRequests/sec:",
        );
        let r = parse(&out)?;
        assert_eq!(r.socket_errors, [1, 20, 0, 3]);
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.errors(), 31);
        Ok(())
    }

    #[test]
    fn refuses_output_without_a_rate() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused\n").is_err());
    }

    #[test]
    fn close_mode_sends_the_header() {
        let l = Load {
            url: "http://127.0.0.1:1/".into(),
            connections: 16,
            secs: 2,
            close: true,
            script: Some("/tmp/latency.lua".into()),
        };
        let a = l.args();
        assert_eq!(a[0], "wrk");
        assert!(a.windows(2).any(|w| w == ["-H", "Connection: close"]));
        assert!(a.windows(2).any(|w| w == ["-s", "/tmp/latency.lua"]));
        assert_eq!(a.last().map(String::as_str), Some("http://127.0.0.1:1/"));
    }
}
