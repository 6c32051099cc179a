//! `cargo xtask bench xfer`: 1 GiB through the same-host L4 path. A client
//! task (`knit-testbin blast`) writes 1 GiB to a TCP alias's VIP; the
//! connect hook sends the connection to a server task on this host
//! (`knit-testbin sink-server`, which reads and discards and answers the
//! end of stream with its count). Three ways, interleaved, 3 rounds:
//! through the VIP with same-host acceleration on (the bytes go socket to
//! socket through sk_msg) and off (loopback TCP; switched by SIGHUP, which
//! applies to new connections), and direct (the client connects to the
//! server's own address). GiB/s is bytes over the time from the first
//! write to the sink's count, medians of the rounds.
//!
//! Each run is checked: the sink read every byte; through the VIP the
//! kernel counted the connection on the alias (direct runs: not); with
//! sk_msg on it carried at least the 1 GiB (a run whose socket fell back
//! to TCP/IP, its first send racing the peer's handshake, is measured
//! again and counted), and none otherwise.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use knit_tests::{Knit, client_service, tcp_service, tcp_task_definition};

use super::{
    cpu::{self, CLIENT_CPU, SERVER_CPU, Usage},
    knit,
    markdown::{Align, Table},
    procs::{self},
    report::{self, Machine},
    rounds::{self, Disturbance, Plan},
    stats::{Summary, Verdict},
    summary::{self, Bar, Entry, Goal, Kind, Panel, Reference},
};
use crate::util;

const ALIAS_PORT: u16 = 9000;
/// Goals: without sk_msg the L4 path costs nothing per byte (≥ 0.99 of
/// direct, as for keep-alive requests); with it, it must not be slower
/// than plain loopback (PERF-ANCHORS: sockmap only if it beats loopback).
const PLAIN_GOAL: f64 = 0.99;
const ACCEL_GOAL: f64 = 1.0;
/// Measure an sk_msg-on run again at most this often when its socket fell
/// back to TCP/IP.
const FALLBACK_RETRIES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Direct,
    Knit,
    KnitPlain,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Direct, Scenario::Knit, Scenario::KnitPlain];

    fn label(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Knit => "knit VIP (L4, sk_msg on)",
            Scenario::KnitPlain => "knit VIP (L4, sk_msg off)",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Scenario::Direct => Kind::Direct,
            Scenario::Knit => Kind::Knit,
            Scenario::KnitPlain => Kind::KnitOff,
        }
    }
}

/// One transfer.
struct Sample {
    gib_per_s: f64,
    secs: f64,
    /// CPU seconds of the client's and the server's tasks (their cgroups).
    cpu_secs: f64,
    redirected: u64,
    vip_new: u64,
    others: Usage,
}

impl Disturbance for Sample {
    fn others(&self) -> &Usage {
        &self.others
    }
}

struct Bench {
    k: Knit,
    testbin: PathBuf,
    vip: String,
    /// The sink's own address (direct runs).
    direct: SocketAddr,
    bytes: u64,
    /// sk_msg-on runs measured again because their socket kept TCP/IP.
    fallbacks: usize,
}

impl Bench {
    fn start(bin: &knit::Binary, bytes: u64) -> Result<Self> {
        let testbin = knit::testbin(bin)?;
        let mut k = knit::start("bench-xfer", "", bin)?;
        let (ctd, csvc) = client_service("xclient");
        k.apply(&[
            ("sink-td.json", &tcp_task_definition("sink")),
            ("sink-svc.json", &tcp_service("sink", "sink", ALIAS_PORT)),
            ("xclient-td.json", &ctd),
            ("xclient-svc.json", &csvc),
        ])?;
        let tb = testbin.display().to_string();
        k.run(
            "sink",
            &[
                "taskset",
                "-c",
                SERVER_CPU,
                &tb,
                "sink-server",
                "--port-env",
                "KNIT_PORT_TCP",
            ],
        )?;
        k.wait_healthy("sink", 1)?;
        let vip = knit::Aliases::read(&k)?.vip("sink")?;
        let eps = k.json(&["endpoints", "sink"])?;
        let direct: SocketAddr = eps
            .as_array()
            .and_then(|a| a.first())
            .and_then(|r| r["address"].as_str())
            .with_context(|| format!("no address for sink's endpoint: {eps}"))?
            .parse()
            .context("sink's endpoint address")?;
        ensure!(
            direct.ip().is_loopback(),
            "the sink listens on {direct}, not on loopback"
        );
        Ok(Self {
            k,
            testbin,
            vip,
            direct,
            bytes,
            fallbacks: 0,
        })
    }

    fn target(&self, s: Scenario) -> String {
        match s {
            Scenario::Direct => self.direct.to_string(),
            _ => format!("{}:{ALIAS_PORT}", self.vip),
        }
    }

    fn args(&self, s: Scenario) -> Vec<String> {
        vec![
            "taskset".into(),
            "-c".into(),
            CLIENT_CPU.into(),
            self.testbin.display().to_string(),
            "blast".into(),
            "--target".into(),
            self.target(s),
            "--bytes".into(),
            self.bytes.to_string(),
            "--timeout-s".into(),
            "120".into(),
        ]
    }

    fn vip_connections(&self) -> Result<u64> {
        knit::Aliases::read(&self.k)?.new_connections("sink")
    }

    fn tasks_cpu(&self) -> Result<f64> {
        Ok(cpu::cgroup_secs(&self.k.cgroup.join("sink"))?
            + cpu::cgroup_secs(&self.k.cgroup.join("xclient"))?)
    }

    /// One transfer; an sk_msg-on run whose socket kept TCP/IP is measured
    /// again (up to [`FALLBACK_RETRIES`] times).
    fn measure(&mut self, s: Scenario) -> Result<Sample> {
        for _ in 0..FALLBACK_RETRIES {
            match self.once(s)? {
                Some(x) => return Ok(x),
                None => {
                    self.fallbacks += 1;
                    println!(
                        "  the socket kept TCP/IP (its first send raced the handshake); again"
                    );
                }
            }
        }
        bail!(
            "{FALLBACK_RETRIES} sk_msg-on transfers in a row kept TCP/IP: acceleration does not \
             take this path"
        )
    }

    /// None: an sk_msg-on run that sk_msg did not carry.
    fn once(&self, s: Scenario) -> Result<Option<Sample>> {
        if s != Scenario::Direct {
            knit::reload_accelerate(&self.k, s == Scenario::Knit)?;
        }
        let vip_before = self.vip_connections()?;
        let accel_before = knit::accel(&self.k)?;
        let cpu_before = self.tasks_cpu()?;
        let others_before = cpu::Snapshot::take()?;
        let mut cmd = self.k.cmd();
        cmd.args(["run", "--service", "xclient", "--"])
            .args(self.args(s));
        let out = procs::run_bounded(&mut cmd, Duration::from_secs(180))?;
        let others = others_before.usage_until(&cpu::Snapshot::take()?);
        let cpu_secs = self.tasks_cpu()? - cpu_before;
        let accel_after = knit::accel(&self.k)?;
        let redirected = accel_after.redirected_since(&accel_before)?;
        ensure!(
            out.status.success(),
            "blast to {} failed ({}):\n{}{}",
            self.target(s),
            out.status,
            out.stdout,
            out.stderr
        );
        let r: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("blast's output: {}", out.stdout))?;
        let received = r["received"].as_u64().context("blast: received")?;
        let secs = r["elapsed_s"].as_f64().context("blast: elapsed_s")?;
        ensure!(
            received == self.bytes && secs > 0.0,
            "the sink read {received} of {} bytes in {secs} s",
            self.bytes
        );
        let vip_new = self
            .vip_connections()?
            .checked_sub(vip_before)
            .context("sink's VIP counter went down: did the daemon restart?")?;
        match s {
            Scenario::Direct if vip_new != 0 => bail!(
                "a direct run moved sink's VIP counter by {vip_new}: the comparison is not clean"
            ),
            Scenario::Knit | Scenario::KnitPlain if vip_new != 1 => {
                bail!("the VIP path counted {vip_new} new connections for one transfer")
            }
            _ => {}
        }
        match s {
            Scenario::Knit if redirected < self.bytes => {
                if accel_after.fallbacks_since(&accel_before) > 0 {
                    return Ok(None);
                }
                bail!(
                    "sk_msg carried {redirected} of the {} bytes sent through the VIP with \
                     acceleration on, and no socket fell back: `knit status` says \
                     {accel_after:?}",
                    self.bytes
                );
            }
            Scenario::Direct | Scenario::KnitPlain if redirected != 0 => bail!(
                "{} run moved {redirected} bytes through sk_msg: the comparison is not clean",
                s.label()
            ),
            _ => {}
        }
        Ok(Some(Sample {
            gib_per_s: self.bytes as f64 / f64::from(1u32 << 30) / secs,
            secs,
            cpu_secs,
            redirected,
            vip_new,
            others,
        }))
    }
}

struct Outcome {
    machine: Machine,
    date: String,
    quick: bool,
    plan: Plan,
    bytes: u64,
    runs: Vec<rounds::Kept<Scenario, Sample>>,
    repeated: usize,
    disturbed_used: usize,
    fallbacks: usize,
    version: String,
    commands: Vec<String>,
    elapsed: Duration,
}

pub fn run(quick: bool) -> Result<()> {
    let started = Instant::now();
    let (bytes, plan) = if quick {
        (
            256 << 20,
            Plan {
                secs: 0,
                warmup_secs: 0,
                rounds: 2,
            },
        )
    } else {
        (
            1 << 30,
            Plan {
                secs: 0,
                warmup_secs: 1,
                rounds: 3,
            },
        )
    };
    let bin = knit::binary()?;
    let started_measuring = Instant::now();
    util::step("xfer: starting a knit daemon and a sink (service sink)");
    let mut bench = Bench::start(&bin, bytes)?;
    println!(
        "sink on {}, VIP {}:{ALIAS_PORT}; {} bytes per transfer",
        bench.direct, bench.vip, bytes
    );
    util::step("xfer: waiting for other processes to leave the CPUs alone");
    rounds::settle(if quick { 3 } else { 60 })?;
    if plan.warmup_secs > 0 {
        util::step("xfer: warm-up, one transfer each way (discarded)");
        for s in Scenario::ALL {
            let x = bench.measure(s)?;
            progress("warm-up", s, &x);
        }
    }
    util::step(&format!(
        "xfer: {} rounds of direct, sk_msg on, sk_msg off",
        plan.rounds
    ));
    let (budget, settle_secs) = if quick { (0, 1) } else { (300, 30) };
    let measured = rounds::measure(
        &Scenario::ALL,
        plan.rounds,
        budget,
        settle_secs,
        |s| bench.measure(s),
        progress,
    )?;
    let o = Outcome {
        machine: Machine::probe(),
        date: report::now_utc(),
        quick,
        plan,
        bytes,
        runs: measured.runs,
        repeated: measured.repeated,
        disturbed_used: measured.disturbed_used,
        fallbacks: bench.fallbacks,
        version: knit::version(&bench.k, &bin)?,
        commands: commands(&bench),
        elapsed: started_measuring.elapsed(),
    };
    // Measured: the daemon's log is no longer of interest.
    bench.k.show_log_on_drop(false);
    drop(bench);
    summary::publish(
        quick,
        "xfer",
        &o.machine,
        &o.date,
        &render(&o)?,
        entry(&o)?,
        || headline(&o),
    )?;
    println!("{} s with the build", started.elapsed().as_secs());
    for r in &o.runs {
        ensure!(
            r.sample.gib_per_s > 0.0 && r.sample.cpu_secs > 0.0,
            "round {} {}: implausible figures",
            r.round,
            r.cell.label()
        );
    }
    Ok(())
}

fn progress(what: &str, s: Scenario, x: &Sample) {
    println!(
        "  [{what}] {:<26} {:>6.2} GiB/s  {:>6.2} s  CPU {:>5.2} s  sk_msg {:>11} B  others {:>3.0}%",
        s.label(),
        x.gib_per_s,
        x.secs,
        x.cpu_secs,
        x.redirected,
        x.others.cpus * 100.0
    );
}

fn commands(b: &Bench) -> Vec<String> {
    let shown = |s: Scenario| {
        report::shell_words(&b.args(s)).replace(&b.testbin.display().to_string(), "knit-testbin")
    };
    vec![
        format!(
            "knit run --service sink -- taskset -c {SERVER_CPU} knit-testbin sink-server --port-env KNIT_PORT_TCP"
        ),
        format!("knit run --service xclient -- {}", shown(Scenario::Direct)),
        format!("knit run --service xclient -- {}", shown(Scenario::Knit)),
        "# sk_msg on and off: [datapath] accelerate = true|false in $DIR/knit.toml, then kill \
         -HUP <knit daemon pid>, before each VIP run"
            .into(),
    ]
}

fn gib(o: &Outcome, s: Scenario) -> Result<Summary> {
    let v: Vec<f64> = o
        .runs
        .iter()
        .filter(|r| r.cell == s)
        .map(|r| r.sample.gib_per_s)
        .collect();
    Summary::of(&v).with_context(|| format!("no {} runs", s.label()))
}

fn cpu_per_gib(o: &Outcome, s: Scenario) -> Result<Summary> {
    let gibs = o.bytes as f64 / f64::from(1u32 << 30);
    let v: Vec<f64> = o
        .runs
        .iter()
        .filter(|r| r.cell == s)
        .map(|r| r.sample.cpu_secs / gibs)
        .collect();
    Summary::of(&v).with_context(|| format!("no {} runs", s.label()))
}

/// `s` ÷ direct within each round.
fn paired(o: &Outcome, s: Scenario) -> Option<Summary> {
    let ratios: Vec<f64> = (1..=o.plan.rounds)
        .filter_map(|round| {
            let find = |c| {
                o.runs
                    .iter()
                    .find(|r| r.round == round && r.cell == c)
                    .map(|r| r.sample.gib_per_s)
            };
            Some(find(s)? / find(Scenario::Direct)?)
        })
        .collect();
    Summary::of(&ratios)
}

fn judge(o: &Outcome, s: Scenario) -> Result<(f64, f64, Verdict)> {
    let goal = if s == Scenario::Knit {
        ACCEL_GOAL
    } else {
        PLAIN_GOAL
    };
    let (x, d) = (gib(o, s)?, gib(o, Scenario::Direct)?);
    let ratio = x.median / d.median;
    let noise = x.spread().max(d.spread());
    let margin = (ratio - goal).abs();
    let v = Verdict::new(ratio >= goal, noise, margin, || {
        format!(
            "this scenario's or direct's own rounds spread {:.1}%, more than the {:.1}% margin",
            noise * 100.0,
            margin * 100.0
        )
    });
    Ok((ratio, goal, v))
}

fn render(o: &Outcome) -> Result<String> {
    let mut s = String::from("## L4 transfer\n\n");
    let run_cmd = if o.quick {
        "cargo xtask bench xfer --quick"
    } else {
        "cargo xtask bench xfer"
    };
    writeln!(
        s,
        "Measured {} by `{run_cmd}` on {}, knit {}: {} rounds of one {} transfer per scenario{}; \
         measuring took {} s (the build not counted).\n",
        o.date,
        o.machine.short(),
        o.version,
        o.plan.rounds,
        size(o.bytes),
        if o.plan.warmup_secs > 0 {
            " after one discarded transfer each"
        } else {
            ""
        },
        o.elapsed.as_secs()
    )?;
    s.push_str(&rounds::disturbed_warning(
        o.quick,
        o.disturbed_used,
        o.runs.len(),
    ));
    s.push_str(
        "A client task writes the bytes to a server task on the same host, which reads and \
         discards them and answers the end of stream with its count (`knit-testbin blast` and \
         `sink-server`, 256 KiB writes and reads): through the VIP of the TCP alias `sink:9000` \
         (the connect hook picks the server at `connect()`) with same-host acceleration \
         **on** (knit's default: sk_msg hands every write to the server's receive queue) and \
         **off** (`[datapath] accelerate = false`: loopback TCP), and **direct** to the \
         server's own address. GiB/s is the bytes over the time from the first write to the \
         server's count (so every byte was read); CPU is the client's and the server's tasks' \
         (their cgroups' `cpu.stat`), per GiB.\n\n",
    );
    let mut table = Table::new(&[
        ("scenario", Align::Left),
        ("GiB/s (median, min–max)", Align::Right),
        ("ratio to direct", Align::Right),
        ("CPU per GiB (client + server)", Align::Right),
    ]);
    let d = gib(o, Scenario::Direct)?.median;
    for sc in Scenario::ALL {
        let g = gib(o, sc)?;
        table.row([
            sc.label().to_string(),
            format!("{:.2} ({:.2}–{:.2})", g.median, g.min, g.max),
            format!("{:.3}", g.median / d),
            format!("{:.2} s", cpu_per_gib(o, sc)?.median),
        ]);
    }
    write!(s, "{table}")?;
    s.push_str("\nGoals, judged from the medians above:\n\n");
    for sc in [Scenario::Knit, Scenario::KnitPlain] {
        let (ratio, goal, v) = judge(o, sc)?;
        let pair = paired(o, sc)
            .map(|p| format!(", per round {:.3}–{:.3}", p.min, p.max))
            .unwrap_or_default();
        writeln!(
            s,
            "- {}: ≥ {goal:.2} × direct ({}): {ratio:.3}{pair}: {}.",
            sc.label(),
            if sc == Scenario::Knit {
                "sk_msg must not be slower than the loopback it replaces"
            } else {
                "the L4 path costs nothing per byte"
            },
            v.long()
        )?;
    }
    let on_bytes: u64 = o
        .runs
        .iter()
        .filter(|r| r.cell == Scenario::Knit)
        .map(|r| r.sample.redirected)
        .sum();
    let other_bytes: u64 = o
        .runs
        .iter()
        .filter(|r| r.cell != Scenario::Knit)
        .map(|r| r.sample.redirected)
        .sum();
    let vip: u64 = o.runs.iter().map(|r| r.sample.vip_new).sum();
    writeln!(
        s,
        "\nChecks: the server read every byte of every transfer. The kernel counted {vip} new \
         connections on alias `sink`, one per VIP run, none in the direct runs. sk_msg carried \
         {on_bytes} bytes in the sk_msg-on runs (every byte sent, and the server's count back) \
         and {other_bytes} in the others; {} sk_msg-on transfers kept TCP/IP (their first \
         write raced the server's side of the handshake) and were measured again. {}\n",
        o.fallbacks,
        rounds::quiet_note(o.runs.iter().map(|r| &r.sample.others), o.repeated)
    )?;
    writeln!(
        s,
        "Method: the client pinned to CPU {CLIENT_CPU}, the server to CPU {SERVER_CPU} \
         (`taskset`), both knit tasks (so the direct runs pay the same cgroup hooks); rounds \
         of direct, sk_msg on, sk_msg off; sk_msg switched by SIGHUP before each VIP run (it \
         applies to new connections, and each transfer is one).\n\nCommands ($DIR is the \
         daemon's temp dir):\n\n```sh"
    )?;
    for c in &o.commands {
        writeln!(s, "{c}")?;
    }
    s.push_str("```\n");
    Ok(s)
}

fn headline(o: &Outcome) -> Result<String> {
    let (on, _, von) = judge(o, Scenario::Knit)?;
    let (off, _, voff) = judge(o, Scenario::KnitPlain)?;
    Ok(format!(
        "- `xfer`: 1 GiB from a task to a local task through a TCP VIP: {:.2} GiB/s with sk_msg, \
         {:.2} without, {:.2} direct; ÷ direct {on:.3} ({}, goal ≥ {ACCEL_GOAL:.2}) and \
         {off:.3} ({}, goal ≥ {PLAIN_GOAL:.2}). Measured {}. See \
         [BENCHMARKS.md](BENCHMARKS.md#l4-transfer).",
        gib(o, Scenario::Knit)?.median,
        gib(o, Scenario::KnitPlain)?.median,
        gib(o, Scenario::Direct)?.median,
        von.short(),
        voff.short(),
        o.date
    ))
}

/// "1 GiB" or "256 MiB".
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn entry(o: &Outcome) -> Result<Entry> {
    let mut goals = Vec::new();
    for sc in [Scenario::Knit, Scenario::KnitPlain] {
        let (ratio, goal, v) = judge(o, sc)?;
        goals.push(Goal::new(
            format!(
                "{}, {}: GiB/s ≥ {goal:.2} × direct",
                size(o.bytes),
                sc.label()
            ),
            format!("{ratio:.3}"),
            v.short(),
        ));
    }
    let bars = Scenario::ALL
        .iter()
        .map(|&sc| {
            let g = gib(o, sc)?.median;
            Ok(Bar::new(sc.label(), g, format!("{g:.2}"), sc.kind()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Entry {
        date: o.date.clone(),
        quick: o.quick,
        goals,
        panels: vec![Panel {
            title: format!("L4 transfer of {}, GiB/s (higher is better)", size(o.bytes)),
            caption: format!(
                "a task to a local task through a TCP VIP, one connection, client and server on \
                 their own CPUs; medians of {} rounds.",
                o.plan.rounds
            ),
            bars,
            reference: Some(Reference {
                value: gib(o, Scenario::Direct)?.median,
                label: "direct".into(),
            }),
        }],
    })
}
