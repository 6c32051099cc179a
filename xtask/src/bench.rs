//! `cargo xtask bench [which] [--quick]`: builds the benchmarks (knit-bench,
//! in bench/: it needs protoc, aya and the test harness, which `setup` has
//! installed by now) and runs them. What each measures: bench/src/main.rs.
use anyhow::Result;

use crate::util;

pub fn run(which: &str, quick: bool) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.current_dir(util::root())
        .args(["run", "--quiet", "-p", "knit-bench", "--"])
        .arg(which)
        // Where setup put Envoy (a benchmark peer).
        .env("KNIT_ENVOY", crate::setup::envoy_binary());
    if quick {
        cmd.arg("--quick");
    }
    util::run(&mut cmd)
}
