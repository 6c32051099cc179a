//! The `## L4` section of BENCHMARKS.md: the table, the goals judged from
//! the measured medians (never written in by hand), and how it was run.
use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::{Mode, Outcome, Scenario};
use crate::bench::{
    rounds,
    stats::{Summary, micros, rate_range},
    wrk,
};

/// The issue's goals: knit ÷ direct, medians.
const KEEPALIVE_GOAL: f64 = 0.99;
const NEW_CONN_GOAL: f64 = 0.95;

fn values(o: &Outcome, s: Scenario, mode: Mode, f: impl Fn(&wrk::Report) -> f64) -> Vec<f64> {
    o.runs
        .iter()
        .filter(|r| r.scenario == s && r.mode == mode)
        .map(|r| f(&r.wrk))
        .collect()
}

fn rps(o: &Outcome, s: Scenario, mode: Mode) -> Result<Summary> {
    Summary::of(&values(o, s, mode, |w| w.rps))
        .with_context(|| format!("no {} {mode:?} runs", s.label()))
}

fn p50(o: &Outcome, s: Scenario, mode: Mode) -> Result<Summary> {
    Summary::of(&values(o, s, mode, |w| w.p50_us))
        .with_context(|| format!("no {} {mode:?} runs", s.label()))
}

/// knit ÷ direct within each round: the ratio with slow drift of the
/// machine taken out, as a range across rounds.
fn paired(o: &Outcome, mode: Mode) -> Option<Summary> {
    let ratios: Vec<f64> = (1..=o.plan.rounds)
        .filter_map(|round| {
            let find = |s| {
                o.runs
                    .iter()
                    .find(|r| r.round == round && r.mode == mode && r.scenario == s)
                    .map(|r| r.wrk.rps)
            };
            Some(find(Scenario::Knit)? / find(Scenario::Direct)?)
        })
        .collect();
    Summary::of(&ratios)
}

fn goal_line(o: &Outcome, mode: Mode, what: &str, goal: f64) -> Result<String> {
    let (knit, direct) = (
        rps(o, Scenario::Knit, mode)?,
        rps(o, Scenario::Direct, mode)?,
    );
    let ratio = knit.median / direct.median;
    let verdict = if ratio >= goal { "met" } else { "not met" };
    let pair = paired(o, mode)
        .map(|p| format!("; per round {:.3}–{:.3}", p.min, p.max))
        .unwrap_or_default();
    // A verdict on a 1% margin means little when the same configuration
    // varies by more than that from round to round: say so.
    let tolerance = 1.0 - goal;
    let noise = knit.spread().max(direct.spread());
    let caveat = if noise > tolerance {
        format!(
            " (not conclusive: knit's or direct's own rounds spread {:.1}%, more than the \
             {:.0}% being judged)",
            noise * 100.0,
            tolerance * 100.0
        )
    } else {
        String::new()
    };
    Ok(format!(
        "- {what} within {:.0}% of direct (knit ÷ direct ≥ {goal:.2}): measured {ratio:.3}{pair}: **{verdict}**{caveat}.\n",
        tolerance * 100.0
    ))
}

/// The README's one line for this benchmark, from the same medians.
pub fn headline(o: &Outcome) -> Result<String> {
    let ratio = |mode| -> Result<(f64, &'static str)> {
        let r = rps(o, Scenario::Knit, mode)?.median / rps(o, Scenario::Direct, mode)?.median;
        let goal = match mode {
            Mode::KeepAlive => KEEPALIVE_GOAL,
            Mode::Close => NEW_CONN_GOAL,
        };
        // As in `goal_line`: rounds that spread wider than the tolerance
        // being judged make the verdict not conclusive.
        let noise = rps(o, Scenario::Knit, mode)?
            .spread()
            .max(rps(o, Scenario::Direct, mode)?.spread());
        Ok((
            r,
            match (r >= goal, noise > 1.0 - goal) {
                (true, false) => "met",
                (false, false) => "not met",
                (true, true) => "met, not conclusive",
                (false, true) => "not met, not conclusive",
            },
        ))
    };
    let (ka, ka_v) = ratio(Mode::KeepAlive)?;
    let (cl, cl_v) = ratio(Mode::Close)?;
    Ok(format!(
        "- `l4`: the L4 short-circuit against direct connections and HAProxy `mode tcp` (wrk). \
         knit ÷ direct: {ka:.3} keep-alive requests/s (goal ≥ {KEEPALIVE_GOAL:.2}, {ka_v}), \
         {cl:.3} new connections/s (goal ≥ {NEW_CONN_GOAL:.2}, {cl_v}). Measured {}.",
        o.date
    ))
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
    if o.disturbed_used > 0 {
        writeln!(
            s,
            "**Warning: {} of the {} runs in this table ran while other processes used the \
             CPUs, and no quiet repeat came in time; figures from a busy machine are noisy. \
             Rerun on a quiet machine.**\n",
            o.disturbed_used,
            o.runs.len()
        )?;
    }
    s.push_str(
        "wrk sends `GET /` to nginx (`return 200 \"ok\"`) three ways: straight to nginx's \
         address (**direct**), to the VIP of knit's alias `web:8080`, which the kernel's \
         `connect4` hook rewrites to nginx at `connect()` (**knit VIP**, the L4 \
         short-circuit), and through **HAProxy** in `mode tcp`. Keep-alive runs measure \
         requests/s on open connections; `Connection: close` runs open one connection per \
         request, so their rate is new connections/s.\n\n",
    );
    s.push_str(
        "| scenario | keep-alive req/s (median, min–max) | ratio to direct | new conn/s (median, min–max) | ratio to direct | p50 latency (keep-alive) | p50 latency (new conn) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let direct_ka = rps(o, Scenario::Direct, Mode::KeepAlive)?;
    let direct_cl = rps(o, Scenario::Direct, Mode::Close)?;
    for sc in Scenario::ALL {
        let ka = rps(o, sc, Mode::KeepAlive)?;
        let cl = rps(o, sc, Mode::Close)?;
        writeln!(
            s,
            "| {} | {} | {:.3} | {} | {:.3} | {} | {} |",
            sc.label(),
            rate_range(&ka),
            ka.median / direct_ka.median,
            rate_range(&cl),
            cl.median / direct_cl.median,
            micros(p50(o, sc, Mode::KeepAlive)?.median),
            micros(p50(o, sc, Mode::Close)?.median),
        )?;
    }
    s.push_str("\nGoals, judged from the medians above:\n\n");
    s.push_str(&goal_line(
        o,
        Mode::KeepAlive,
        "Keep-alive requests/s",
        KEEPALIVE_GOAL,
    )?);
    s.push_str(&goal_line(
        o,
        Mode::Close,
        "New connections/s",
        NEW_CONN_GOAL,
    )?);
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
        .filter(|r| r.scenario == Scenario::Knit)
        .map(|r| match r.mode {
            Mode::KeepAlive => u64::from(r.mode.connections()),
            Mode::Close => r.wrk.requests,
        })
        .sum();
    let counted = |knit: bool| -> u64 {
        o.runs
            .iter()
            .filter(|r| (r.scenario == Scenario::Knit) == knit)
            .map(|r| r.vip_new)
            .sum()
    };
    write!(
        s,
        "Checks: before measuring, a 1 s run through each path in each mode completed \
         requests with no errors. During the knit runs in the table the kernel counted {} \
         new connections on alias `web` (`knit services --json`, `new_connections`), at \
         least the {} that wrk needed, and {} during the direct and HAProxy runs: the knit \
         figures are the VIP path's, the others are not (each run is checked, and the \
         benchmark stops otherwise). {}",
        counted(true),
        min_conns,
        counted(false),
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
         - Backend: {}, one worker (`worker_processes 1`) pinned to CPU 1, `access_log off`, \
         `keepalive_requests 1000000` so keep-alive runs never reconnect; started with \
         `knit run --service web`, so it is a real knit backend (alias `web:8080`, TCP).\n\
         - Client: {}, one thread, pinned to CPU 0, run with `knit run --service bench` (a \
         client-only service) in every scenario, so all three pay the same cgroup hooks and \
         differ only in where they connect. {} connections keep-alive, {} with \
         `Connection: close`.\n\
         - {}, `mode tcp`, `nbthread 1`, pinned to CPU 1 beside nginx (one CPU serves both \
         proxy and backend: that is the cost of a userspace hop on this machine), started \
         outside knit.\n\
         - Order: a 1 s sanity run per path and mode, {}then {} rounds, each \
         running keep-alive direct, knit, HAProxy, then new-connection direct, knit, HAProxy. \
         Medians of the rounds; latency is wrk's p50 (closed loop, so only comparable \
         within this table).\n",
        o.machine.nginx,
        o.machine.wrk,
        Mode::KeepAlive.connections(),
        Mode::Close.connections(),
        o.machine.haproxy,
        if o.plan.warmup_secs > 0 {
            format!("a {} s warm-up run per cell, ", o.plan.warmup_secs)
        } else {
            String::new()
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
