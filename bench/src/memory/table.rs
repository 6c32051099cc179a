//! The `## Memory` section of BENCHMARKS.md, the goals judged from what was
//! measured, the README's line and the summary's entry.
use std::fmt::Write as _;

use anyhow::{Context, Result, ensure};

use super::{
    Level, Outcome,
    sidecars::{self, Proxy},
};
use crate::{
    markdown::{Align, Table},
    stats::Verdict,
    summary::{Bar, Entry, Goal, Kind, Panel},
};

/// PERF-ANCHORS' absolute goals for the daemon's RSS: idle, and with
/// 1,000 endpoints (ECS Service Connect budgets 64 MiB per task).
const IDLE_GOAL_MIB: f64 = 20.0;
const LOADED_GOAL_MIB: f64 = 64.0;
const LOADED_ENDPOINTS: usize = 1000;

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// The biggest count of each sidecar kind: the figure extrapolated.
fn per_sidecar(o: &Outcome, p: Proxy) -> Result<&sidecars::Measured> {
    o.sidecars
        .iter()
        .filter(|m| m.proxy == p)
        .max_by_key(|m| m.count)
        .with_context(|| format!("no {} measured", p.label()))
}

fn idle(o: &Outcome) -> Result<&Level> {
    o.levels.first().context("no idle reading")
}

fn largest(o: &Outcome) -> Result<&Level> {
    o.levels.last().context("no step measured")
}

/// knit's memory for a step's tasks, counted as the sidecars' are (see
/// `sidecars::Measured::extrapolate_kib`): the daemon, the pages the `knit
/// run` processes share once, and each one's own.
fn knit_total_kib(l: &Level) -> f64 {
    l.daemon.rss_kib
        + (l.supervisor.rss_kib - l.supervisor.uss_kib)
        + l.tasks as f64 * l.supervisor.uss_kib
}

/// A goal, what was measured, and the verdict (None: not judged, the run
/// did not reach the goal's size).
type Judged = (String, String, Option<Verdict>);

fn goals(o: &Outcome) -> Result<Vec<Judged>> {
    let idle = mib(idle(o)?.daemon.rss_kib);
    let big = largest(o)?;
    let loaded = mib(big.daemon.rss_kib);
    let sized = big.endpoints >= LOADED_ENDPOINTS;
    Ok(vec![
        (
            format!("daemon RSS idle ≤ {IDLE_GOAL_MIB:.0} MiB"),
            format!("{idle:.1} MiB"),
            Some(Verdict::new(idle <= IDLE_GOAL_MIB, 0.0, 1.0, String::new)),
        ),
        (
            format!("daemon RSS with {LOADED_ENDPOINTS} endpoints ≤ {LOADED_GOAL_MIB:.0} MiB"),
            format!("{loaded:.1} MiB at {} endpoints", big.endpoints),
            sized.then(|| Verdict::new(loaded <= LOADED_GOAL_MIB, 0.0, 1.0, String::new)),
        ),
    ])
}

fn long(v: &Option<Verdict>) -> String {
    v.as_ref().map_or_else(
        || "not judged (this run stopped short of that size)".into(),
        Verdict::long,
    )
}

fn short(v: &Option<Verdict>) -> &'static str {
    v.as_ref().map_or("not judged", Verdict::short)
}

pub fn render(o: &Outcome) -> Result<String> {
    let mut s = String::from("## Memory\n\n");
    let run_cmd = if o.quick {
        "cargo xtask bench memory --quick"
    } else {
        "cargo xtask bench memory"
    };
    writeln!(
        s,
        "Measured {} by `{run_cmd}` on {}, knit {}; measuring took {} s.\n",
        o.date,
        o.machine.short(),
        o.version,
        o.elapsed.as_secs()
    )?;
    s.push_str(
        "**knit: one daemon per host.** A release daemon grown in steps, each step's services \
         (TCP, one alias each) applied and their tasks started with `knit run` (each task a \
         `knit-testbin echo` listening on its port, so that the daemon registers it, \
         health-checks it and puts it in the kernel's maps); every endpoint healthy before \
         the daemon's memory is read. RSS is the resident memory (`VmRSS`: every page mapped, \
         shared or not), PSS the same with shared pages divided among the processes that \
         map them, USS the pages no other process maps (`smaps_rollup`: `Pss`, \
         `Private_Clean` + `Private_Dirty`); the daemon's are medians of 5 readings 200 ms \
         apart. The daemon's PSS falls as tasks start because each task's `knit run` maps the \
         same binary. `knit run` stays beside each task (it started it in its cgroup and \
         reports its exit): its figures are the medians over those processes.\n\n",
    );
    let mut t = Table::new(&[
        ("services", Align::Right),
        ("tasks", Align::Right),
        ("healthy endpoints", Align::Right),
        ("daemon RSS", Align::Right),
        ("daemon PSS", Align::Right),
        ("daemon RSS over idle, per task", Align::Right),
        ("`knit run` per task: RSS / PSS / USS", Align::Right),
        ("step took", Align::Right),
    ]);
    let idle_rss = idle(o)?.daemon.rss_kib;
    for l in &o.levels {
        let per_task = if l.tasks > 0 {
            format!("{:.1} KiB", (l.daemon.rss_kib - idle_rss) / l.tasks as f64)
        } else {
            "—".into()
        };
        let sup = if l.tasks > 0 {
            format!(
                "{:.1} / {:.2} / {:.2} MiB",
                mib(l.supervisor.rss_kib),
                mib(l.supervisor.pss_kib),
                mib(l.supervisor.uss_kib)
            )
        } else {
            "—".into()
        };
        t.row([
            format!(
                "{}{}",
                l.services,
                if l.services == 0 { " (idle)" } else { "" }
            ),
            l.tasks.to_string(),
            l.endpoints.to_string(),
            format!("{:.1} MiB", mib(l.daemon.rss_kib)),
            format!("{:.1} MiB", mib(l.daemon.pss_kib)),
            per_task,
            sup,
            if l.tasks > 0 {
                format!("{:.1} s", l.took.as_secs_f64())
            } else {
                "—".into()
            },
        ]);
    }
    write!(s, "{t}")?;
    s.push_str(
        "\n**Sidecars: one proxy per task.** Started for real, each the minimal sidecar of one \
         task (one listener, HTTP keep-alive to the task's port, `maxconn`/`worker_connections` \
         1024, one thread or worker), all in front of one backend; each carried 50 requests \
         before its memory was read (an nginx sidecar is its master and its worker \
         together: the master's RSS and the worker's own pages).\n\n",
    );
    let mut t = Table::new(&[
        ("sidecar", Align::Left),
        ("started", Align::Right),
        ("RSS each (median, min–max)", Align::Right),
        ("PSS each (median)", Align::Right),
        ("USS each (median, min–max)", Align::Right),
    ]);
    for m in &o.sidecars {
        t.row([
            m.proxy.label().to_string(),
            m.count.to_string(),
            format!(
                "{:.1} MiB ({:.1}–{:.1})",
                mib(m.rss_kib.median),
                mib(m.rss_kib.min),
                mib(m.rss_kib.max)
            ),
            format!("{:.2} MiB", mib(m.pss_kib.median)),
            format!(
                "{:.2} MiB ({:.2}–{:.2})",
                mib(m.uss_kib.median),
                mib(m.uss_kib.min),
                mib(m.uss_kib.max)
            ),
        ]);
    }
    write!(s, "{t}")?;
    let ha = per_sidecar(o, Proxy::Haproxy)?;
    let ng = per_sidecar(o, Proxy::Nginx)?;
    writeln!(
        s,
        "\n**The same tasks, both designs.** Memory held = the pages the processes share, \
         once (a process's RSS less its USS: the binary and libraries), plus each process's \
         own pages (USS); summing RSS would count the shared pages once per process. knit's \
         columns are measured at each step (the daemon's RSS, and the median `knit run`); \
         the sidecar columns are **extrapolated linearly** from the {} sidecars of each kind \
         that ran (USS each: {:.2} MiB HAProxy, {:.2} MiB nginx) to the task count.\n",
        ha.count,
        mib(ha.uss_kib.median),
        mib(ng.uss_kib.median)
    )?;
    let mut t = Table::new(&[
        ("services", Align::Right),
        ("tasks", Align::Right),
        ("knit daemon (RSS)", Align::Right),
        ("knit daemon + `knit run` per task", Align::Right),
        ("HAProxy sidecars (extrapolated)", Align::Right),
        ("nginx sidecars (extrapolated)", Align::Right),
    ]);
    for l in o.levels.iter().filter(|l| l.tasks > 0) {
        t.row([
            l.services.to_string(),
            l.tasks.to_string(),
            format!("{:.1} MiB", mib(l.daemon.rss_kib)),
            format!("{:.1} MiB", mib(knit_total_kib(l))),
            format!("{:.1} MiB", mib(ha.extrapolate_kib(l.tasks))),
            format!("{:.1} MiB", mib(ng.extrapolate_kib(l.tasks))),
        ]);
    }
    write!(s, "{t}")?;
    s.push_str("\nGoals (PERF-ANCHORS.md), judged from the figures above:\n\n");
    for (goal, measured, v) in goals(o)? {
        writeln!(s, "- {goal}: {measured}: {}.", long(&v))?;
    }
    let big = largest(o)?;
    writeln!(
        s,
        "\nAt {} tasks knit's daemon holds {:.1} MiB, {:.1} MiB with every task's `knit run`; \
         one HAProxy per task would hold about {:.0} MiB and one nginx per task about {:.0} MiB \
         (extrapolated). The `knit run` processes are knit's per-task cost; a sidecar design \
         has a supervisor per task too (the container runtime's shim), not counted in its \
         column.\n",
        big.tasks,
        mib(big.daemon.rss_kib),
        mib(knit_total_kib(big)),
        mib(ha.extrapolate_kib(big.tasks)),
        mib(ng.extrapolate_kib(big.tasks))
    )?;
    let (ha_cfg, ng_cfg) = &o.sidecar_confs;
    writeln!(
        s,
        "Method: the daemon's config is the benchmark's own (paths in a temp dir, admin on a \
         free port); services applied 20 per `knit apply`; tasks started 50 at a time, each \
         batch waited for until healthy; the sidecars, HAProxy and nginx from Debian, run \
         outside knit on loopback, their backend a `knit-testbin http` (also outside knit); \
         sidecars of one kind all run at once, then stop before the other kind starts.\n\n\
         <details><summary>A sidecar's haproxy.cfg and nginx.conf</summary>\n\n```haproxy\n{}\n```\n\n```nginx\n{}\n```\n\n</details>",
        ha_cfg.trim_end(),
        ng_cfg.trim_end()
    )?;
    Ok(s)
}

pub fn headline(o: &Outcome) -> Result<String> {
    let big = largest(o)?;
    let ha = per_sidecar(o, Proxy::Haproxy)?;
    let ng = per_sidecar(o, Proxy::Nginx)?;
    let g = goals(o)?;
    Ok(format!(
        "- `memory`: the daemon holds {:.1} MiB RSS idle ({}, goal ≤ {IDLE_GOAL_MIB:.0} MiB) \
         and {:.1} MiB with {} services and {} tasks ({}, goal ≤ {LOADED_GOAL_MIB:.0} MiB at \
         {LOADED_ENDPOINTS} endpoints); with every task's `knit run`, {:.0} MiB, where one \
         HAProxy per task would hold about {:.0} MiB and one nginx about {:.0} MiB \
         (extrapolated from {} started). Measured {}. See \
         [BENCHMARKS.md](BENCHMARKS.md#memory).",
        mib(idle(o)?.daemon.rss_kib),
        short(&g[0].2),
        mib(big.daemon.rss_kib),
        big.services,
        big.tasks,
        short(&g[1].2),
        mib(knit_total_kib(big)),
        mib(ha.extrapolate_kib(big.tasks)),
        mib(ng.extrapolate_kib(big.tasks)),
        ha.count,
        o.date
    ))
}

pub fn entry(o: &Outcome) -> Result<Entry> {
    let big = largest(o)?;
    let ha = per_sidecar(o, Proxy::Haproxy)?;
    let ng = per_sidecar(o, Proxy::Nginx)?;
    let t = big.tasks;
    let bar = |label: &str, kib: f64, kind| {
        Bar::new(label, mib(kib), format!("{:.0} MiB", mib(kib)), kind)
    };
    let bars = vec![
        bar("knit daemon", big.daemon.rss_kib, Kind::Knit),
        bar(
            "knit daemon + knit run each",
            knit_total_kib(big),
            Kind::Knit,
        ),
        bar(
            "HAProxy per task (extrap.)",
            ha.extrapolate_kib(t),
            Kind::Other,
        ),
        bar(
            "nginx per task (extrap.)",
            ng.extrapolate_kib(t),
            Kind::Other,
        ),
    ];
    Ok(Entry {
        date: o.date.clone(),
        quick: o.quick,
        goals: goals(o)?
            .into_iter()
            .map(|(g, m, v)| Goal::new(g, m, short(&v)))
            .collect(),
        panels: vec![Panel {
            title: format!(
                "Memory for {} services, {} tasks (lower is better)",
                big.services, big.tasks
            ),
            caption: format!(
                "shared pages once + each process's own; knit measured, sidecars extrapolated \
                 from {} started of each kind.",
                ha.count
            ),
            bars,
            reference: None,
        }],
    })
}

/// Quick runs (CI) fail on figures that cannot be right.
pub fn sane(o: &Outcome) -> Result<()> {
    for l in &o.levels {
        ensure!(
            l.daemon.rss_kib > 0.0 && l.daemon.pss_kib > 0.0,
            "the daemon's memory at {} services reads zero",
            l.services
        );
        ensure!(
            l.endpoints >= l.tasks,
            "{} healthy endpoints for {} tasks",
            l.endpoints,
            l.tasks
        );
    }
    for m in &o.sidecars {
        ensure!(
            m.rss_kib.min > 0.0 && m.pss_kib.min > 0.0 && m.uss_kib.min > 0.0,
            "{} {}: a sidecar's memory reads zero",
            m.count,
            m.proxy.label()
        );
    }
    Ok(())
}
