//! `knit-bench [which] [--quick]`, run by `cargo xtask bench` after
//! `cargo xtask setup` (this crate needs protoc, aya and the test harness,
//! so it is not part of xtask itself): benchmarks that write their tables
//! into BENCHMARKS.md at the repository root, each into its own `## ` section
//! so that one benchmark's rerun leaves the others' figures alone. With no
//! `which` (or `all`) every benchmark runs, one after the other, in the
//! order of [`ALL`]. `--quick` (CI: do the benchmarks still work, and are
//! their figures sane?) runs each briefly and writes
//! target/BENCHMARKS.quick.md instead, so that short runs never replace
//! the real figures.
//!
//! - `l4`: the L4 short-circuit (connect to a VIP, rewritten in the kernel),
//!   with same-host acceleration (sk_msg) on and off, against direct
//!   connections and HAProxy in `mode tcp`, in one run.
//! - `l7`: the daemon's L7 proxy (reached through an L7 alias's VIP), sk_msg
//!   on and off, against direct requests, HAProxy in `mode http`, nginx
//!   as a proxy, one Envoy and two (ECS Service Connect's client and server
//!   sidecars), over HTTP/1.1 (wrk) and h2c (h2load), in one run:
//!   requests/s, p50/p99/p99.9, CPU per request.
//! - `accel`: what sk_msg does to one same-host L7 request: one connection,
//!   one request at a time, sk_msg on against off (goal: p50 20% lower).
//! - `xfer`: 1 GiB through the same-host L4 path (a task to a local task's
//!   VIP), sk_msg on and off, against a direct connection: GiB/s.
//! - `memory`: the daemon's memory with 10, 100 and 1,000 services and
//!   their tasks, against the memory of one proxy per task (HAProxy and
//!   nginx sidecars, started for real and extrapolated).
//! - `admin`: the daemon's CPU with the dashboard open in Chromium and
//!   `/metrics` scraped every second, against a quiet window.
//! - `propagation`: a fleet of hosts sharing etcd: how fast a task's
//!   health reaches another host's kernel map, and the cost of 1,000
//!   services with 10,000 endpoints.
//! - `fleet`: 100 hosts (3 real, 97 simulated against the same etcd) and
//!   a 3-member etcd cluster that loses a member: a change's time to every
//!   real host's kernel map under a steady change rate, etcd's load.
//!
//! Every benchmark also records its headline (goals, verdicts, bars) in
//! docs/bench.json, from which `summary` writes the `## Summary` section of
//! BENCHMARKS.md and `chart` draws docs/bench.svg; `cargo xtask bench
//! chart` redraws both without measuring.
//!
//! Submodules: `knit` (the release binary, its daemon, switching sk_msg),
//! `peers` (nginx, HAProxy and Envoy as l4 and l7 run them), `wrk` and `h2load`
//! (running and parsing the load generators), `cpu` (which CPU is the
//! client's and the servers'; who else uses the CPUs; a process's or a
//! cgroup's CPU time), `rounds` (interleaved rounds, repeating disturbed
//! runs), `stats` (medians, percentiles, number formatting), `procs`
//! (bounded child processes, kill-on-drop guards), `markdown` (the tables),
//! `report` (machine facts and BENCHMARKS.md sections), `summary` and
//! `chart`, and one module per benchmark.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use xtask::{build, util};

mod accel;
mod admin;
mod chart;
mod cpu;
mod fleet;
mod h2load;
mod knit;
mod l4;
mod l7;
mod markdown;
mod memory;
mod peers;
mod perf;
mod procs;
mod propagation;
mod report;
mod rounds;
mod stats;
mod summary;
mod tls;
mod wrk;
mod xfer;

/// Every benchmark, in the order `cargo xtask bench` runs them, and what
/// it measures (for the summary, the chart and errors).
pub const ALL: &[(&str, &str)] = &[
    ("l4", "L4 short-circuit vs direct and HAProxy tcp"),
    ("l7", "L7 proxy vs direct, HAProxy, nginx and Envoy"),
    ("accel", "sk_msg and one same-host L7 request"),
    ("xfer", "1 GiB through the same-host L4 path"),
    ("memory", "daemon memory vs one proxy per task"),
    ("admin", "what watching the daemon costs it"),
    ("propagation", "a change to another host's kernel (etcd)"),
    ("fleet", "100 hosts, an etcd cluster losing a member"),
    ("tls", "mutual TLS between hosts vs plaintext"),
];

/// knit's benchmarks (started by `cargo xtask bench`, which installs the
/// peers first).
#[derive(Parser)]
#[command(
    name = "knit-bench",
    about = "knit's benchmarks; run them with `cargo xtask bench`"
)]
struct Cli {
    /// all (the default), or one of: l4, l7, accel, xfer, memory, admin,
    /// propagation, fleet, tls; chart redraws the chart and summary only.
    #[arg(default_value = "all")]
    which: String,
    /// Few and short runs that only prove the benchmarks work (for CI).
    #[arg(long)]
    quick: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    run(&cli.which, cli.quick)
}

pub fn run(which: &str, quick: bool) -> Result<()> {
    match which {
        "all" | "" => all(quick),
        "chart" => summary::redraw(quick),
        one => one_benchmark(one, quick),
    }
}

fn one_benchmark(which: &str, quick: bool) -> Result<()> {
    match which {
        "l4" => l4::run(quick),
        "l7" => l7::run(quick),
        "accel" => accel::run(quick),
        "xfer" => xfer::run(quick),
        "memory" => memory::run(quick),
        "admin" => admin::run(quick),
        "propagation" => propagation::run(quick),
        "fleet" => fleet::run(quick),
        "tls" => tls::run(quick),
        other => bail!(
            "no benchmark {other:?}; known: {}, all (the default), chart (redraw the chart and \
             summary)\n  fix: cargo xtask bench [{}|all|chart] [--quick]",
            names().join(", "),
            names().join("|"),
        ),
    }
}

fn names() -> Vec<&'static str> {
    ALL.iter().map(|(k, _)| *k).collect()
}

/// Every benchmark in turn. One that fails does not stop the others (a
/// full run is long); the run fails at the end if any did.
fn all(quick: bool) -> Result<()> {
    let started = Instant::now();
    // Build once, before the first benchmark's clock starts.
    knit::binary()?;
    let mut outcomes: Vec<(&str, Duration, Result<()>)> = Vec::new();
    for (key, what) in ALL {
        util::step(&format!("bench {key}: {what}"));
        let t0 = Instant::now();
        let r = one_benchmark(key, quick);
        if let Err(e) = &r {
            eprintln!("bench {key} failed: {e:#}");
        }
        outcomes.push((key, t0.elapsed(), r));
    }
    println!(
        "\n{} benchmarks in {} s{}:",
        outcomes.len(),
        started.elapsed().as_secs(),
        if quick { " (--quick)" } else { "" }
    );
    for (key, took, r) in &outcomes {
        println!(
            "  {key:<12} {:>4} s  {}",
            took.as_secs(),
            match r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILED: {e:#}"),
            }
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|(_, _, r)| r.is_err())
        .map(|(k, _, _)| *k)
        .collect();
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    println!(
        "wrote {} and {}",
        report::output_path(quick).display(),
        if quick {
            "target/bench.quick.svg"
        } else {
            "docs/bench.svg"
        }
    );
    Ok(())
}
