//! The `knit` a benchmark measures: a release build of this checkout (or
//! the binary $KNIT_BIN names), its daemon started with
//! `knit_tests::Knit::start_full`, and the version line for the report.
use std::{path::PathBuf, process::Command};

use anyhow::{Result, ensure};
use knit_tests::Knit;

use crate::{build, util};

/// Which `knit` binary, and whether it came from $KNIT_BIN.
pub struct Binary {
    pub path: PathBuf,
    pub from_env: bool,
}

/// Build the release `knit` (eBPF programs included) and return its path;
/// or, when $KNIT_BIN is set, measure that binary without building (another
/// build, or a tree that does not build).
pub fn binary() -> Result<Binary> {
    if let Some(bin) = std::env::var_os("KNIT_BIN") {
        let path = PathBuf::from(bin);
        ensure!(path.exists(), "KNIT_BIN={} does not exist", path.display());
        println!("measuring KNIT_BIN={} (not building)", path.display());
        return Ok(Binary {
            path,
            from_env: true,
        });
    }
    build::all(true)?;
    let path = util::root().join("target/release/knit");
    ensure!(path.exists(), "{} was not built", path.display());
    Ok(Binary {
        path,
        from_env: false,
    })
}

/// A daemon of the benchmark's own (cgroup, pins, state, socket and hosts
/// file under a temp dir), running `bin` for the daemon and every CLI call.
pub fn start(name: &str, extra_toml: &str, bin: &Binary) -> Result<Knit> {
    Knit::start_full(name, extra_toml, None, bin.path.clone())
}

/// The daemon's version, and where it came from: this checkout's git
/// commit, or the binary named by $KNIT_BIN.
pub fn version(k: &Knit, bin: &Binary) -> Result<String> {
    let v = k.json(&["status"])?;
    let version = v["version"].as_str().unwrap_or("?");
    Ok(if bin.from_env {
        format!("{version} (binary {})", bin.path.display())
    } else {
        format!("{version}{}", git_describe())
    })
}

/// " (git abc1234, uncommitted changes)" or "" outside a git checkout.
fn git_describe() -> String {
    let git =
        |args: &[&str]| util::output(Command::new("git").current_dir(util::root()).args(args)).ok();
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.trim().is_empty());
            let note = if dirty { ", uncommitted changes" } else { "" };
            format!(" (git {}{note})", rev.trim())
        }
        None => String::new(),
    }
}
