//! `cargo xtask fuzz` and `cargo xtask faults`: the long checks.
//!
//! - `fuzz [--seconds N] [TARGET...]`: each cargo-fuzz target in `fuzz/`
//!   (default: all) for N seconds (default 600), growing its corpus in
//!   `fuzz/corpus/<target>/` (kept in the repository, replayed by the unit
//!   tests). A crash stops the run and names the input to keep under
//!   `fuzz/regressions/<target>/` once fixed.
//! - `faults [--fuzz-seconds N]`: the fault tests at full length
//!   (`KNIT_FAULTS_LONG=1`: more crash rounds, longer runs), the
//!   dashboard's 15 minutes around an endpoint restart, and every fuzz
//!   target. `cargo xtask test` runs the same fault tests, bounded.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{
    setup,
    util::{self, step, succeeds},
};

/// The fuzz targets (`fuzz/Cargo.toml` names them).
pub const TARGETS: &[&str] = &["ecs_json", "knit_toml", "http_head", "map_encoding"];

/// The tests that make up the fault suite.
const FAULT_TESTS: &[&str] = &["faults", "accel", "limits", "apply", "upgrade", "fleet"];

fn cargo_fuzz() -> Result<()> {
    let bin = setup::cargo_bin().join("cargo-fuzz");
    if succeeds(Command::new(&bin).arg("--version")) {
        return Ok(());
    }
    step("setup: installing cargo-fuzz (about 2 minutes)");
    util::run(util::cargo().args(["install", "cargo-fuzz", "--locked"]))
}

pub fn fuzz(seconds: u64, only: &[String]) -> Result<()> {
    let root = util::root();
    let dir = root.join("fuzz");
    cargo_fuzz()?;
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in only {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}; known: {}\n  fix: cargo xtask fuzz [--seconds N] [{}]",
                    TARGETS.join(", "),
                    TARGETS.join("|")
                );
            }
        }
        only.iter().map(String::as_str).collect()
    };
    step("building the fuzz targets (nightly, AddressSanitizer)");
    util::run(
        Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "build", "-O"]),
    )?;
    for (i, t) in targets.iter().enumerate() {
        step(&format!(
            "fuzzing {t} for {seconds} s ({} of {})",
            i + 1,
            targets.len()
        ));
        let corpus = dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let before = count(&corpus);
        let started = Instant::now();
        let ok = Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", "-O", t])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=4096",
                "-max_len=65536",
                "-print_final_stats=1",
            ])
            .status()?
            .success();
        if !ok {
            bail!(
                "fuzz target {t} failed after {:.0} s: the crashing input is under fuzz/artifacts/{t}/; fix it, then keep the input in fuzz/regressions/{t}/ (the unit tests replay it)",
                started.elapsed().as_secs_f64()
            );
        }
        // Keep the corpus small enough for the repository: only inputs
        // that add coverage.
        util::run(
            Command::new("cargo")
                .current_dir(&dir)
                .args(["+nightly", "fuzz", "cmin", "-O", t])
                .arg(&corpus),
        )?;
        eprintln!(
            "{t}: {:.0} s without a crash; corpus {before} -> {} inputs",
            started.elapsed().as_secs_f64(),
            count(&corpus)
        );
    }
    Ok(())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

pub fn faults(fuzz_seconds: u64) -> Result<()> {
    let root = util::root();
    crate::build::ebpf()?;
    step("the fault suite at full length (KNIT_FAULTS_LONG=1)");
    let mut cmd = util::cargo();
    cmd.current_dir(&root)
        .env("KNIT_FAULTS_LONG", "1")
        .args(["test", "-p", "knit-tests"]);
    for t in FAULT_TESTS {
        cmd.args(["--test", t]);
    }
    cmd.args(["--", "--test-threads=1"]);
    util::run(&mut cmd)?;
    step(
        "the dashboard over 15 minutes around an endpoint restart (16 minutes; its screenshot: target/tmp/dashboard-15min.png)",
    );
    util::run(util::cargo().current_dir(&root).args([
        "test",
        "-p",
        "knit-tests",
        "--test",
        "dashboard",
        "--",
        "--ignored",
        "--test-threads=1",
    ]))?;
    if fuzz_seconds > 0 {
        fuzz(fuzz_seconds, &[])?;
    }
    step("fault suite passed");
    Ok(())
}
