//! `cargo xtask bench l4`: the L4 short-circuit, with same-host
//! acceleration (sk_msg) on and off, against direct connections and HAProxy
//! in `mode tcp`, in one run, with wrk and nginx.
//!
//! One knit daemon; nginx runs as a task of service `web` (alias `web:8080`,
//! TCP), so it is a real knit backend. wrk always runs as a task of the
//! client-only service `bench`, so every scenario pays the same cgroup hooks
//! and the only difference is the destination: nginx's own address
//! (direct), the VIP (knit), or HAProxy's listener (haproxy). Between the
//! two knit scenarios the daemon's `[datapath] accelerate` is switched by
//! SIGHUP (it applies to new connections, and every wrk run opens its own).
//! Keep-alive runs measure requests/s; `Connection: close` runs measure new
//! connections/s; both give p50/p99/p99.9 and the servers' CPU per request
//! (daemon, nginx and HAProxy from /proc and nginx's cgroup). Each run is
//! checked: wrk must complete requests, the kernel's per-alias counter must
//! grow by at least one connection per connection wrk made through the VIP
//! (and not at all otherwise), which proves the knit runs took the VIP path
//! and the others did not, and sk_msg must have carried bytes in the
//! sk_msg-on runs and none in the others. A run during which other
//! processes used the CPUs is repeated (see `cpu`).
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use super::{
    cpu::{CLIENT_CPU, SERVER_CPU, Usage},
    knit,
    report::{self, Machine},
    rounds::{self, Plan},
    stats, summary, wrk,
};
use crate::util;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    /// Through the VIP, sk_msg on (as shipped).
    Knit,
    /// Through the VIP, `[datapath] accelerate = false`.
    KnitPlain,
    Haproxy,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Direct,
        Scenario::Knit,
        Scenario::KnitPlain,
        Scenario::Haproxy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Knit => "knit VIP (L4, sk_msg on)",
            Scenario::KnitPlain => "knit VIP (L4, sk_msg off)",
            Scenario::Haproxy => "HAProxy tcp",
        }
    }

    /// Through the VIP (either knit scenario).
    pub fn via_vip(self) -> bool {
        matches!(self, Scenario::Knit | Scenario::KnitPlain)
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

/// One measured wrk run.
pub struct Run {
    pub scenario: Scenario,
    pub mode: Mode,
    pub round: usize,
    pub wrk: wrk::Report,
    /// New connections the kernel counted on alias `web` during the run.
    pub vip_new: u64,
    /// Bytes sk_msg handed socket to socket during the run.
    pub redirected: u64,
    /// CPU seconds of the servers: the daemon, nginx (its service's
    /// cgroup) and HAProxy.
    pub server_cpu_secs: f64,
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
            secs: 1,
            warmup_secs: 0,
            rounds: 2,
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
    let bin = knit::binary()?;

    util::step("l4: starting a knit daemon, nginx (service web) and HAProxy");
    let mut bench = Bench::start(&bin)?;
    println!(
        "nginx on 127.0.0.1:{}, VIP {}:{ALIAS_PORT}, HAProxy on 127.0.0.1:{}",
        bench.nginx_port, bench.vip, bench.haproxy_port
    );

    // Quick runs check every run as they go (and `sane` at the end): the
    // sanity runs only matter before a long measurement.
    if !quick {
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
                    "  ok  {:<10} {:<26} {} requests",
                    mode.label(),
                    s.label(),
                    r.requests
                );
            }
        }
    }

    util::step("l4: waiting for other processes to leave the CPUs alone");
    rounds::settle(if quick { 3 } else { 120 })?;

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
    let rounds = measure_rounds(&bench, plan, quick)?;

    let outcome = Outcome {
        machine: Machine::probe(),
        date: report::now_utc(),
        quick,
        plan,
        runs: rounds.runs,
        runs_repeated: rounds.repeated,
        disturbed_used: rounds.disturbed_used,
        knit_version: knit::version(&bench.k, &bin)?,
        commands: bench.commands(plan.secs),
        nginx_conf: bench.nginx_conf.replace(&bench.dir_text(), "$DIR"),
        haproxy_cfg: bench.haproxy_cfg.clone(),
        elapsed: started.elapsed(),
    };
    // Measured: the daemon's log is no longer of interest.
    bench.k.show_log_on_drop(false);
    drop(bench);
    summary::publish(
        quick,
        "l4",
        &outcome.machine,
        &outcome.date,
        &table::render(&outcome)?,
        table::entry(&outcome)?,
        || table::headline(&outcome),
    )?;
    table::sane(&outcome)
}

/// `plan.rounds` rounds, each every mode × scenario in the same order;
/// disturbed runs are measured again (see `rounds::measure`).
fn measure_rounds(bench: &Bench, plan: Plan, quick: bool) -> Result<Rounds> {
    let cells: Vec<(Mode, Scenario)> = Mode::ALL
        .into_iter()
        .flat_map(|m| Scenario::ALL.map(|s| (m, s)))
        .collect();
    // Repeats may take the measuring to twice its plan plus two minutes;
    // quick runs keep disturbed runs (they only prove the benchmark works).
    let planned = u64::from(plan.secs) * (plan.rounds * cells.len()) as u64;
    let (budget, settle_secs) = if quick {
        (0, 1)
    } else {
        (2 * planned + 120, 60)
    };
    let r = rounds::measure(
        &cells,
        plan.rounds,
        budget,
        settle_secs,
        |(mode, s)| bench.measure(s, mode, plan.secs, mode.connections()),
        |label, (mode, s), m: &Sample| progress(label, s, mode, &m.wrk, &m.others),
    )?;
    Ok(Rounds {
        runs: r
            .runs
            .into_iter()
            .map(|k| {
                let (mode, scenario) = k.cell;
                let Sample {
                    wrk,
                    vip_new,
                    redirected,
                    server_cpu_secs,
                    others,
                } = k.sample;
                Run {
                    scenario,
                    mode,
                    round: k.round,
                    wrk,
                    vip_new,
                    redirected,
                    server_cpu_secs,
                    others,
                }
            })
            .collect(),
        repeated: r.repeated,
        disturbed_used: r.disturbed_used,
    })
}

struct Rounds {
    runs: Vec<Run>,
    repeated: usize,
    disturbed_used: usize,
}

fn progress(what: &str, s: Scenario, mode: Mode, r: &wrk::Report, others: &Usage) {
    println!(
        "  [{what}] {:<10} {:<26} {:>9} req/s  p50 {:>9}  p99.9 {:>9}  others {:>4.0}%  errors: {}",
        mode.label(),
        s.label(),
        stats::rate(r.rps),
        stats::micros(r.p50_us),
        stats::micros(r.p999_us),
        others.cpus * 100.0,
        r.describe_errors()
    );
}
