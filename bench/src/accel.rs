//! `cargo xtask bench accel`: what same-host acceleration (sockhash +
//! sk_msg) does to one L7 request. One connection, one request at a time
//! (closed loop): the load generator, a task, sends to an L7 alias's VIP;
//! the connect hook takes it to the daemon's proxy, which sends it on to
//! nginx, a task on the same host. With sk_msg on, both legs (task ->
//! daemon, daemon -> nginx) hand each send to the peer's receive queue;
//! off (`[datapath] accelerate = false`, the daemon restarted so that its
//! pooled connections are made anew), both are loopback TCP. Direct (the
//! load generator straight to nginx) gives the scale. HTTP/1.1 (wrk) and
//! h2c (h2load); issue #7's goal: p50 at least 20% lower with sk_msg.
//!
//! The setup and every check are the `l7` benchmark's (see `l7::setup`);
//! this benchmark runs only its one-connection cells, in more and longer
//! rounds, and judges the sk_msg goal from the per-round ratios.
use std::{fmt::Write as _, time::Instant};

use anyhow::Result;

use super::{
    knit,
    l7::{
        self, Cell, Load, Outcome, Proto, Scenario, Timing,
        setup::Bench,
        table::{self, p50, p99, p999, paired_by, rps, servers_cpu, skmsg_bytes},
    },
    markdown::{Align, Table},
    report::{self, Machine},
    rounds::{self, Plan},
    stats::{Summary, Verdict, micros, rate, signed_micros},
    summary::{self, Bar, Entry, Goal, Kind, Panel},
};

/// Issue #7: p50 with sk_msg at least this much lower than without.
const GOAL_CUT: f64 = 0.20;
const SCENARIOS: [Scenario; 3] = [Scenario::Direct, Scenario::Knit, Scenario::KnitPlain];

pub fn run(quick: bool) -> Result<()> {
    let started = Instant::now();
    l7::preflight()?;
    let plan = if quick {
        Plan {
            secs: 1,
            warmup_secs: 0,
            rounds: 2,
        }
    } else {
        Plan {
            secs: 5,
            warmup_secs: 1,
            rounds: 5,
        }
    };
    let bin = knit::binary()?;
    let started_measuring = Instant::now();
    crate::util::step("accel: starting a knit daemon and nginx (service web)");
    let mut bench = Bench::start(&bin)?;
    println!("{}", bench.describe());
    let cells = Cell::grid(&[Load::Serial], &SCENARIOS);
    let shape = (1, 1);

    crate::util::step("accel: waiting for other processes to leave the CPUs alone");
    rounds::settle(if quick { 3 } else { 60 })?;
    if plan.warmup_secs > 0 {
        crate::util::step(&format!(
            "accel: warm-up, {} s per cell (discarded)",
            plan.warmup_secs
        ));
        for &c in &cells {
            let s = bench.measure(c, plan.warmup_secs, shape)?;
            l7::progress("warm-up", c, &s);
        }
    }
    crate::util::step(&format!(
        "accel: {} rounds of {} s per cell, one connection, one request at a time",
        plan.rounds, plan.secs
    ));
    let planned = u64::from(plan.secs) * (plan.rounds * cells.len()) as u64;
    let (budget, settle_secs) = if quick { (0, 1) } else { (planned + 120, 30) };
    let measured = rounds::measure(
        &cells,
        plan.rounds,
        budget,
        settle_secs,
        |c| bench.measure(c, plan.secs, shape),
        l7::progress,
    )?;
    let o = Outcome {
        machine: Machine::probe(),
        h2load: l7::h2load_version(),
        date: report::now_utc(),
        quick,
        timing: Timing {
            plan,
            serial_secs: plan.secs,
        },
        runs: measured.runs,
        runs_repeated: measured.repeated,
        profiles: Vec::new(),
        disturbed_used: measured.disturbed_used,
        knit_version: knit::version(&bench.k, &bin)?,
        pinning: bench.pinning.clone(),
        commands: Vec::new(),
        backend_conf: String::new(),
        proxy_conf: String::new(),
        haproxy_cfg: String::new(),
        envoy_yaml: Default::default(),
        envoy: bench.envoy_version.clone(),
        sanity: Vec::new(),
        restarts: bench.restarts(),
        elapsed: started_measuring.elapsed(),
    };
    // Measured: the daemon's log is no longer of interest.
    bench.k.show_log_on_drop(false);
    drop(bench);
    summary::publish(
        quick,
        "accel",
        &o.machine,
        &o.date,
        &render(&o)?,
        entry(&o)?,
        || headline(&o),
    )?;
    println!("{} s with the build", started.elapsed().as_secs());
    l7::sane(&o.runs)
}

/// The goal for one protocol: how much lower p50 is with sk_msg, from the
/// medians, and the per-round range of the same.
struct Cut {
    on: Summary,
    off: Summary,
    /// 1 - on ÷ off of the medians.
    cut: f64,
    /// 1 - on ÷ off within each round.
    per_round: Option<Summary>,
    verdict: Verdict,
}

fn cut(o: &Outcome, p: Proto) -> Result<Cut> {
    let l = Load::Serial;
    let on = p50(o, p, l, Scenario::Knit)?;
    let off = p50(o, p, l, Scenario::KnitPlain)?;
    let cut = 1.0 - on.median / off.median;
    let per_round =
        paired_by(o, p, l, Scenario::Knit, Scenario::KnitPlain, |x| x.m.p50_us).map(|r| Summary {
            median: 1.0 - r.median,
            min: 1.0 - r.max,
            max: 1.0 - r.min,
        });
    // Rounds that disagree by more than the margin to the goal make the
    // verdict not conclusive.
    let noise = per_round.map_or(0.0, |r| r.max - r.min);
    let margin = (cut - GOAL_CUT).abs();
    let verdict = Verdict::new(cut >= GOAL_CUT, noise, margin, || {
        format!(
            "the per-round cut spreads {:.1} points, more than the {:.1} points to the goal",
            noise * 100.0,
            margin * 100.0
        )
    });
    Ok(Cut {
        on,
        off,
        cut,
        per_round,
        verdict,
    })
}

fn label(p: Proto, s: Scenario) -> String {
    match s {
        Scenario::Direct => format!("{}: direct", p.label()),
        Scenario::Knit => format!("{}: knit, sk_msg on", p.label()),
        _ => format!("{}: knit, sk_msg off", p.label()),
    }
}

fn render(o: &Outcome) -> Result<String> {
    let mut s = String::from("## sk_msg latency\n\n");
    let run_cmd = if o.quick {
        "cargo xtask bench accel --quick"
    } else {
        "cargo xtask bench accel"
    };
    let plan = &o.timing.plan;
    writeln!(
        s,
        "Measured {} by `{run_cmd}` on {}, knit {}: {} rounds of {} s per cell{}; measuring \
         took {} s (the build not counted).\n",
        o.date,
        o.machine.short(),
        o.knit_version,
        plan.rounds,
        plan.secs,
        if plan.warmup_secs > 0 {
            format!(" after a {} s warm-up run per cell", plan.warmup_secs)
        } else {
            String::new()
        },
        o.elapsed.as_secs()
    )?;
    s.push_str(&rounds::disturbed_warning(
        o.quick,
        o.disturbed_used,
        o.runs.len(),
    ));
    s.push_str(
        "One same-host L7 request at a time over one connection (closed loop): the load \
         generator, a knit task, sends `GET /` to an L7 alias's VIP (`web:8080`, HTTP/1.1 with \
         wrk; `web2:8080`, h2c with h2load); the connect hook takes the connection to the \
         daemon's proxy, which sends the request to nginx, a task on the same host. **sk_msg \
         on** (knit's default): both legs' sockets are in the sockhash and each send goes \
         straight to the peer's receive queue. **sk_msg off**: the daemon restarted with \
         `[datapath] accelerate = false`, both legs loopback TCP. **direct**: the load \
         generator straight to nginx, no proxy, for scale.\n\n",
    );
    let mut t = Table::new(&[
        ("protocol and scenario", Align::Left),
        ("p50 (median, min–max)", Align::Right),
        ("p99", Align::Right),
        ("p99.9", Align::Right),
        ("req/s", Align::Right),
        ("sk_msg bytes per request", Align::Right),
        ("servers' CPU per request", Align::Right),
    ]);
    let l = Load::Serial;
    for p in Proto::ALL {
        for sc in SCENARIOS {
            let m = p50(o, p, l, sc)?;
            let bytes = table::summary(o, p, l, sc, |x| {
                (x.m.requests > 0).then(|| x.redirected as f64 / x.m.requests as f64)
            })?;
            t.row([
                label(p, sc),
                format!("{} ({}–{})", micros(m.median), micros(m.min), micros(m.max)),
                micros(p99(o, p, l, sc)?.median),
                micros(p999(o, p, l, sc)?.median),
                rate(rps(o, p, l, sc)?.median),
                format!("{:.0}", bytes.median),
                format!("{:.1} µs", servers_cpu(o, p, l, sc)?.median),
            ]);
        }
    }
    write!(s, "{t}")?;
    s.push_str("\nGoal (issue #7), judged from the medians above:\n\n");
    for p in Proto::ALL {
        let c = cut(o, p)?;
        let direct = p50(o, p, l, Scenario::Direct)?.median;
        let per_round = c
            .per_round
            .map(|r| format!("; per round {:.1}% to {:.1}%", r.min * 100.0, r.max * 100.0))
            .unwrap_or_default();
        writeln!(
            s,
            "- {}: p50 with sk_msg at least {:.0}% lower than without: {} on vs {} off, {:.1}% \
             lower{per_round}: {}. The hop (knit's p50 over direct's {}) costs {} with sk_msg \
             and {} without.",
            p.label(),
            GOAL_CUT * 100.0,
            micros(c.on.median),
            micros(c.off.median),
            c.cut * 100.0,
            c.verdict.long(),
            micros(direct),
            signed_micros(c.on.median - direct),
            signed_micros(c.off.median - direct),
        )?;
    }
    let moved = |on| skmsg_bytes(o, on);
    let knit_requests: u64 = o
        .runs
        .iter()
        .filter(|r| r.cell.scenario.via_knit())
        .map(|r| r.sample.m.requests)
        .sum();
    let proxied: u64 = o
        .runs
        .iter()
        .filter(|r| r.cell.scenario.via_knit())
        .filter_map(|r| r.sample.proxied.map(|p| p.iter().sum::<u64>()))
        .sum();
    writeln!(
        s,
        "\nChecks: every run is checked as in the L7 benchmark, which stops otherwise: through \
         the VIP the kernel counted the load generator's connection on the alias and the proxy \
         counted the requests ({proxied} counted for the {knit_requests} the load generators \
         completed in the knit runs), so none took the kernel's fail-open path; direct runs \
         moved neither. sk_msg handed {} bytes socket to socket during the sk_msg-on runs and \
         {} during all the others; in the runs kept, {} sockets of the sockhash kept TCP/IP \
         because their first send came before the peer was in the sockhash \
         (`acceleration.tcp_fallback`; the table's bytes per request would show a run that \
         lost a leg), and {} sk_msg-on runs in which every socket did were measured again. \
         Switching sk_msg restarted the daemon {} times (the longest restart, to nginx's \
         endpoints healthy again, {} ms); sk_msg switches once per protocol, the two knit \
         runs swapping places from one protocol to the next. {} {}\n",
        moved(true),
        moved(false),
        o.runs.iter().map(|r| r.sample.fallbacks).sum::<u64>(),
        o.restarts.2,
        o.restarts.0,
        o.restarts.1.as_millis(),
        rounds::quiet_note(o.runs.iter().map(|r| &r.sample.others), o.runs_repeated),
        errors(o)
    )?;
    writeln!(
        s,
        "Method: the `l7` benchmark's setup (its section has nginx's config), its one-connection \
         cells only: {} (HTTP/1.1, `-c1`, p99.9 from a Lua `done` hook) and {} (h2c, `-c1 -m1`, \
         percentiles from its log), each a task of the client-only service `bench`; {}. Order \
         per round: HTTP/1.1 direct, on, off, then h2c direct, off, on. Medians of the rounds; \
         closed-loop latencies compare within this section only.",
        o.machine.wrk, o.h2load, o.pinning
    )?;
    Ok(s)
}

/// "No run had errors." or the runs that had.
fn errors(o: &Outcome) -> String {
    let bad: Vec<String> = o
        .runs
        .iter()
        .filter(|r| r.sample.m.errors > 0)
        .map(|r| {
            format!(
                "round {} {}: {}",
                r.round,
                label(r.cell.proto, r.cell.scenario),
                r.sample.m.error_text
            )
        })
        .collect();
    if bad.is_empty() {
        "No run had errors.".into()
    } else {
        format!("Runs with errors: {}.", bad.join("; "))
    }
}

fn headline(o: &Outcome) -> Result<String> {
    let (c1, c2) = (cut(o, Proto::H1)?, cut(o, Proto::H2c)?);
    Ok(format!(
        "- `accel`: one same-host L7 request at a time, sk_msg on vs off: p50 {} vs {} \
         HTTP/1.1 ({:.1}% lower, {}), {} vs {} h2c ({:.1}% lower, {}) (goal ≥ {:.0}% lower). \
         Measured {}. See [BENCHMARKS.md](BENCHMARKS.md#sk_msg-latency).",
        micros(c1.on.median),
        micros(c1.off.median),
        c1.cut * 100.0,
        c1.verdict.short(),
        micros(c2.on.median),
        micros(c2.off.median),
        c2.cut * 100.0,
        c2.verdict.short(),
        GOAL_CUT * 100.0,
        o.date
    ))
}

fn entry(o: &Outcome) -> Result<Entry> {
    let mut goals = Vec::new();
    let mut bars = Vec::new();
    for p in Proto::ALL {
        let c = cut(o, p)?;
        goals.push(Goal::new(
            format!(
                "{}: one request, p50 with sk_msg ≥ {:.0}% lower than without",
                p.label(),
                GOAL_CUT * 100.0
            ),
            format!(
                "{} vs {}: {:.1}% lower",
                micros(c.on.median),
                micros(c.off.median),
                c.cut * 100.0
            ),
            c.verdict.short(),
        ));
        for (sc, kind) in [
            (Scenario::Direct, Kind::Direct),
            (Scenario::Knit, Kind::Knit),
            (Scenario::KnitPlain, Kind::KnitOff),
        ] {
            let v = p50(o, p, Load::Serial, sc)?.median;
            bars.push(Bar::new(label(p, sc), v, micros(v), kind));
        }
    }
    Ok(Entry {
        date: o.date.clone(),
        quick: o.quick,
        goals,
        panels: vec![Panel {
            title: "sk_msg: p50 of one same-host L7 request (lower is better)".into(),
            caption: format!(
                "one connection, one request at a time, task -> daemon -> local nginx; medians \
                 of {} rounds of {} s. Goal: sk_msg on ≥ {:.0}% lower than off.",
                o.timing.plan.rounds,
                o.timing.plan.secs,
                GOAL_CUT * 100.0
            ),
            bars,
            reference: None,
        }],
    })
}
