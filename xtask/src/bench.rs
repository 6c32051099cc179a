//! `cargo xtask bench [which] [--quick]`: benchmarks that write their tables
//! into BENCHMARKS.md at the repository root, each into its own `## ` section
//! so that one benchmark's rerun leaves the others' figures alone. `--quick`
//! (CI: does the benchmark still work?) writes target/BENCHMARKS.quick.md
//! instead, so that short runs never replace the real figures.
//!
//! - `l4`: the L4 short-circuit (connect to a VIP, rewritten in the kernel)
//!   against direct connections and HAProxy in `mode tcp`, in one run.
//!
//! Submodules: `wrk` (running and parsing wrk), `cpu` (who else uses the
//! CPUs), `stats` (medians, number formatting), `procs` (bounded child
//! processes, kill-on-drop guards), `report` (machine facts and
//! BENCHMARKS.md sections), and `l4` (with `l4/setup`, `l4/config`,
//! `l4/table`).
use anyhow::{Result, bail};

mod cpu;
mod l4;
mod procs;
mod report;
mod stats;
mod wrk;

/// The benchmarks `which` may name.
const KNOWN: &[&str] = &["l4"];

pub fn run(which: &str, quick: bool) -> Result<()> {
    match which {
        "l4" => l4::run(quick),
        other => bail!(
            "no benchmark {other:?}; known: {}\n  fix: cargo xtask bench l4 [--quick]",
            KNOWN.join(", ")
        ),
    }
}
