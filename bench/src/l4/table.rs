//! The `## L4` section of BENCHMARKS.md: the tables, the goals judged from
//! the measured medians (never written in by hand), how it was run, and
//! the benchmark's entry of the summary and chart.
use std::fmt::Write as _;

use anyhow::{Context, Result, ensure};

use super::{Mode, Outcome, Run, Scenario};
use crate::{
    cpu::{CLIENT_CPU, SERVER_CPU},
    markdown::{Align, Table},
    rounds,
    stats::{Summary, micros, rate_range},
    summary::{Bar, Entry, Goal, Kind, Panel, Reference},
    wrk,
};

/// The issue's goals: knit ÷ direct, medians.
const KEEPALIVE_GOAL: f64 = 0.99;
const NEW_CONN_GOAL: f64 = 0.95;

fn runs(o: &Outcome, s: Scenario, mode: Mode) -> impl Iterator<Item = &Run> {
    o.runs
        .iter()
        .filter(move |r| r.scenario == s && r.mode == mode)
}

fn values(o: &Outcome, s: Scenario, mode: Mode, f: impl Fn(&wrk::Report) -> f64) -> Vec<f64> {
    runs(o, s, mode).map(|r| f(&r.wrk)).collect()
}

fn summary(
    o: &Outcome,
    s: Scenario,
    mode: Mode,
    f: impl Fn(&wrk::Report) -> f64,
) -> Result<Summary> {
    Summary::of(&values(o, s, mode, f)).with_context(|| format!("no {} {mode:?} runs", s.label()))
}

fn rps(o: &Outcome, s: Scenario, mode: Mode) -> Result<Summary> {
    summary(o, s, mode, |w| w.rps)
}

fn p50(o: &Outcome, s: Scenario, mode: Mode) -> Result<Summary> {
    summary(o, s, mode, |w| w.p50_us)
}

/// The servers' CPU (daemon, nginx, HAProxy) per request, µs, median.
fn cpu_per_request(o: &Outcome, s: Scenario, mode: Mode) -> Result<Summary> {
    let v: Vec<f64> = runs(o, s, mode)
        .filter(|r| r.wrk.requests > 0)
        .map(|r| r.server_cpu_secs * 1e6 / r.wrk.requests as f64)
        .collect();
    Summary::of(&v).with_context(|| format!("no {} {mode:?} runs", s.label()))
}

/// `s` ÷ direct within each round: the ratio with slow drift of the
/// machine taken out, as a range across rounds.
fn paired(o: &Outcome, s: Scenario, mode: Mode) -> Option<Summary> {
    let ratios: Vec<f64> = (1..=o.plan.rounds)
        .filter_map(|round| {
            let find = |s| {
                o.runs
                    .iter()
                    .find(|r| r.round == round && r.mode == mode && r.scenario == s)
                    .map(|r| r.wrk.rps)
            };
            Some(find(s)? / find(Scenario::Direct)?)
        })
        .collect();
    Summary::of(&ratios)
}

fn goal_of(mode: Mode) -> f64 {
    match mode {
        Mode::KeepAlive => KEEPALIVE_GOAL,
        Mode::Close => NEW_CONN_GOAL,
    }
}

/// A goal judged: `s` ÷ direct against the mode's goal.
struct Judged {
    ratio: f64,
    pair: Option<Summary>,
    met: bool,
    /// The rounds' own spread, when wider than the tolerance being judged.
    noise: Option<f64>,
}

impl Judged {
    fn verdict(&self) -> &'static str {
        match (self.met, self.noise.is_some()) {
            (true, false) => "met",
            (false, false) => "not met",
            (true, true) => "met, not conclusive",
            (false, true) => "not met, not conclusive",
        }
    }
}

fn judge(o: &Outcome, s: Scenario, mode: Mode) -> Result<Judged> {
    let (knit, direct) = (rps(o, s, mode)?, rps(o, Scenario::Direct, mode)?);
    let goal = goal_of(mode);
    let ratio = knit.median / direct.median;
    // A verdict on a 1% margin means little when the same configuration
    // varies by more than that from round to round: say so.
    let noise = knit.spread().max(direct.spread());
    Ok(Judged {
        ratio,
        pair: paired(o, s, mode),
        met: ratio >= goal,
        noise: (noise > 1.0 - goal).then_some(noise),
    })
}

fn goal_line(o: &Outcome, s: Scenario, mode: Mode, what: &str) -> Result<String> {
    let goal = goal_of(mode);
    let tolerance = 1.0 - goal;
    let j = judge(o, s, mode)?;
    let pair = j
        .pair
        .map(|p| format!("; per round {:.3}–{:.3}", p.min, p.max))
        .unwrap_or_default();
    let verdict = if j.met { "met" } else { "not met" };
    let caveat = j
        .noise
        .map(|noise| {
            format!(
                " (not conclusive: this scenario's or direct's own rounds spread {:.1}%, more \
                 than the {:.0}% being judged)",
                noise * 100.0,
                tolerance * 100.0
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "- {what}, {}: within {:.0}% of direct (÷ direct ≥ {goal:.2}): measured {:.3}{pair}: **{verdict}**{caveat}.\n",
        s.label(),
        tolerance * 100.0,
        j.ratio
    ))
}

/// The README's one line for this benchmark, from the same medians.
pub fn headline(o: &Outcome) -> Result<String> {
    let ka = judge(o, Scenario::Knit, Mode::KeepAlive)?;
    let cl = judge(o, Scenario::Knit, Mode::Close)?;
    let ka_off = judge(o, Scenario::KnitPlain, Mode::KeepAlive)?;
    let cl_off = judge(o, Scenario::KnitPlain, Mode::Close)?;
    Ok(format!(
        "- `l4`: the L4 short-circuit against direct connections and HAProxy `mode tcp` (wrk). \
         knit ÷ direct: {:.3} keep-alive requests/s (goal ≥ {KEEPALIVE_GOAL:.2}, {}), \
         {:.3} new connections/s (goal ≥ {NEW_CONN_GOAL:.2}, {}); with sk_msg off {:.3} and \
         {:.3}. Measured {}.",
        ka.ratio,
        ka.verdict(),
        cl.ratio,
        cl.verdict(),
        ka_off.ratio,
        cl_off.ratio,
        o.date
    ))
}

/// The summary's goals and the chart's panel, from the same medians.
pub fn entry(o: &Outcome) -> Result<Entry> {
    let mut goals = Vec::new();
    let mut bars = Vec::new();
    for mode in Mode::ALL {
        let what = match mode {
            Mode::KeepAlive => "keep-alive req/s",
            Mode::Close => "new connections/s",
        };
        for s in [Scenario::Knit, Scenario::KnitPlain] {
            let j = judge(o, s, mode)?;
            goals.push(Goal::new(
                format!("{what}, {}: ≥ {:.2} × direct", s.label(), goal_of(mode)),
                format!("{:.3}", j.ratio),
                j.verdict(),
            ));
        }
        let direct = rps(o, Scenario::Direct, mode)?.median;
        for s in [Scenario::Knit, Scenario::KnitPlain, Scenario::Haproxy] {
            let r = rps(o, s, mode)?.median / direct;
            let (who, kind) = match s {
                Scenario::Knit => ("knit", Kind::Knit),
                Scenario::KnitPlain => ("knit, sk_msg off", Kind::KnitOff),
                _ => ("HAProxy tcp", Kind::Other),
            };
            let m = match mode {
                Mode::KeepAlive => "keep-alive",
                Mode::Close => "new conn",
            };
            bars.push(Bar::new(format!("{m}: {who}"), r, format!("{r:.3}"), kind));
        }
    }
    Ok(Entry {
        date: o.date.clone(),
        quick: o.quick,
        goals,
        panels: vec![Panel {
            title: "L4 short-circuit: requests/s ÷ direct (higher is better)".into(),
            caption: format!(
                "wrk to nginx, {} keep-alive connections / {} with Connection: close; medians \
                 of {} rounds. Goals: ≥ {KEEPALIVE_GOAL:.2} keep-alive, ≥ {NEW_CONN_GOAL:.2} \
                 new connections.",
                Mode::KeepAlive.connections(),
                Mode::Close.connections(),
                o.plan.rounds
            ),
            bars,
            reference: Some(Reference {
                value: 1.0,
                label: "direct = 1".into(),
            }),
        }],
    })
}

/// Quick runs (CI) fail on figures that cannot be right: no requests, a
/// zero rate or latency, errors.
pub fn sane(o: &Outcome) -> Result<()> {
    for r in &o.runs {
        ensure!(
            r.wrk.requests > 0 && r.wrk.rps > 0.0 && r.wrk.p50_us > 0.0 && r.wrk.p999_us > 0.0,
            "round {} {} {}: implausible figures {:?}",
            r.round,
            r.mode.label(),
            r.scenario.label(),
            r.wrk
        );
        ensure!(
            r.wrk.errors() == 0,
            "round {} {} {}: {}",
            r.round,
            r.mode.label(),
            r.scenario.label(),
            r.wrk.describe_errors()
        );
        ensure!(
            r.server_cpu_secs > 0.0,
            "round {} {} {}: the servers used no CPU",
            r.round,
            r.mode.label(),
            r.scenario.label()
        );
    }
    Ok(())
}

/// p50, p99, p99.9 and the servers' CPU per request, per mode.
fn latency_table(o: &Outcome, s: &mut String) -> Result<()> {
    s.push_str(
        "Latency (wrk's, closed loop: only comparable within this table) and the servers' CPU \
         per request (the knit daemon, nginx and HAProxy, in every scenario: utime + stime \
         from /proc, nginx from its service's cgroup `cpu.stat`):\n\n",
    );
    let mut t = Table::new(&[
        ("scenario", Align::Left),
        ("mode", Align::Left),
        ("p50", Align::Right),
        ("p99", Align::Right),
        ("p99.9", Align::Right),
        ("servers' CPU per request", Align::Right),
    ]);
    for mode in Mode::ALL {
        for sc in Scenario::ALL {
            t.row([
                sc.label().to_string(),
                mode.label().to_string(),
                micros(p50(o, sc, mode)?.median),
                micros(summary(o, sc, mode, |w| w.p99_us)?.median),
                micros(summary(o, sc, mode, |w| w.p999_us)?.median),
                format!("{:.1} µs", cpu_per_request(o, sc, mode)?.median),
            ]);
        }
    }
    writeln!(s, "{t}")?;
    Ok(())
}

pub fn render(o: &Outcome) -> Result<String> {
    let mut s = String::from("## L4\n\n");
    let run_cmd = if o.quick {
        "cargo xtask bench l4 --quick"
    } else {
        "cargo xtask bench l4"
    };
    let warmup = if o.plan.warmup_secs > 0 {
        format!(" after a {} s warm-up run per cell", o.plan.warmup_secs)
    } else if o.quick {
        " (no warm-up, no sanity runs)".into()
    } else {
        " (no warm-up beyond the 1 s sanity runs)".into()
    };
    writeln!(
        s,
        "Measured {} by `{run_cmd}` on {}, knit {}: {} rounds of {} s per cell{warmup}; the \
         whole benchmark took {} s.\n",
        o.date,
        o.machine.short(),
        o.knit_version,
        o.plan.rounds,
        o.plan.secs,
        o.elapsed.as_secs()
    )?;
    s.push_str(&rounds::disturbed_warning(
        o.quick,
        o.disturbed_used,
        o.runs.len(),
    ));
    s.push_str(
        "wrk sends `GET /` to nginx (`return 200 \"ok\"`) three ways: straight to nginx's \
         address (**direct**), to the VIP of knit's alias `web:8080`, which the kernel's \
         `connect4` hook rewrites to nginx at `connect()` (**knit VIP**, the L4 \
         short-circuit), and through **HAProxy** in `mode tcp`. The knit VIP runs twice: \
         with same-host acceleration on (knit's default: wrk's and nginx's sockets go into \
         the sockhash and sk_msg hands each send to the peer's receive queue) and off \
         (`[datapath] accelerate = false`, switched by SIGHUP before the run: plain loopback \
         TCP after the connect-time rewrite). Keep-alive runs measure \
         requests/s on open connections; `Connection: close` runs open one connection per \
         request, so their rate is new connections/s.\n\n",
    );
    let mut t = Table::new(&[
        ("scenario", Align::Left),
        ("keep-alive req/s (median, min–max)", Align::Right),
        ("ratio to direct", Align::Right),
        ("new conn/s (median, min–max)", Align::Right),
        ("ratio to direct", Align::Right),
        ("p50 latency (keep-alive)", Align::Right),
        ("p50 latency (new conn)", Align::Right),
    ]);
    let direct_ka = rps(o, Scenario::Direct, Mode::KeepAlive)?;
    let direct_cl = rps(o, Scenario::Direct, Mode::Close)?;
    for sc in Scenario::ALL {
        let ka = rps(o, sc, Mode::KeepAlive)?;
        let cl = rps(o, sc, Mode::Close)?;
        t.row([
            sc.label().to_string(),
            rate_range(&ka),
            format!("{:.3}", ka.median / direct_ka.median),
            rate_range(&cl),
            format!("{:.3}", cl.median / direct_cl.median),
            micros(p50(o, sc, Mode::KeepAlive)?.median),
            micros(p50(o, sc, Mode::Close)?.median),
        ]);
    }
    writeln!(s, "{t}")?;
    latency_table(o, &mut s)?;
    s.push_str("Goals, judged from the medians above:\n\n");
    for (mode, what) in [
        (Mode::KeepAlive, "Keep-alive requests/s"),
        (Mode::Close, "New connections/s"),
    ] {
        for sc in [Scenario::Knit, Scenario::KnitPlain] {
            s.push_str(&goal_line(o, sc, mode, what)?);
        }
    }
    writeln!(
        s,
        "\nNoise: direct's own rounds differ by {:.1}% (keep-alive) and {:.1}% (new connections) \
         from min to max; a smaller difference between scenarios is within the noise of this \
         machine.\n",
        direct_ka.spread() * 100.0,
        direct_cl.spread() * 100.0
    )?;
    checks(o, &mut s)?;
    method(o, &mut s)?;
    Ok(s)
}

fn checks(o: &Outcome, s: &mut String) -> Result<()> {
    let min_conns: u64 = o
        .runs
        .iter()
        .filter(|r| r.scenario.via_vip())
        .map(|r| match r.mode {
            Mode::KeepAlive => u64::from(r.mode.connections()),
            Mode::Close => r.wrk.requests,
        })
        .sum();
    let counted = |knit: bool| -> u64 {
        o.runs
            .iter()
            .filter(|r| r.scenario.via_vip() == knit)
            .map(|r| r.vip_new)
            .sum()
    };
    let moved = |on: bool| -> u64 {
        o.runs
            .iter()
            .filter(|r| (r.scenario == Scenario::Knit) == on)
            .map(|r| r.redirected)
            .sum()
    };
    let on_requests: u64 = o
        .runs
        .iter()
        .filter(|r| r.scenario == Scenario::Knit)
        .map(|r| r.wrk.requests)
        .sum();
    write!(
        s,
        "Checks: {}During the knit runs in the table the kernel counted {} \
         new connections on alias `web` (`knit services --json`, `new_connections`), at \
         least the {} that wrk needed, and {} during the direct and HAProxy runs: the knit \
         figures are the VIP path's, the others are not. sk_msg handed {} bytes socket to \
         socket during the sk_msg-on runs ({:.0} per request; `knit status --json`, \
         `acceleration.redirected_bytes`) and {} during all the others. Each run is checked, \
         and the benchmark stops otherwise. {}",
        if o.quick {
            ""
        } else {
            "before measuring, a 1 s run through each path in each mode completed requests \
             with no errors. "
        },
        counted(true),
        min_conns,
        counted(false),
        moved(true),
        moved(true) as f64 / on_requests.max(1) as f64,
        moved(false),
        quiet(o)
    )?;
    let bad: Vec<String> = o
        .runs
        .iter()
        .filter(|r| r.wrk.errors() > 0)
        .map(|r| {
            format!(
                "round {} {} {}: {}",
                r.round,
                r.mode.label(),
                r.scenario.label(),
                r.wrk.describe_errors()
            )
        })
        .collect();
    if bad.is_empty() {
        s.push_str(" wrk reported no socket errors and no non-2xx responses in any run.\n\n");
    } else {
        s.push_str(" wrk reported errors in these runs:\n\n");
        for b in bad {
            writeln!(s, "- {b}")?;
        }
        s.push('\n');
    }
    Ok(())
}

/// How much other processes used the CPUs during the runs in the table.
fn quiet(o: &Outcome) -> String {
    rounds::quiet_note(o.runs.iter().map(|r| &r.others), o.runs_repeated)
}

fn method(o: &Outcome, s: &mut String) -> Result<()> {
    writeln!(
        s,
        "Method:\n\n\
         - Backend: {}, one worker (`worker_processes 1`) pinned to CPU {SERVER_CPU}, `access_log off`, \
         `keepalive_requests 1000000` so keep-alive runs never reconnect; started with \
         `knit run --service web`, so it is a real knit backend (alias `web:8080`, TCP).\n\
         - Client: {}, one thread, pinned to CPU {CLIENT_CPU}, run with `knit run --service bench` (a \
         client-only service) in every scenario, so all pay the same cgroup hooks and \
         differ only in where they connect. {} connections keep-alive, {} with \
         `Connection: close`.\n\
         - {}, `mode tcp`, `nbthread 1`, pinned to CPU {SERVER_CPU} beside nginx (one CPU serves both \
         proxy and backend: that is the cost of a userspace hop on this machine), started \
         outside knit.\n\
         - Order: {}{}{} rounds, each \
         running keep-alive direct, knit (sk_msg on), knit (sk_msg off), HAProxy, then the \
         same with new connections. Medians of the rounds; latency is wrk's (p99.9 from a \
         `done` hook in Lua, `-s latency.lua`), closed loop, so only comparable within this \
         section.\n",
        o.machine.nginx,
        o.machine.wrk,
        Mode::KeepAlive.connections(),
        Mode::Close.connections(),
        o.machine.haproxy,
        if o.quick {
            ""
        } else {
            "a 1 s sanity run per path and mode, "
        },
        if o.plan.warmup_secs > 0 {
            format!("a {} s warm-up run per cell, then ", o.plan.warmup_secs)
        } else if o.quick {
            String::new()
        } else {
            "then ".into()
        },
        o.plan.rounds,
    )?;
    s.push_str(
        "Commands ($DIR is the daemon's temp dir; ports are picked free each run):\n\n```sh\n",
    );
    for c in &o.commands {
        writeln!(s, "{c}")?;
    }
    s.push_str("```\n\n<details><summary>nginx.conf and haproxy.cfg</summary>\n\n```nginx\n");
    s.push_str(o.nginx_conf.trim_end());
    s.push_str("\n```\n\n```haproxy\n");
    s.push_str(o.haproxy_cfg.trim_end());
    s.push_str("\n```\n\n</details>\n");
    Ok(())
}
