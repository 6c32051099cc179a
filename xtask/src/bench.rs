//! `cargo xtask bench [which] [--quick]`: benchmarks that write their tables
//! into BENCHMARKS.md at the repository root, each into its own `## ` section
//! so that one benchmark's rerun leaves the others' figures alone. `--quick`
//! (CI: does the benchmark still work?) writes target/BENCHMARKS.quick.md
//! instead, so that short runs never replace the real figures.
//!
//! - `l4`: the L4 short-circuit (connect to a VIP, rewritten in the kernel)
//!   against direct connections and HAProxy in `mode tcp`, in one run.
//! - `l7`: the daemon's L7 proxy (reached through an L7 alias's VIP) against
//!   direct requests, HAProxy in `mode http` and nginx as a proxy, over
//!   HTTP/1.1 (wrk) and h2c (h2load), in one run.
//! - `propagation`: a fleet of hosts sharing etcd: how fast a task's
//!   health reaches another host's kernel map, and the cost of 1,000
//!   services with 10,000 endpoints.
//! - `admin`: the daemon's CPU with the dashboard open in Chromium and
//!   `/metrics` scraped every second, against a quiet window.
//!
//! Submodules: `knit` (the release binary and its daemon), `wrk` and
//! `h2load` (running and parsing the load generators), `cpu` (who else uses
//! the CPUs; a process's CPU time), `rounds` (interleaved rounds, repeating
//! disturbed runs), `stats` (medians, number formatting), `procs` (bounded
//! child processes, kill-on-drop guards), `report` (machine facts and
//! BENCHMARKS.md sections), and one module per benchmark (`l4`, `l7`, each
//! with `setup`, `config` and `table`).
use anyhow::{Result, bail};

mod admin;
mod cpu;
mod h2load;
mod knit;
mod l4;
mod l7;
mod procs;
mod propagation;
mod report;
mod rounds;
mod stats;
mod wrk;

/// The benchmarks `which` may name.
const KNOWN: &[&str] = &["l4", "l7", "propagation", "admin"];

pub fn run(which: &str, quick: bool) -> Result<()> {
    match which {
        "l4" => l4::run(quick),
        "l7" => l7::run(quick),
        "propagation" => propagation::run(quick),
        "admin" => admin::run(quick),
        other => bail!(
            "no benchmark {other:?}; known: {}\n  fix: cargo xtask bench l4|l7|propagation|admin [--quick]",
            KNOWN.join(", ")
        ),
    }
}
