//! Judge a VM run from its console: the `KNIT-VM:` marker lines written by
//! `/init` and libtest's own lines (`test NAME ... ok|FAILED|ignored`,
//! `---- NAME stdout ----` for each failure).
//!
//! The run passes only if the guest said `pass`, every test executable exited
//! 0, no test failed or was cut short, and at least one test ran: a harness
//! that cannot fail is worthless.
use std::time::Duration;

use anyhow::{Result, bail};

use super::init::MARK;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Ignored,
    /// Started but never finished: the binary died or the VM timed out.
    Unfinished,
}

pub struct Binary {
    pub path: String,
    pub exit: Option<i32>,
    pub tests: Vec<(String, Outcome)>,
}

#[derive(Default)]
pub struct Report {
    /// The guest's "kernel ..., N cpus, M MiB" line.
    pub kernel: Option<String>,
    pub binaries: Vec<Binary>,
    /// The final marker: Some(true) for `pass`, Some(false) for `fail`.
    pub verdict: Option<bool>,
    pub setup_failures: Vec<String>,
}

pub fn parse(console: &str) -> Report {
    let mut report = Report::default();
    // A test whose "test NAME ... " line came without its result (its own
    // output went in between): the result is then alone on a later line.
    let mut pending: Option<String> = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix(MARK) {
            let rest = rest.trim();
            if rest == "pass" || rest == "fail" {
                report.verdict = Some(rest == "pass");
            } else if let Some(path) = rest.strip_prefix("run ") {
                pending = None;
                report.binaries.push(Binary {
                    path: path.to_owned(),
                    exit: None,
                    tests: Vec::new(),
                });
            } else if let Some(exit) = rest.strip_prefix("exit ") {
                if let Some(bin) = report.binaries.last_mut() {
                    bin.exit = exit.split_whitespace().next().and_then(|c| c.parse().ok());
                    if let Some(name) = pending.take() {
                        bin.tests.push((name, Outcome::Unfinished));
                    }
                }
            } else if let Some(what) = rest.strip_prefix("setup failed: ") {
                report.setup_failures.push(what.to_owned());
            } else if rest.starts_with("kernel ") {
                report.kernel = Some(rest.to_owned());
            }
            continue;
        }
        let Some(bin) = report.binaries.last_mut() else {
            continue;
        };
        if let Some((name, result)) = line
            .strip_prefix("test ")
            .and_then(|r| r.split_once(" ..."))
        {
            if let Some(name) = pending.take() {
                bin.tests.push((name, Outcome::Unfinished));
            }
            match outcome(result.trim()) {
                Some(o) => bin.tests.push((name.to_owned(), o)),
                None => pending = Some(name.to_owned()),
            }
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            // libtest's failure report: authoritative whatever we read before.
            match bin.tests.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = Outcome::Failed,
                None => bin.tests.push((name.to_owned(), Outcome::Failed)),
            }
        } else if let Some(o) = pending.as_ref().and_then(|_| outcome(line.trim())) {
            if let Some(name) = pending.take() {
                bin.tests.push((name, o));
            }
        }
    }
    if let (Some(name), Some(bin)) = (pending, report.binaries.last_mut()) {
        bin.tests.push((name, Outcome::Unfinished));
    }
    report
}

fn outcome(result: &str) -> Option<Outcome> {
    match result {
        "ok" => Some(Outcome::Ok),
        "FAILED" => Some(Outcome::Failed),
        r if r.starts_with("ignored") => Some(Outcome::Ignored),
        _ => None,
    }
}

impl Report {
    fn count(&self, which: Outcome) -> usize {
        self.binaries
            .iter()
            .flat_map(|b| &b.tests)
            .filter(|(_, o)| *o == which)
            .count()
    }

    pub fn print(&self) {
        if let Some(k) = &self.kernel {
            println!("guest: {k}");
        }
        for bin in &self.binaries {
            let n = |o| bin.tests.iter().filter(|(_, x)| *x == o).count();
            let exit = bin.exit.map_or("none: cut short".into(), |c| c.to_string());
            println!(
                "{}: {} passed, {} failed, {} ignored (exit {exit})",
                bin.path,
                n(Outcome::Ok),
                n(Outcome::Failed) + n(Outcome::Unfinished),
                n(Outcome::Ignored)
            );
            for (name, o) in &bin.tests {
                let tag = match o {
                    Outcome::Ok => "ok",
                    Outcome::Failed => "FAILED",
                    Outcome::Ignored => "ignored",
                    Outcome::Unfinished => "DID NOT FINISH",
                };
                println!("    {tag:<14} {name}");
            }
        }
        println!(
            "total: {} passed, {} failed, {} did not finish, {} ignored",
            self.count(Outcome::Ok),
            self.count(Outcome::Failed),
            self.count(Outcome::Unfinished),
            self.count(Outcome::Ignored)
        );
    }

    /// Ok only for a run that proves something; otherwise every reason.
    pub fn verdict(&self, timed_out: bool, timeout: Duration, filter: Option<&str>) -> Result<()> {
        let mut why = Vec::new();
        if timed_out {
            why.push(format!(
                "the VM timed out after {} s (KNIT_VM_TIMEOUT_SECS raises the limit)",
                timeout.as_secs()
            ));
        }
        if self.verdict.is_none() && !timed_out {
            why.push(format!(
                "the guest never printed `{MARK} pass` or `{MARK} fail` (kernel panic or /init crash? see the console above)"
            ));
        }
        why.extend(
            self.setup_failures
                .iter()
                .map(|s| format!("guest setup failed: {s}")),
        );
        for bin in &self.binaries {
            match bin.exit {
                Some(0) => {}
                Some(c) => why.push(format!("{} exited with {c}", bin.path)),
                None => why.push(format!("{} did not finish", bin.path)),
            }
        }
        let failed = self.count(Outcome::Failed) + self.count(Outcome::Unfinished);
        if failed > 0 {
            why.push(format!("{failed} test(s) failed or did not finish"));
        }
        if self.count(Outcome::Ok) + failed == 0 {
            why.push(match filter {
                Some(f) => format!("no test ran: does the filter {f:?} match any?"),
                None => "no test ran".to_owned(),
            });
        }
        if self.verdict == Some(false) && why.is_empty() {
            why.push(format!("the guest printed `{MARK} fail`"));
        }
        if why.is_empty() {
            println!("VM tests passed");
            return Ok(());
        }
        bail!("VM tests failed:\n  - {}", why.join("\n  - "))
    }
}
