//! `cargo xtask bench l4`: the L4 short-circuit against direct connections
//! and HAProxy in `mode tcp`, in one run, with wrk and nginx.
//!
//! One knit daemon; nginx runs as a task of service `web` (alias `web:8080`,
//! TCP), so it is a real knit backend. wrk always runs as a task of the
//! client-only service `bench`, so every scenario pays the same cgroup hooks
//! and the only difference is the destination: nginx's own address
//! (direct), the VIP (knit), or HAProxy's listener (haproxy). Keep-alive
//! runs measure requests/s; `Connection: close` runs measure new
//! connections/s. Each run is checked: wrk must complete requests, and the
//! kernel's per-alias counter must grow by at least one connection per
//! connection wrk made through the VIP (and not at all otherwise), which
//! proves the knit runs took the VIP path and the others did not. A run
//! during which other processes used the CPUs is repeated (see `cpu`).
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use super::{
    cpu::{self, Usage},
    report::{self, Machine},
    stats, wrk,
};
use crate::{build, util};

mod config;
mod setup;
mod table;

use setup::{Bench, Sample};

/// Keep-alive connections: enough to keep nginx's one worker busy while wrk
/// waits on responses (the PERF-ANCHORS protocol's R1).
const KEEPALIVE_CONNS: u32 = 64;
/// `Connection: close` connections (R4): more only adds queueing latency.
const CLOSE_CONNS: u32 = 16;
/// The client alias port of `web`.
const ALIAS_PORT: u16 = 8080;
/// Other processes may use this much CPU (in CPUs) during a run before the
/// run counts as disturbed: idle Debian stays well under it, a build or a
/// VM test is far above.
const MAX_OTHERS: f64 = 0.05;
/// CPU for wrk, and for the servers (nginx and HAProxy share it).
const CLIENT_CPU: &str = "0";
const SERVER_CPU: &str = "1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    Knit,
    Haproxy,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Direct, Scenario::Knit, Scenario::Haproxy];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Knit => "knit VIP (L4)",
            Scenario::Haproxy => "HAProxy tcp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    Close,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::KeepAlive, Mode::Close];

    pub fn label(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "new-conn",
        }
    }

    pub fn connections(self) -> u32 {
        match self {
            Mode::KeepAlive => KEEPALIVE_CONNS,
            Mode::Close => CLOSE_CONNS,
        }
    }
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub secs: u32,
    /// A discarded run per cell before round 1 (0: none).
    pub warmup_secs: u32,
    pub rounds: usize,
}

/// One measured wrk run.
pub struct Run {
    pub scenario: Scenario,
    pub mode: Mode,
    pub round: usize,
    pub wrk: wrk::Report,
    /// New connections the kernel counted on alias `web` during the run.
    pub vip_new: u64,
    /// CPU that processes outside the benchmark used during the run.
    pub others: Usage,
}

/// Everything the table needs.
pub struct Outcome {
    pub machine: Machine,
    pub date: String,
    pub quick: bool,
    pub plan: Plan,
    pub runs: Vec<Run>,
    /// Runs disturbed by other processes, measured again and left out.
    pub runs_repeated: usize,
    /// Disturbed rounds used anyway, for want of quiet ones.
    pub disturbed_used: usize,
    pub knit_version: String,
    pub commands: Vec<String>,
    pub nginx_conf: String,
    pub haproxy_cfg: String,
    pub elapsed: Duration,
}

pub fn run(quick: bool) -> Result<()> {
    let started = Instant::now();
    let plan = if quick {
        Plan {
            secs: 2,
            warmup_secs: 0,
            rounds: 3,
        }
    } else {
        Plan {
            secs: 10,
            warmup_secs: 3,
            rounds: 3,
        }
    };
    ensure!(
        std::thread::available_parallelism().map_or(1, usize::from) >= 2,
        "the L4 benchmark pins wrk to CPU {CLIENT_CPU} and the servers to CPU {SERVER_CPU}; it needs 2 CPUs"
    );
    let knit_bin = knit_binary()?;

    util::step("l4: starting a knit daemon, nginx (service web) and HAProxy");
    let bench = Bench::start()?;
    println!(
        "nginx on 127.0.0.1:{}, VIP {}:{ALIAS_PORT}, HAProxy on 127.0.0.1:{}",
        bench.nginx_port, bench.vip, bench.haproxy_port
    );

    util::step("l4: sanity: one short run through each path, both modes");
    for mode in Mode::ALL {
        for s in Scenario::ALL {
            let r = bench.measure(s, mode, 1, 4)?.wrk;
            ensure!(
                r.errors() == 0,
                "sanity run {} {} had errors: {}",
                s.label(),
                mode.label(),
                r.describe_errors()
            );
            println!(
                "  ok  {:<10} {:<14} {} requests",
                mode.label(),
                s.label(),
                r.requests
            );
        }
    }

    util::step("l4: waiting for other processes to leave the CPUs alone");
    settle(if quick { 30 } else { 120 })?;

    if plan.warmup_secs > 0 {
        util::step(&format!(
            "l4: warm-up, {} s per cell (discarded)",
            plan.warmup_secs
        ));
        for mode in Mode::ALL {
            for s in Scenario::ALL {
                let m = bench.measure(s, mode, plan.warmup_secs, mode.connections())?;
                progress("warm-up", s, mode, &m.wrk, &m.others);
            }
        }
    }

    util::step(&format!(
        "l4: {} rounds of {} s per cell, scenarios interleaved",
        plan.rounds, plan.secs
    ));
    let rounds = measure_rounds(&bench, plan, if quick { 15 } else { 60 })?;

    let outcome = Outcome {
        machine: Machine::probe(),
        date: report::now_utc(),
        quick,
        plan,
        runs: rounds.runs,
        runs_repeated: rounds.repeated,
        disturbed_used: rounds.disturbed_used,
        knit_version: bench.knit_version(knit_bin.as_deref())?,
        commands: bench.commands(plan.secs),
        nginx_conf: bench.nginx_conf.replace(&bench.dir_text(), "$DIR"),
        haproxy_cfg: bench.haproxy_cfg.clone(),
        elapsed: started.elapsed(),
    };
    drop(bench);
    let section = table::render(&outcome)?;
    println!("\n{section}");
    let path = report::output_path(quick);
    report::write_section(&path, &outcome.machine, &outcome.date, &section)?;
    println!("wrote the ## L4 section of {}", path.display());
    Ok(())
}

/// The release `knit` to measure: built here, or the one $KNIT_BIN names
/// (to measure another build, or when this tree does not build). The path
/// when it came from $KNIT_BIN.
fn knit_binary() -> Result<Option<PathBuf>> {
    if let Some(bin) = std::env::var_os("KNIT_BIN") {
        let bin = PathBuf::from(bin);
        ensure!(bin.exists(), "KNIT_BIN={} does not exist", bin.display());
        println!("measuring KNIT_BIN={} (not building)", bin.display());
        return Ok(Some(bin));
    }
    build::all(true)?;
    let bin = util::root().join("target/release/knit");
    ensure!(bin.exists(), "{} was not built", bin.display());
    // SAFETY: nothing but this thread runs yet (setup and the build only ran
    // child processes), so no one reads the environment concurrently. The
    // knit-tests harness reads KNIT_BIN each time it starts `knit`; without
    // it, it would look next to this (debug) xtask binary.
    unsafe { std::env::set_var("KNIT_BIN", &bin) };
    Ok(None)
}

/// Wait up to `secs` for other processes to go quiet; measure anyway after.
fn settle(secs: u64) -> Result<()> {
    let limit = Duration::from_secs(secs);
    let u = cpu::wait_quiet(MAX_OTHERS, limit)?;
    if u.cpus > MAX_OTHERS {
        println!(
            "  WARNING: after {limit:?} other processes still use {}; measuring anyway",
            u.describe()
        );
    } else {
        println!("  quiet: other processes use {}", u.describe());
    }
    Ok(())
}

struct Rounds {
    runs: Vec<Run>,
    /// Disturbed runs measured again and left out.
    repeated: usize,
    /// Disturbed runs kept, for want of a quiet one before the deadline.
    disturbed_used: usize,
}

/// `plan.rounds` rounds, each every mode × scenario in the same order. A
/// run during which other processes took CPU did not get the machine the
/// others got, so it is measured again once the machine is quiet, until the
/// measuring phase has taken twice its planned time (plus two minutes);
/// after that a disturbed run is kept and the table says so.
fn measure_rounds(bench: &Bench, plan: Plan, settle_secs: u64) -> Result<Rounds> {
    let planned =
        u64::from(plan.secs) * (plan.rounds * Mode::ALL.len() * Scenario::ALL.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(2 * planned + 120);
    let mut out = Rounds {
        runs: Vec::new(),
        repeated: 0,
        disturbed_used: 0,
    };
    for round in 1..=plan.rounds {
        for mode in Mode::ALL {
            for s in Scenario::ALL {
                let label = format!("round {round}/{}", plan.rounds);
                let mut m = bench.measure(s, mode, plan.secs, mode.connections())?;
                progress(&label, s, mode, &m.wrk, &m.others);
                while m.others.cpus > MAX_OTHERS {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        println!("  disturbed, but out of time for repeats: kept and reported");
                        out.disturbed_used += 1;
                        break;
                    }
                    println!(
                        "  disturbed: other processes used {}; measuring it again",
                        m.others.describe()
                    );
                    settle(settle_secs.min(left.as_secs().max(1)))?;
                    m = bench.measure(s, mode, plan.secs, mode.connections())?;
                    progress(&label, s, mode, &m.wrk, &m.others);
                    out.repeated += 1;
                }
                let Sample {
                    wrk,
                    vip_new,
                    others,
                } = m;
                out.runs.push(Run {
                    scenario: s,
                    mode,
                    round,
                    wrk,
                    vip_new,
                    others,
                });
            }
        }
    }
    Ok(out)
}

fn progress(what: &str, s: Scenario, mode: Mode, r: &wrk::Report, others: &Usage) {
    println!(
        "  [{what}] {:<10} {:<14} {:>9} req/s  p50 {:>9}  others {:>4.0}%  errors: {}",
        mode.label(),
        s.label(),
        stats::rate(r.rps),
        stats::micros(r.p50_us),
        others.cpus * 100.0,
        r.describe_errors()
    );
}
