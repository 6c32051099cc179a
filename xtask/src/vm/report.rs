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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    // A test whose "test NAME ... " line came without its result because the
    // test's children wrote to the console (libtest captures only the test's
    // own output). Its result ends a later line, possibly glued to their
    // output; the last such line before the next test wins.
    let mut pending: Option<(String, Option<Outcome>)> = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix(MARK) {
            settle(&mut report, &mut pending);
            let rest = rest.trim();
            if rest == "pass" || rest == "fail" {
                report.verdict = Some(rest == "pass");
            } else if let Some(path) = rest.strip_prefix("run ") {
                report.binaries.push(Binary {
                    path: path.to_owned(),
                    exit: None,
                    tests: Vec::new(),
                });
            } else if let Some(exit) = rest.strip_prefix("exit ") {
                if let Some(bin) = report.binaries.last_mut() {
                    bin.exit = exit.split_whitespace().next().and_then(|c| c.parse().ok());
                }
            } else if let Some(what) = rest.strip_prefix("setup failed: ") {
                report.setup_failures.push(what.to_owned());
            } else if rest.starts_with("kernel ") {
                report.kernel = Some(rest.to_owned());
            }
            continue;
        }
        if report.binaries.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("test ") {
            settle(&mut report, &mut pending);
            // Not "test result: ...", which has no " ...".
            if let Some((name, result)) = rest.split_once(" ...") {
                pending = Some((name.to_owned(), trailing_outcome(result)));
            }
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            // libtest's failure report: authoritative whatever we read before.
            settle(&mut report, &mut pending);
            if let Some(bin) = report.binaries.last_mut() {
                match bin.tests.iter_mut().find(|(n, _)| n == name) {
                    Some(entry) => entry.1 = Outcome::Failed,
                    None => bin.tests.push((name.to_owned(), Outcome::Failed)),
                }
            }
        } else if let Some((_, seen)) = &mut pending
            && let Some(o) = trailing_outcome(line)
        {
            *seen = Some(o);
        }
    }
    settle(&mut report, &mut pending);
    report
}

/// Record the pending test: with the result seen last, or as unfinished.
fn settle(report: &mut Report, pending: &mut Option<(String, Option<Outcome>)>) {
    if let (Some((name, seen)), Some(bin)) = (pending.take(), report.binaries.last_mut()) {
        bin.tests.push((name, seen.unwrap_or(Outcome::Unfinished)));
    }
}

/// The libtest result a line ends with, if any.
fn trailing_outcome(line: &str) -> Option<Outcome> {
    let line = line.trim_end();
    if line.ends_with("ok") {
        Some(Outcome::Ok)
    } else if line.ends_with("FAILED") {
        Some(Outcome::Failed)
    } else if line.ends_with("ignored") || line.contains("ignored, ") {
        Some(Outcome::Ignored)
    } else {
        None
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
                "{}: {} passed, {} failed, {} did not finish, {} ignored (exit {exit})",
                bin.path,
                n(Outcome::Ok),
                n(Outcome::Failed),
                n(Outcome::Unfinished),
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    0.5] early noise\r
KNIT-VM: kernel 6.1.0-56-cloud-amd64, 2 cpus, 3927 MiB\r
KNIT-VM: run /t/a\r
running 4 tests\r
test fine ... ok\r
test noisy ... child output\r
no-newlineok\r
test skipped ... ignored, needs a VM\r
test broken ... FAILED\r
---- broken stdout ----\r
test result: FAILED. 2 passed; 1 failed; 1 ignored\r
KNIT-VM: exit 101 /t/a\r
KNIT-VM: run /t/b\r
test dies ... Aborted\r
KNIT-VM: exit 134 /t/b\r
KNIT-VM: run /t/c\r
test hangs ... ";

    #[test]
    fn reads_results_glued_output_crashes_and_cut_short_runs() {
        let r = parse(CONSOLE);
        let tests = |i: usize| -> Vec<(&str, Outcome)> {
            r.binaries[i]
                .tests
                .iter()
                .map(|(n, o)| (n.as_str(), *o))
                .collect()
        };
        assert_eq!(r.binaries.len(), 3);
        assert_eq!(
            tests(0),
            [
                ("fine", Outcome::Ok),
                ("noisy", Outcome::Ok),
                ("skipped", Outcome::Ignored),
                ("broken", Outcome::Failed)
            ]
        );
        assert_eq!(r.binaries[0].exit, Some(101));
        assert_eq!(tests(1), [("dies", Outcome::Unfinished)]);
        assert_eq!(tests(2), [("hangs", Outcome::Unfinished)]);
        assert_eq!(r.binaries[2].exit, None);
        assert_eq!(r.verdict, None);
        assert!(r.verdict(false, Duration::from_secs(1), None).is_err());
    }

    #[test]
    fn passes_only_with_the_marker_and_at_least_one_test() {
        let ok = "KNIT-VM: run /t/a\ntest x ... ok\nKNIT-VM: exit 0 /t/a\nKNIT-VM: pass\n";
        assert!(
            parse(ok)
                .verdict(false, Duration::from_secs(1), None)
                .is_ok()
        );
        let none = "KNIT-VM: run /t/a\nKNIT-VM: exit 0 /t/a\nKNIT-VM: pass\n";
        assert!(
            parse(none)
                .verdict(false, Duration::from_secs(1), None)
                .is_err()
        );
        let no_marker = "KNIT-VM: run /t/a\ntest x ... ok\nKNIT-VM: exit 0 /t/a\n";
        assert!(
            parse(no_marker)
                .verdict(false, Duration::from_secs(1), None)
                .is_err()
        );
    }
}
