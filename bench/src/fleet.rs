//! `cargo xtask bench fleet`: knit in a fleet of 100 hosts sharing one
//! etcd cluster of 3 members, with endpoints changing at a steady rate.
//!
//! Three hosts are real (network namespaces, the release `knit`, an etcd
//! member each); the other 97 are simulated by this process: each does
//! with etcd what a daemon does, with the same keys, leases and watches —
//! a client connection of its own, a lease kept alive, its tasks' records
//! (`<prefix>/hosts/<host>/tasks/<id>`, as a daemon writes them) under that
//! lease, and a watch on the whole prefix whose events it reads. Nothing
//! runs behind a simulated endpoint and no traffic goes to one. What etcd
//! serves (connections, leases, watchers, the events each change fans out
//! to 100 watchers) is what 100 daemons would ask of it; the real hosts
//! see every change as they would from real peers, so the time from a
//! change to their kernel maps carries over. What is not simulated: the
//! other hosts' kernels and traffic.
//!
//! 1. Setup: 1,000 services (and 20 probe services) applied through `knit
//!    apply`, 10,000 endpoints spread over the 97 simulated hosts, every
//!    real host's kernel map holding them all.
//! 2. Steady change: `rate` changes a second for the window. Each one
//!    removes or restores an endpoint of a probe service (deleting or
//!    putting its record, under its host's lease); the time from just
//!    before the etcd call to the moment every real host's kernel map
//!    (`KNIT_SERVICES` -> `KNIT_BACKENDS` slots, polled every 0.5 ms)
//!    shows it is the change's latency. Goal: p99 < 250 ms.
//! 3. Halfway, the etcd member host 1's daemon is connected to is killed
//!    with SIGKILL (the simulated hosts use the other two, so the failover
//!    measured is a real daemon's). Changes go on; the latencies before
//!    and after are reported apart.
//! 4. All along, a client task on host 1 sends HTTP requests through its
//!    proxy to a service whose task runs on host 2: none may fail.
//!
//! Reported besides: etcd's load (requests and watch events a second, the
//! database size, from the members' `/metrics`), each real daemon's CPU
//! and memory.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{HashMap, MapData};
use knit_tests::{Knit, fleet::Fleet};
use proxy_common::maps::{Backend, BackendKey, ServiceEntry, VipKey};
use serde_json::json;

use super::{
    cpu, knit,
    markdown::{Align, Table},
    report::{self, Machine},
    stats,
    summary::{self, Bar, Entry, Goal, Kind, Panel, Reference},
};

const REAL: usize = 3;
const PROBES: usize = 20;
/// Probe endpoints per probe service (each lives on another simulated host).
const PROBE_ENDPOINTS: usize = 2;
/// Simulated hosts' fleet indexes start here (above every real host's).
const SIM_INDEX: u32 = 1000;
const GOAL_P99_MS: f64 = 250.0;
/// A member's death: changes back under the goal within this.
const GOAL_RECOVERY_MS: f64 = 5_000.0;
/// The simulated hosts' lease, as a daemon's default (`lease_ttl_s`).
const LEASE_TTL_S: i64 = 10;

struct Sizes {
    hosts: usize,
    services: usize,
    endpoints: usize,
    rate: f64,
    window: Duration,
}

pub fn run(quick: bool) -> Result<()> {
    let sizes = if quick {
        Sizes {
            hosts: 10,
            services: 40,
            endpoints: 400,
            rate: 10.0,
            window: Duration::from_secs(20),
        }
    } else {
        Sizes {
            hosts: 100,
            services: 1_000,
            endpoints: 10_000,
            rate: 20.0,
            window: Duration::from_secs(60),
        }
    };
    let bin = knit::binary()?;
    let testbin = knit::testbin(&bin)?;
    println!(
        "starting 3 real hosts (network namespaces) with a 3-member etcd cluster, one member each"
    );
    let mut fleet = Fleet::start_cluster("fleet", REAL, "", bin.path.clone(), 3)?;
    for host in &mut fleet.hosts {
        host.show_log_on_drop(true);
    }
    let version = knit::version(&fleet.hosts[0], &bin)?;
    let outcome = measure(&mut fleet, &testbin, &sizes, quick, version)?;
    for host in &mut fleet.hosts {
        host.show_log_on_drop(false);
    }
    summary::publish(
        quick,
        "fleet",
        &outcome.machine,
        &outcome.date,
        &outcome.render(),
        outcome.entry(),
        || Ok(outcome.headline()),
    )
}

/// A probe service as the real hosts' kernels know it.
struct Probe {
    vip: VipKey,
}

fn measure(
    fleet: &mut Fleet,
    testbin: &std::path::Path,
    sizes: &Sizes,
    quick: bool,
    version: String,
) -> Result<Outcome> {
    let a = &fleet.hosts[0];
    println!(
        "applying {} services and {PROBES} probe services",
        sizes.services
    );
    let t0 = Instant::now();
    apply_services(a, sizes.services)?;
    let apply_s = t0.elapsed().as_secs_f64();
    // The traffic that must not fail: web on host 2, its client on host 1.
    a.apply(&[
        ("web-td.json", &knit_tests::http_task_definition("web")),
        ("web.json", &knit_tests::http_service("web", "web", 8080)),
        ("c-td.json", &knit_tests::client_service("client").0),
        ("c.json", &knit_tests::client_service("client").1),
    ])?;
    let tb = testbin.display().to_string();
    fleet.hosts[1].run(
        "web",
        &[&tb, "http", "--id", "w0", "--port-env", "KNIT_PORT_WEB"],
    )?;
    fleet.hosts[0].wait_healthy("web", 1)?;

    let probes = probes(&fleet.hosts[0])?;
    let maps: Vec<HostMaps> = fleet
        .hosts
        .iter()
        .map(HostMaps::open)
        .collect::<Result<_>>()?;
    let pids: Vec<u32> = fleet
        .hosts
        .iter()
        .map(|h| h.daemon_pid().context("a daemon"))
        .collect::<Result<_>>()?;
    let urls: Vec<String> = std::iter::once(fleet.etcd.url.clone())
        .chain(fleet.members.iter().map(|m| m.url.clone()))
        .collect();
    // The member host 1's daemon is connected to is the one killed: a real
    // daemon has to move.
    let status = fleet.hosts[0].json(&["status"])?;
    let registry = status["registry"].as_str().unwrap_or_default();
    let victim = urls
        .iter()
        .position(|u| registry.contains(&format!("connected to {u}")))
        .with_context(|| format!("which etcd member is host 1 on? {registry}"))?;
    let killed = std::iter::once(&fleet.etcd)
        .chain(&fleet.members)
        .nth(victim)
        .and_then(|m| m.pid())
        .context("the etcd member to kill")?;
    println!(
        "host 1's daemon uses etcd member {} ({}): it will be killed halfway",
        victim + 1,
        urls[victim]
    );

    let hosts_file = fleet.hosts[0].hosts.display().to_string();
    // The client starts with the window (its own runs are bounded to 120 s).
    let load_ms = (sizes.window.as_millis() as u64 + 3_000).to_string();
    let go = AtomicBool::new(false);
    let cancel = AtomicBool::new(false);
    let client_host = &fleet.hosts[0];
    let etcd = &fleet.etcd;
    let (sim, report) = std::thread::scope(|s| -> Result<(Sim, serde_json::Value)> {
        let loader = s.spawn(|| -> Result<serde_json::Value> {
            while !go.load(Ordering::SeqCst) {
                if cancel.load(Ordering::SeqCst) {
                    bail!("the simulation stopped before its window");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let load = client_host.spawn_task(
                "client",
                &[
                    &tb,
                    "http-client",
                    "--url",
                    "http://web:8080/",
                    "--hosts",
                    &hosts_file,
                    "--duration-ms",
                    &load_ms,
                    "--interval-ms",
                    "20",
                ],
                std::process::Stdio::piped(),
            )?;
            let out =
                knit_tests::wait_output(load, "the client on host 1", Duration::from_secs(130))?;
            serde_json::from_slice(&out.stdout).with_context(|| {
                format!(
                    "the client's report: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        });
        let sim = etcd.in_netns(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(simulate(
                &urls, victim, sizes, &probes, &maps, &pids, killed, &go,
            ))
        });
        cancel.store(true, Ordering::SeqCst);
        let report = loader
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
        Ok((sim??, report?))
    })?;
    let r = report;
    let (ok, failed) = (
        r["ok"].as_u64().unwrap_or(0),
        r["failed"].as_u64().unwrap_or(0),
    );
    ensure!(ok > 0, "the client made no request: {r}");
    Ok(Outcome {
        machine: Machine::probe(),
        date: report::now_utc(),
        quick,
        version,
        hosts: sizes.hosts,
        services: sizes.services,
        endpoints: sizes.endpoints,
        rate: sizes.rate,
        window_s: sizes.window.as_secs_f64(),
        apply_s,
        sim,
        requests_ok: ok,
        requests_failed: failed,
    })
}

fn apply_services(a: &Knit, services: usize) -> Result<()> {
    let names: Vec<String> = (0..services)
        .map(|i| format!("svc-{i}"))
        .chain((0..PROBES).map(|i| format!("probe-{i}")))
        .collect();
    knit::apply_tcp_services(a, &names)
}

/// The probe services' VIPs (the same on every host: VIPs are fleet-wide).
fn probes(a: &Knit) -> Result<Vec<Probe>> {
    let aliases = knit::Aliases::read(a)?;
    (0..PROBES)
        .map(|i| {
            let vip: Ipv4Addr = aliases.vip(&format!("probe-{i}"))?.parse()?;
            Ok(Probe {
                vip: VipKey {
                    ip: u32::from(vip).to_be(),
                    port: 9000u16.to_be(),
                    _pad: 0,
                },
            })
        })
        .collect()
}

/// A real host's pinned routing maps.
struct HostMaps {
    services: HashMap<MapData, VipKey, ServiceEntry>,
    backends: HashMap<MapData, BackendKey, Backend>,
}

impl HostMaps {
    fn open(k: &Knit) -> Result<Self> {
        Ok(Self {
            services: knit::pinned_map(k, "KNIT_SERVICES")?,
            backends: knit::pinned_map(k, "KNIT_BACKENDS")?,
        })
    }

    /// The backend ids in rotation for a VIP now.
    fn backend_ids(&self, vip: &VipKey) -> BTreeSet<u32> {
        let Ok(svc) = self.services.get(vip, 0) else {
            return BTreeSet::new();
        };
        (0..svc.backend_count)
            .filter_map(|slot| {
                self.backends
                    .get(
                        &BackendKey {
                            service_id: svc.service_id,
                            slot,
                        },
                        0,
                    )
                    .ok()
            })
            .map(|b| b.backend_id)
            .collect()
    }

    /// Every backend id of a simulated host in the map.
    fn simulated(&self) -> usize {
        self.backends
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, b)| b.backend_id >> 20 >= SIM_INDEX)
            .count()
    }
}

/// One simulated endpoint: its record's key and body, its backend id.
#[derive(Clone)]
struct SimEndpoint {
    host: usize,
    key: String,
    record: String,
    backend_id: u32,
}

fn endpoint(host: usize, service: &str, n: usize) -> SimEndpoint {
    let name = format!("sim{host}");
    let id = format!("{service}-{name}-{n}");
    let backend_id = ((SIM_INDEX + host as u32) << 20) | (n as u32 + 1);
    let record = json!({
        "host": name,
        "address": format!("{}.{}", knit_tests::fleet::SUBNET, 100 + host % 150),
        "task": {
            "id": id, "service": service, "cgroup": "/nonexistent",
            "pid": 1, "started_unix_ms": 0,
            "ports": [{"name": "tcp", "port": 20000 + (n % 40000), "backend_id": backend_id,
                       "ready": true}],
        },
    });
    SimEndpoint {
        host,
        key: format!("/knit/hosts/{name}/tasks/{id}"),
        record: record.to_string(),
        backend_id,
    }
}

/// What the simulation measured.
struct Sim {
    /// Change latencies (ms) before and after the member was killed.
    before: Vec<f64>,
    after: Vec<f64>,
    /// After the kill: (ms from the kill to the change's start, its
    /// latency in ms), in order.
    after_timeline: Vec<(f64, f64)>,
    /// Changes that did not reach every real host within 10 s.
    lost: usize,
    /// Simulated writes etcd did not take (in flight when a member died).
    failed_writes: usize,
    /// From setup's last write to every real host holding every endpoint.
    sync_ms: f64,
    etcd: EtcdLoad,
    /// Per real daemon: % of one core over the window, RSS at its end (KiB).
    daemons: Vec<(f64, u64)>,
    /// Watch events the simulated hosts read.
    sim_events: u64,
}

#[derive(Default, Clone, Copy)]
struct EtcdLoad {
    requests_per_s: f64,
    events_per_s: f64,
    db_bytes: f64,
}

#[expect(clippy::too_many_arguments, reason = "one call, every argument named")]
async fn simulate(
    urls: &[String],
    victim: usize,
    sizes: &Sizes,
    probes: &[Probe],
    maps: &[HostMaps],
    pids: &[u32],
    killed: u32,
    go: &AtomicBool,
) -> Result<Sim> {
    let sim_hosts = sizes.hosts - REAL;
    // Endpoints: the bulk ones round-robin over hosts and services, then
    // PROBE_ENDPOINTS per probe service, each on its own host.
    let mut by_host: Vec<Vec<SimEndpoint>> = vec![Vec::new(); sim_hosts];
    for k in 0..sizes.endpoints {
        let h = k % sim_hosts;
        let e = endpoint(h, &format!("svc-{}", k % sizes.services), k);
        by_host[h].push(e);
    }
    let mut probe_eps: Vec<Vec<SimEndpoint>> = Vec::new();
    for i in 0..PROBES {
        let eps: Vec<SimEndpoint> = (0..PROBE_ENDPOINTS)
            .map(|j| {
                let h = (i * PROBE_ENDPOINTS + j) % sim_hosts;
                endpoint(
                    h,
                    &format!("probe-{i}"),
                    sizes.endpoints + i * PROBE_ENDPOINTS + j,
                )
            })
            .collect();
        for e in &eps {
            by_host[e.host].push(e.clone());
        }
        probe_eps.push(eps);
    }
    println!("{sim_hosts} simulated hosts: a connection, a lease and a watch each");
    let events = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    // The simulated hosts use the members that stay up (in turn): the
    // failover measured is the real daemons'.
    let survivors: Vec<&String> = urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, u)| u)
        .collect();
    for (h, eps) in by_host.iter().enumerate() {
        let mut c = etcd_client::Client::connect([survivors[h % survivors.len()]], None).await?;
        let lease = c.lease_grant(LEASE_TTL_S, None).await?.id();
        // Keep-alive every 3 s, as a daemon does, until the run ends.
        let (mut keeper, mut acks) = c.lease_keep_alive(lease).await?;
        let stop_k = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop_k.load(Ordering::Relaxed) {
                if keeper.keep_alive().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), acks.message()).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }));
        // A watch on the whole prefix, read as a daemon reads it.
        let mut stream = c
            .watch(
                "/knit/",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await?;
        let (ev, stop_w) = (events.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop_w.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                    Ok(Ok(Some(resp))) => {
                        ev.fetch_add(resp.events().len() as u64, Ordering::Relaxed);
                    }
                    Ok(Ok(None) | Err(_)) => break,
                    Err(_) => {}
                }
            }
        }));
        for chunk in eps.chunks(100) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|e| {
                    etcd_client::TxnOp::put(
                        e.key.clone(),
                        e.record.clone(),
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops)).await?;
        }
        clients.push((c, lease));
        if (h + 1) % 20 == 0 {
            println!("  {} simulated hosts up", h + 1);
        }
    }
    let t0 = Instant::now();
    let want = sizes.endpoints + PROBES * PROBE_ENDPOINTS;
    for (i, m) in maps.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(180);
        while m.simulated() < want {
            if Instant::now() > deadline {
                bail!(
                    "host {} has {} of the {want} simulated endpoints after 180 s",
                    i + 1,
                    m.simulated()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let sync_ms = t0.elapsed().as_secs_f64() * 1e3;
    println!(
        "every real host holds the {want} simulated endpoints ({sync_ms:.0} ms after the last write)"
    );

    // The window: steady changes, one member killed halfway.
    let etcd_before = etcd_load_sample(urls).await;
    let cpu_before: Vec<u64> = pids
        .iter()
        .map(|p| cpu::tree_ticks(*p).ok().flatten().unwrap_or(0))
        .collect();
    let every = Duration::from_secs_f64(1.0 / sizes.rate);
    go.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let mut killed_at: Option<Instant> = None;
    let mut kill_ns: u128 = 0;
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut lost = 0;
    // Each probe endpoint: in rotation (true) or removed.
    let mut present = vec![vec![true; PROBE_ENDPOINTS]; PROBES];
    let mut pending: Vec<Change> = Vec::new();
    let mut n = 0usize;
    let mut failed_writes = 0usize;
    while start.elapsed() < sizes.window {
        if killed_at.is_none() && start.elapsed() >= sizes.window / 2 {
            println!("killing etcd member {} (SIGKILL)", victim + 1);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(killed)?),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            killed_at = Some(Instant::now());
            kill_ns = stats::unix_ns();
        }
        let p = n % PROBES;
        let j = (n / PROBES) % PROBE_ENDPOINTS;
        n += 1;
        let e = &probe_eps[p][j];
        let (c, lease) = &mut clients[e.host];
        let t = stats::unix_ns();
        let sent = Instant::now();
        // A write in flight when the leader dies waits for etcd's request
        // timeout (seconds): the change is given up after 2 s, the rate
        // goes on.
        let call = async {
            if present[p][j] {
                c.delete(e.key.clone(), None).await.map(drop)
            } else {
                c.put(
                    e.key.clone(),
                    e.record.clone(),
                    Some(etcd_client::PutOptions::new().with_lease(*lease)),
                )
                .await
                .map(drop)
            }
        };
        let res = match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(r) if sent.elapsed() > Duration::from_millis(100) => {
                // etcd itself was slow (a leader election): say so, the
                // rest of such a change's time is knit's.
                println!(
                    "  etcd took {:.0} ms to take a write",
                    sent.elapsed().as_secs_f64() * 1e3
                );
                r.map_err(|e| e.to_string())
            }
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer in 2 s".to_string()),
        };
        if let Err(err) = res {
            failed_writes += 1;
            println!("  a change failed at etcd ({err}); the next one goes on");
        } else {
            present[p][j] = !present[p][j];
            pending.push(Change {
                probe: p,
                backend_id: e.backend_id,
                present: present[p][j],
                at_ns: t,
                after_kill: killed_at.is_some(),
                seen: vec![false; maps.len()],
            });
        }
        // Poll every real host's maps until the next change is due.
        let next = sent + every;
        loop {
            settle(
                &mut pending,
                probes,
                maps,
                &mut before,
                &mut after,
                &mut lost,
            );
            if Instant::now() >= next {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    // The last changes land.
    let drain = Instant::now();
    while !pending.is_empty() && drain.elapsed() < Duration::from_secs(11) {
        settle(
            &mut pending,
            probes,
            maps,
            &mut before,
            &mut after,
            &mut lost,
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    lost += pending.len();
    let elapsed = start.elapsed().as_secs_f64();
    let etcd_after = etcd_load_sample(urls).await;
    let daemons = pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, b)| {
            let a = cpu::tree_ticks(*p).ok().flatten().unwrap_or(*b);
            (
                cpu::ticks_to_secs(a.saturating_sub(*b)) / elapsed * 100.0,
                knit::rss_kib(*p).unwrap_or(0),
            )
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    // The members alive all along served the window (the killed one's
    // share before it died is not counted).
    let mut etcd = EtcdLoad::default();
    for (b, a) in etcd_before.iter().zip(&etcd_after) {
        if let (Some(b), Some(a)) = (b, a) {
            etcd.requests_per_s += (a.0 - b.0) / elapsed;
            etcd.events_per_s += (a.1 - b.1) / elapsed;
            etcd.db_bytes = etcd.db_bytes.max(a.2);
        }
    }
    after.sort_by_key(|(at, _)| *at);
    let after_timeline: Vec<(f64, f64)> = after
        .iter()
        .map(|(at, ms)| (at.saturating_sub(kill_ns) as f64 / 1e6, *ms))
        .collect();
    Ok(Sim {
        before,
        after: after.iter().map(|(_, ms)| *ms).collect(),
        after_timeline,
        lost,
        failed_writes,
        sync_ms,
        etcd,
        daemons,
        sim_events: events.load(Ordering::Relaxed),
    })
}

struct Change {
    probe: usize,
    backend_id: u32,
    present: bool,
    at_ns: u128,
    after_kill: bool,
    seen: Vec<bool>,
}

/// Check the pending changes against every real host's maps; those seen
/// everywhere give their latency (to the last host that showed them).
fn settle(
    pending: &mut Vec<Change>,
    probes: &[Probe],
    maps: &[HostMaps],
    before: &mut Vec<f64>,
    after: &mut Vec<(u128, f64)>,
    lost: &mut usize,
) {
    let now = stats::unix_ns();
    pending.retain_mut(|c| {
        for (h, m) in maps.iter().enumerate() {
            if !c.seen[h] {
                let ids = m.backend_ids(&probes[c.probe].vip);
                c.seen[h] = ids.contains(&c.backend_id) == c.present;
            }
        }
        if c.seen.iter().all(|s| *s) {
            let ms = (now.saturating_sub(c.at_ns)) as f64 / 1e6;
            if c.after_kill {
                after.push((c.at_ns, ms));
            } else {
                before.push(ms);
            }
            return false;
        }
        if now.saturating_sub(c.at_ns) > 10_000_000_000 {
            *lost += 1;
            return false;
        }
        true
    });
}

/// Per member: (requests served, watch events sent, database size), from
/// its `/metrics` (None: it did not answer).
async fn etcd_load_sample(urls: &[String]) -> Vec<Option<(f64, f64, f64)>> {
    let mut all = Vec::new();
    for url in urls {
        let Some(text) = metrics(url).await else {
            all.push(None);
            continue;
        };
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter(|l| l[name.len()..].starts_with(['{', ' ']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        all.push(Some((
            sum("grpc_server_handled_total"),
            sum("etcd_debugging_mvcc_events_total"),
            sum("etcd_mvcc_db_total_size_in_bytes"),
        )));
    }
    all
}

/// GET `<url>/metrics` (an etcd client URL inside the fleet's namespace).
async fn metrics(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.strip_prefix("http://")?;
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

struct Outcome {
    machine: Machine,
    date: String,
    quick: bool,
    version: String,
    hosts: usize,
    services: usize,
    endpoints: usize,
    rate: f64,
    window_s: f64,
    apply_s: f64,
    sim: Sim,
    requests_ok: u64,
    requests_failed: u64,
}

impl Outcome {
    fn all(&self) -> Vec<f64> {
        self.sim
            .before
            .iter()
            .chain(&self.sim.after)
            .copied()
            .collect()
    }

    /// p99 of the steady part: before the member was killed.
    fn p99(&self) -> f64 {
        stats::Latencies::of(&self.sim.before).map_or(f64::INFINITY, |p| p.p99)
    }

    /// From the kill until the last change slower than the goal landed
    /// everywhere (0: none was).
    fn recovery_ms(&self) -> f64 {
        self.sim
            .after_timeline
            .iter()
            .filter(|(_, ms)| *ms > GOAL_P99_MS)
            .map(|(start, ms)| start + ms)
            .fold(0.0, f64::max)
    }

    /// Latencies of the changes made once recovered.
    fn recovered(&self) -> Vec<f64> {
        let r = self.recovery_ms();
        self.sim
            .after_timeline
            .iter()
            .filter(|(start, _)| *start > r)
            .map(|(_, ms)| *ms)
            .collect()
    }

    fn met(&self) -> bool {
        self.p99() < GOAL_P99_MS
            && self.recovery_ms() < GOAL_RECOVERY_MS
            && self.sim.lost == 0
            && self.requests_failed == 0
    }

    fn render(&self) -> String {
        let mut t = Table::new(&[
            ("changes", Align::Left),
            ("count", Align::Right),
            ("p50", Align::Right),
            ("p99", Align::Right),
            ("max", Align::Right),
        ]);
        for (label, v) in [
            ("before the member was killed", self.sim.before.clone()),
            ("after the kill (2 members left)", self.sim.after.clone()),
            ("after the kill, once recovered", self.recovered()),
            ("all", self.all()),
        ] {
            let p = stats::Latencies::of(&v);
            let ms = |f: fn(&stats::Latencies) -> f64| {
                p.as_ref().map_or("-".into(), |p| format!("{:.1} ms", f(p)))
            };
            t.row([
                label.to_string(),
                v.len().to_string(),
                ms(|p| p.p50),
                ms(|p| p.p99),
                ms(|p| p.max),
            ]);
        }
        let mut load = Table::new(&[("measure", Align::Left), ("value", Align::Right)]);
        let e = self.sim.etcd;
        load.row([
            "etcd requests served (the members alive all along)".to_string(),
            format!("{:.0} / s", e.requests_per_s),
        ])
        .row([
            "etcd watch events sent (the members alive all along)".to_string(),
            format!("{:.0} / s", e.events_per_s),
        ])
        .row([
            "etcd database size".to_string(),
            format!("{:.1} MiB", e.db_bytes / 1048576.0),
        ])
        .row([
            "watch events read by the simulated hosts".to_string(),
            self.sim.sim_events.to_string(),
        ])
        .row([
            "a member killed: from the kill to the last change over 250 ms landing everywhere"
                .to_string(),
            format!(
                "{:.0} ms (goal < {GOAL_RECOVERY_MS:.0} ms)",
                self.recovery_ms()
            ),
        ])
        .row([
            "setup: every real host holds every endpoint".to_string(),
            format!("{:.0} ms after the last write", self.sim.sync_ms),
        ]);
        for (i, (cpu, rss)) in self.sim.daemons.iter().enumerate() {
            load.row([
                format!("real host {} daemon: CPU over the window, memory", i + 1),
                format!("{cpu:.1} % of one core, {:.1} MiB", *rss as f64 / 1024.0),
            ]);
        }
        load.row([
            "HTTP requests host 1 -> host 2 during the window (ok / failed)".to_string(),
            format!("{} / {}", self.requests_ok, self.requests_failed),
        ])
        .row([
            "changes that never reached every real host (10 s)".to_string(),
            self.sim.lost.to_string(),
        ])
        .row([
            "simulated writes etcd did not take within 2 s (the member's death)".to_string(),
            self.sim.failed_writes.to_string(),
        ]);
        format!(
            "## Fleet (100 hosts, etcd cluster)\n\n\
             {date}, {machine}; knit {version}{quick}. `cargo xtask bench fleet`: {hosts} hosts \
             sharing a 3-member etcd cluster (etcd 3.4, a member on each real host): {real} real \
             (network namespaces on this machine, the release `knit`) and {sim} simulated by the \
             benchmark (each with its own etcd connection, a lease kept alive, its tasks' records \
             under it and a watch on the whole prefix, as a daemon: the load etcd sees and the \
             changes the real hosts see are those of {hosts} hosts). {services} services applied \
             in {apply:.1} s, {endpoints} endpoints on the simulated hosts. Then {rate:.0} changes \
             a second for {window:.0} s (an endpoint of a probe service removed or restored); a \
             change's latency is from just before its etcd call to every real host's kernel map \
             showing it (polled every 0.5 ms). Halfway, the etcd member host 1's daemon is \
             connected to is killed (SIGKILL); the simulated hosts use the other two. A client on host 1 sends HTTP requests to a task on host 2 all along. \
             Goals: p99 < {GOAL_P99_MS:.0} ms while the cluster is whole, changes back under \
             that within {recovery_goal:.0} s of a member's death, no change lost, no request \
             failed: **{verdict}**.\n\n\
             {t}\n{load}",
            date = self.date,
            machine = self.machine.short(),
            version = self.version,
            quick = if self.quick {
                " (--quick: 10 hosts, fewer services and endpoints, a shorter window)"
            } else {
                ""
            },
            hosts = self.hosts,
            real = REAL,
            sim = self.hosts - REAL,
            services = self.services,
            apply = self.apply_s,
            endpoints = self.endpoints,
            rate = self.rate,
            window = self.window_s,
            verdict = if self.met() { "met" } else { "not met" },
            recovery_goal = GOAL_RECOVERY_MS / 1000.0,
        )
    }

    fn entry(&self) -> Entry {
        let p = stats::Latencies::of(&self.sim.before);
        let ms = |v: f64| format!("{v:.1} ms");
        let mut bars = Vec::new();
        if let Some(p) = p {
            bars.push(Bar::new("p50", p.p50, ms(p.p50), Kind::Knit));
            bars.push(Bar::new("p99", p.p99, ms(p.p99), Kind::Knit));
            bars.push(Bar::new("max", p.max, ms(p.max), Kind::Knit));
        }
        Entry {
            date: self.date.clone(),
            quick: self.quick,
            goals: vec![Goal::new(
                "100 hosts, 1,000 services, 10,000 endpoints: a change in every real host's kernel map, p99 < 250 ms; an etcd member killed: back within 5 s, nothing lost or failed",
                format!(
                    "p99 {} over {} changes; back {:.1} s after the kill; {} lost, {} failed requests",
                    ms(self.p99()),
                    self.sim.before.len(),
                    self.recovery_ms() / 1000.0,
                    self.sim.lost,
                    self.requests_failed
                ),
                if self.met() { "met" } else { "not met" },
            )],
            panels: vec![Panel {
                title: "Fleet of 100: change to every real host's kernel map (lower is better)"
                    .into(),
                caption: format!(
                    "{} hosts ({} simulated), {} endpoints, {:.0} changes/s, the etcd cluster whole (a member killed later: back in {:.1} s).",
                    self.hosts,
                    self.hosts - REAL,
                    self.endpoints,
                    self.rate,
                    self.recovery_ms() / 1000.0
                ),
                bars,
                reference: Some(Reference {
                    value: GOAL_P99_MS,
                    label: "goal p99 250 ms".into(),
                }),
            }],
        }
    }

    /// What a member's death did to the changes, in words.
    fn after_kill(&self) -> String {
        match self.recovery_ms() {
            0.0 => "no change over 250 ms".to_string(),
            ms => format!("back under 250 ms {:.1} s later", ms / 1000.0),
        }
    }

    fn headline(&self) -> String {
        format!(
            "- `fleet`: {} hosts ({} simulated against the same etcd cluster), {} endpoints, {:.0} changes/s: a change is in every real host's kernel map in p99 {:.1} ms (goal < 250 ms); an etcd member killed: {}, {} changes lost, {} failed requests; etcd {:.0} requests/s. Measured {}. See [BENCHMARKS.md](BENCHMARKS.md#fleet-100-hosts-etcd-cluster).",
            self.hosts,
            self.hosts - REAL,
            self.endpoints,
            self.rate,
            self.p99(),
            self.after_kill(),
            self.sim.lost,
            self.requests_failed,
            self.sim.etcd.requests_per_s,
            self.date,
        )
    }
}
