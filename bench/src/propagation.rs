//! `cargo xtask bench propagation`: how fast a change on one host reaches
//! another host's kernel, and what a large registry costs.
//!
//! A fleet of three hosts (network namespaces, etcd on the first; see
//! `knit_tests::fleet`) runs the release `knit`.
//!
//! 1. Propagation: tasks of service `probe` start on host 2; their health
//!    check passes only once the benchmark allows it, and its first pass
//!    writes the time (CLOCK_REALTIME, ns) just before it exits: the moment
//!    the task becomes healthy. The benchmark then polls host 1's pinned
//!    `KNIT_BACKENDS` map every 0.2 ms until the task's endpoint is in it.
//!    The difference, over N changes one at a time, gives p50/p99/max
//!    (goal: p99 < 100 ms).
//! 2. Scale: 1,000 services are applied, then 10,000 endpoints of a
//!    synthetic host are written into etcd (records as a daemon writes
//!    them, under a lease of the benchmark; no process runs behind them and
//!    no traffic is sent to them). Measured: how long host 1 takes to have
//!    all of them in its kernel map (live sync), how long a fresh daemon on
//!    host 3 (empty datapath) takes from its start (full sync), and the
//!    daemons' resident memory before and after.
use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{HashMap, MapData};
use knit_tests::{Knit, fleet::Fleet, tcp_service, wait_for};
use proxy_common::maps::{Backend, BackendKey};
use serde_json::json;

use super::{
    cpu, knit,
    markdown::{Align, Table},
    report::{self, Machine},
    stats,
    summary::{self, Bar, Entry, Goal, Kind, Panel, Reference},
};

/// The synthetic host's address: inside the fleet's subnet, where nothing
/// answers (nothing is ever sent there).
const SYNTHETIC_HOST: u8 = 200;
/// The synthetic host's fleet index (endpoint ids above every real host's).
const SYNTHETIC_INDEX: u32 = 4000;

struct Sizes {
    changes: usize,
    services: usize,
    endpoints: usize,
}

/// Host 1's (or any host's) pinned map of backends.
fn backends_map(k: &Knit) -> Result<HashMap<MapData, BackendKey, Backend>> {
    knit::pinned_map(k, "KNIT_BACKENDS")
}

/// Endpoints of the synthetic host in a map.
fn synthetic(m: &HashMap<MapData, BackendKey, Backend>) -> usize {
    backend_ids(m)
        .iter()
        .filter(|id| *id >> 20 == SYNTHETIC_INDEX)
        .count()
}

fn backend_ids(m: &HashMap<MapData, BackendKey, Backend>) -> BTreeSet<u32> {
    m.iter()
        .filter_map(Result::ok)
        .map(|(_, b)| b.backend_id)
        .collect()
}

pub fn run(quick: bool) -> Result<()> {
    let sizes = if quick {
        Sizes {
            changes: 10,
            services: 100,
            endpoints: 1_000,
        }
    } else {
        Sizes {
            changes: 100,
            services: 1_000,
            endpoints: 10_000,
        }
    };
    // KNIT_BENCH_CHANGES, KNIT_BENCH_SERVICES, KNIT_BENCH_ENDPOINTS
    // override the sizes (to look at one part closely).
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let sizes = Sizes {
        changes: env("KNIT_BENCH_CHANGES", sizes.changes).max(1),
        services: env("KNIT_BENCH_SERVICES", sizes.services).max(1),
        endpoints: env("KNIT_BENCH_ENDPOINTS", sizes.endpoints).max(1),
    };
    let bin = knit::binary()?;
    let testbin = knit::testbin(&bin)?;
    println!("starting a fleet of 3 hosts (network namespaces) with etcd");
    let mut fleet = Fleet::start_full("prop", 3, "", bin.path.clone())?;
    // A failed run shows what the daemons said; a good one does not.
    for host in &mut fleet.hosts {
        host.show_log_on_drop(true);
    }
    let version = knit::version(&fleet.hosts[0], &bin)?;
    let (latencies, _healthy) = propagation(&mut fleet, &testbin, sizes.changes)?;
    let scale = scale(&mut fleet, &sizes)?;
    for host in &mut fleet.hosts {
        host.show_log_on_drop(false);
    }
    let outcome = Outcome {
        machine: Machine::probe(),
        date: report::now_utc(),
        quick,
        version,
        changes: latencies.len(),
        latency: stats::Latencies::of(&latencies).context("no change was measured")?,
        scale,
    };
    summary::publish(
        quick,
        "propagation",
        &outcome.machine,
        &outcome.date,
        &outcome.render(),
        outcome.entry(),
        || Ok(outcome.headline()),
    )?;
    Ok(())
}

/// Milliseconds from each task's first passing check on host 2 to its
/// endpoint in host 1's kernel map.
/// Also returns the directory of the checks' marks: the tasks stay healthy
/// while it lives.
fn propagation(
    fleet: &mut Fleet,
    testbin: &Path,
    changes: usize,
) -> Result<(Vec<f64>, tempfile::TempDir)> {
    let marks = tempfile::Builder::new()
        .prefix("knit-bench-prop")
        .tempdir()?;
    let m = marks.path().display();
    let check = format!(
        "test -e {m}/go-$KNIT_TASK_ID && {{ test -e {m}/t-$KNIT_TASK_ID || date +%s%N > {m}/t-$KNIT_TASK_ID; }}"
    );
    let td = format!(
        r#"{{"family": "probe", "containerDefinitions": [{{"name": "probe",
            "portMappings": [{{"name": "tcp"}}],
            "healthCheck": {{"command": ["CMD-SHELL", "{check}"], "interval": 5, "timeout": 2,
                            "retries": 1, "startPeriod": 300}}}}]}}"#
    );
    fleet.hosts[0].apply(&[
        ("probe-td.json", &td),
        ("probe-svc.json", &tcp_service("probe", "probe", 7300)),
    ])?;
    let map = backends_map(&fleet.hosts[0])?;
    let tb = testbin.display().to_string();
    let mut latencies = Vec::new();
    let batch = 10;
    let mut started = 0;
    while latencies.len() < changes {
        // A batch of tasks on host 2, listening but not yet healthy.
        let n = batch.min(changes - latencies.len());
        for i in 0..n {
            let id = format!("p{}", started + i);
            fleet.hosts[1].run(
                "probe",
                &[&tb, "echo", "--id", &id, "--port-env", "KNIT_PORT_TCP"],
            )?;
        }
        started += n;
        let waiting: Vec<(String, u32)> = wait_for(
            "host 1 to see the new tasks",
            Duration::from_secs(30),
            || {
                let eps = fleet.hosts[0].json(&["endpoints", "probe"]).ok()?;
                let rows = eps.as_array()?;
                (rows.len() == started).then(|| {
                    rows.iter()
                        .filter(|r| r["state"] == "starting")
                        .filter_map(|r| {
                            Some((
                                r["task"].as_str()?.to_string(),
                                r["backend_id"].as_u64()? as u32,
                            ))
                        })
                        .collect()
                })
            },
        )?;
        ensure!(
            waiting.len() == n,
            "expected {n} starting tasks, got {waiting:?}"
        );
        // Their ports are ready (the daemon probes every 100 ms).
        std::thread::sleep(Duration::from_millis(500));
        for (task, backend) in waiting {
            std::fs::write(marks.path().join(format!("go-{task}")), "")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let seen = loop {
                if backend_ids(&map).contains(&backend) {
                    break stats::unix_ns();
                }
                if Instant::now() > deadline {
                    bail!("task {task} (endpoint {backend}) never reached host 1's kernel map");
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            let passed: u128 = std::fs::read_to_string(marks.path().join(format!("t-{task}")))
                .with_context(|| format!("task {task}'s check wrote no time"))?
                .trim()
                .parse()
                .context("the check's time")?;
            let ms = seen.saturating_sub(passed) as f64 / 1e6;
            println!(
                "  change {:>3}: {task} healthy on host 2 -> host 1's map in {ms:.1} ms",
                latencies.len() + 1
            );
            latencies.push(ms);
        }
    }
    Ok((latencies, marks))
}

struct Scale {
    services: usize,
    endpoints: usize,
    apply_s: f64,
    live_sync_ms: f64,
    full_sync_ms: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    fresh_rss_kib: u64,
    /// Host 1's daemon, doing nothing but its monitor with every service
    /// and endpoint known: % of one core over `idle_window_s`.
    idle_cpu_pct: f64,
    idle_window_s: f64,
}

fn scale(fleet: &mut Fleet, sizes: &Sizes) -> Result<Scale> {
    let a = &fleet.hosts[0];
    let pid = a.daemon_pid().context("host 1's daemon")?;
    let rss_before_kib = knit::rss_kib(pid)?;
    println!("applying {} services", sizes.services);
    let t0 = Instant::now();
    let names: Vec<String> = (0..sizes.services).map(|i| format!("svc-{i}")).collect();
    knit::apply_tcp_services(a, &names)?;
    let apply_s = t0.elapsed().as_secs_f64();
    let map = backends_map(a)?;
    println!(
        "writing {} endpoints of a synthetic host into etcd",
        sizes.endpoints
    );
    let t0 = Instant::now();
    let url = fleet.etcd.url.clone();
    // etcd's address exists only inside the fleet's namespaces: the writes
    // come from a thread in there.
    fleet
        .etcd
        .in_netns(|| write_synthetic(&url, sizes.services, sizes.endpoints))??;
    let want = sizes.endpoints;
    wait_for(
        "host 1's map to hold every endpoint",
        Duration::from_secs(120),
        || (synthetic(&map) >= want).then_some(()),
    )?;
    let live_sync_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_after_kib = knit::rss_kib(pid)?;
    // What the daemon costs while nothing changes: its monitor ticks
    // (readiness, outliers, liveness) over every service and endpoint.
    let idle_window_s = if sizes.services >= 1_000 { 10.0 } else { 2.0 };
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu::tree_ticks(pid)?.context("host 1's daemon is gone")?;
    let t_idle = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(idle_window_s));
    let after = cpu::tree_ticks(pid)?.context("host 1's daemon is gone")?;
    let idle_cpu_pct =
        cpu::ticks_to_secs(after.saturating_sub(before)) / t_idle.elapsed().as_secs_f64() * 100.0;
    // Host 3 starts afresh: no datapath, everything from etcd.
    let c = &mut fleet.hosts[2];
    c.kill_daemon()?;
    std::fs::remove_dir_all(&c.pin_dir).ok();
    let t0 = Instant::now();
    c.start_daemon()?;
    let fresh = wait_for("host 3's map", Duration::from_secs(120), || {
        backends_map(c).ok()
    })?;
    wait_for(
        "host 3's map to hold every endpoint",
        Duration::from_secs(120),
        || (synthetic(&fresh) >= want).then_some(()),
    )?;
    let full_sync_ms = t0.elapsed().as_secs_f64() * 1e3;
    let fresh_rss_kib = knit::rss_kib(c.daemon_pid().context("host 3's daemon")?)?;
    Ok(Scale {
        services: sizes.services,
        endpoints: sizes.endpoints,
        apply_s,
        live_sync_ms,
        full_sync_ms,
        rss_before_kib,
        rss_after_kib,
        fresh_rss_kib,
        idle_cpu_pct,
        idle_window_s,
    })
}

/// Write `endpoints` records of a synthetic host, spread over `services`
/// services, 100 per transaction, under a lease (they go when it ends, or
/// with the fleet's etcd).
fn write_synthetic(url: &str, services: usize, endpoints: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut client = rt.block_on(etcd_client::Client::connect([url], None))?;
    let lease = rt.block_on(client.lease_grant(600, None))?.id();
    let per_service = endpoints / services;
    let mut ops = Vec::new();
    for k in 0..endpoints {
        let service = k / per_service;
        let id = format!("svc-{service}-synthetic-{k}");
        let backend_id = (SYNTHETIC_INDEX << 20) | (k as u32 + 1);
        let record = json!({
            "host": "synthetic",
            "address": format!("{}.{SYNTHETIC_HOST}", knit_tests::fleet::SUBNET),
            "task": {
                "id": id, "service": format!("svc-{service}"), "cgroup": "/nonexistent",
                "pid": 1, "started_unix_ms": 0,
                "ports": [{"name": "tcp", "port": 20000 + (k % 40000), "backend_id": backend_id,
                           "ready": true}],
            },
        });
        ops.push(etcd_client::TxnOp::put(
            format!("/knit/hosts/synthetic/tasks/{id}"),
            record.to_string(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        ));
        if ops.len() == 100 || k + 1 == endpoints {
            let txn = etcd_client::Txn::new().and_then(std::mem::take(&mut ops));
            rt.block_on(client.txn(txn))?;
        }
    }
    Ok(())
}

struct Outcome {
    machine: Machine,
    date: String,
    quick: bool,
    version: String,
    changes: usize,
    latency: stats::Latencies,
    scale: Scale,
}

impl Outcome {
    fn render(&self) -> String {
        let stats::Latencies { p50, p99, max } = self.latency;
        let s = &self.scale;
        let n = self.changes;
        let mut changes = Table::new(&[
            ("changes", Align::Right),
            ("p50", Align::Right),
            ("p99", Align::Right),
            ("max", Align::Right),
            ("goal p99 < 100 ms", Align::Left),
        ]);
        changes.row([
            n.to_string(),
            format!("{p50:.1} ms"),
            format!("{p99:.1} ms"),
            format!("{max:.1} ms"),
            (if p99 < 100.0 { "met" } else { "**not met**" }).to_string(),
        ]);
        let mut scale = Table::new(&[("measure", Align::Left), ("value", Align::Right)]);
        scale
            .row([
                "live sync: written -> all in host 1's kernel map".to_string(),
                format_ms(s.live_sync_ms),
            ])
            .row([
                "full sync: a fresh daemon (empty datapath) started -> all in its kernel map"
                    .to_string(),
                format_ms(s.full_sync_ms),
            ])
            .row([
                "host 1 daemon memory (RSS) before the services".to_string(),
                mib(s.rss_before_kib),
            ])
            .row([
                format!(
                    "host 1 daemon memory (RSS) with {} services, {} endpoints",
                    s.services, s.endpoints
                ),
                mib(s.rss_after_kib),
            ])
            .row([
                "fresh daemon memory (RSS) after its full sync".to_string(),
                mib(s.fresh_rss_kib),
            ])
            .row([
                format!(
                    "host 1 daemon CPU while nothing changes, {:.0} s (its monitor over {} services, {} endpoints)",
                    s.idle_window_s, s.services, s.endpoints
                ),
                format!("{:.2} % of one core", s.idle_cpu_pct),
            ]);
        format!(
            "## Propagation (etcd)\n\n\
             {date}, {machine}; knit {version}{quick}. `cargo xtask bench propagation`: a fleet of 3 hosts \
             (network namespaces on this machine, etcd 3.4 on host 1, lease 3 s).\n\n\
             **Change to kernel map.** A task on host 2 becomes healthy (its check's first pass writes \
             the time just before it exits); host 1's pinned `KNIT_BACKENDS` map is polled every 0.2 ms \
             until the endpoint is in it. {n} changes, one at a time.\n\n\
             {changes}\n\
             **Scale.** {services} services applied through `knit apply` ({per} per apply, one etcd \
             transaction each) in {apply:.1} s; then {endpoints} endpoints of a synthetic host written \
             into etcd (100 per transaction).\n\n\
             {scale}",
            date = self.date,
            machine = self.machine.short(),
            version = self.version,
            quick = if self.quick {
                " (--quick: fewer changes and endpoints)"
            } else {
                ""
            },
            services = s.services,
            endpoints = s.endpoints,
            per = knit::SERVICES_PER_APPLY,
            apply = s.apply_s,
        )
    }

    /// The summary's goal and the chart's panel.
    fn entry(&self) -> Entry {
        let stats::Latencies { p50, p99, max } = self.latency;
        let ms = |v: f64| format!("{v:.1} ms");
        Entry {
            date: self.date.clone(),
            quick: self.quick,
            goals: vec![Goal::new(
                "a task healthy on one host is in another host's kernel map: p99 < 100 ms",
                format!("p99 {} over {} changes", ms(p99), self.changes),
                if p99 < 100.0 { "met" } else { "not met" },
            )],
            panels: vec![Panel {
                title: "Change to another host's kernel map (lower is better)".into(),
                caption: format!(
                    "3 hosts (network namespaces) sharing etcd; {} changes one at a time; \
                     {} endpoints sync in {}.",
                    self.changes,
                    self.scale.endpoints,
                    format_ms(self.scale.live_sync_ms)
                ),
                bars: vec![
                    Bar::new("p50", p50, ms(p50), Kind::Knit),
                    Bar::new("p99", p99, ms(p99), Kind::Knit),
                    Bar::new("max", max, ms(max), Kind::Knit),
                ],
                reference: Some(Reference {
                    value: 100.0,
                    label: "goal p99 100 ms".into(),
                }),
            }],
        }
    }

    fn headline(&self) -> String {
        format!(
            "- `propagation`: a task healthy on one host is in another host's kernel map in p50 {:.1} ms, p99 {:.1} ms over {} changes (goal p99 < 100 ms); {} endpoints sync in {} ({} RSS). Measured {}. See [BENCHMARKS.md](BENCHMARKS.md#propagation-etcd).",
            self.latency.p50,
            self.latency.p99,
            self.changes,
            self.scale.endpoints,
            format_ms(self.scale.live_sync_ms),
            mib(self.scale.rss_after_kib),
            self.date,
        )
    }
}

fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
