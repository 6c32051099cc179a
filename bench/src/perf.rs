//! `perf stat` on a proxy while it serves a load: its CPU time, context
//! switches, CPU migrations and system calls, so that the next gap between
//! knit and a peer is visible (where the time goes: syscalls per request,
//! switches per request) and not only that there is one.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

/// The events counted, as `perf stat -e` takes them.
const EVENTS: &str = "task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter";

/// What `perf stat` counted over every thread of the processes it watched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub task_clock_ms: f64,
    pub context_switches: u64,
    pub migrations: u64,
    pub syscalls: u64,
}

impl Counts {
    /// Per request: (CPU µs, context switches, syscalls).
    pub fn per_request(&self, requests: u64) -> (f64, f64, f64) {
        let n = requests.max(1) as f64;
        (
            self.task_clock_ms * 1000.0 / n,
            self.context_switches as f64 / n,
            self.syscalls as f64 / n,
        )
    }
}

/// Checks that `perf stat` can count what the benchmark asks of it here
/// (perf installed, tracepoints readable), with the fix when not.
pub fn preflight() -> Result<()> {
    let out = Command::new("perf")
        .args(["stat", "-x", ";", "-e", EVENTS, "--", "true"])
        .output()
        .context("perf is missing\n  fix: apt-get install linux-perf (cargo xtask setup does)")?;
    let text = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && parse(&text).is_ok(),
        "perf stat cannot count {EVENTS} here:\n{text}\n  fix: run as root with tracefs \
         mounted (mount -t tracefs nodev /sys/kernel/tracing; cargo xtask setup does)"
    );
    Ok(())
}

/// A `perf stat` running on `pids` (every thread of each) for `secs`.
pub struct Stat {
    child: Child,
}

impl Stat {
    pub fn start(pids: &[u32], secs: u32, log: &Path) -> Result<Self> {
        ensure!(!pids.is_empty(), "perf stat needs a process to watch");
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("perf")
            .args(["stat", "-x", ";", "-e", EVENTS, "-p", &pids.join(",")])
            .args(["--", "sleep", &secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .context("starting perf stat")?;
        Ok(Self { child })
    }

    /// Wait for it (bounded) and read its counts from `log`.
    pub fn finish(mut self, log: &Path, timeout: Duration) -> Result<Counts> {
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let text = std::fs::read_to_string(log)
                    .with_context(|| format!("reading {}", log.display()))?;
                ensure!(status.success(), "perf stat failed ({status}):\n{text}");
                return parse(&text);
            }
            if std::time::Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("perf stat still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stat {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `perf stat -x ';'` output: `value;unit;event;...` per line.
pub fn parse(text: &str) -> Result<Counts> {
    let mut c = Counts::default();
    let mut seen = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split(';').collect();
        if f.len() < 3 {
            continue;
        }
        let value = f[0].trim();
        let num = || -> Result<f64> {
            value
                .parse::<f64>()
                .with_context(|| format!("perf stat counted {value:?} for {}", f[2]))
        };
        match f[2].trim() {
            "task-clock" => c.task_clock_ms = num()?,
            "context-switches" => c.context_switches = num()? as u64,
            "cpu-migrations" => c.migrations = num()? as u64,
            "raw_syscalls:sys_enter" => c.syscalls = num()? as u64,
            _ => continue,
        }
        seen += 1;
    }
    ensure!(
        seen == 4,
        "perf stat printed {seen} of the 4 counts:\n{text}"
    );
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_stat_csv() -> Result<()> {
        let text = "8007.71;msec;task-clock;8007713112;100.00;0.999;CPUs utilized\n\
                    1234;;context-switches;8007713112;100.00;154.098;/sec\n\
                    3;;cpu-migrations;8007713112;100.00;0.375;/sec\n\
                    456789;;raw_syscalls:sys_enter;8007713112;100.00;57.044;K/sec\n";
        let c = parse(text)?;
        assert_eq!(
            c,
            Counts {
                task_clock_ms: 8007.71,
                context_switches: 1234,
                migrations: 3,
                syscalls: 456_789
            }
        );
        let (us, cs, sc) = c.per_request(1000);
        assert!((us - 8007.71).abs() < 1e-6 && cs == 1.234 && sc == 456.789);
        assert!(parse("<not counted>;;context-switches;0;0.00;;\n").is_err());
        Ok(())
    }
}
