//! `cargo xtask bench memory`: what knit's one daemon per host costs in
//! memory as services and tasks grow, against what one proxy per task (a
//! sidecar design, ECS Service Connect's) costs for the same tasks.
//!
//! knit: a release daemon, grown in steps to 10, 100 and 1,000 services
//! (TCP, one alias each) with real tasks: `knit run` starts each task, a
//! `knit-testbin echo` that listens on the task's port (so the daemon
//! registers it and it is in the kernel's maps); the benchmark waits for
//! every endpoint to be healthy. At each step the daemon's resident memory
//! (VmRSS, and PSS: shared pages divided among the processes that map
//! them) is read from /proc, the median of a few samples; so is that of the
//! `knit run` processes, which stay beside each task (knit's own per-task
//! cost, reported with the daemon's).
//!
//! Sidecars (see `sidecars`): N HAProxy and N nginx processes are started
//! for real, each a minimal proxy for one task (one listener, one upstream),
//! and each carries a few requests; their RSS and PSS are read the same
//! way, and the per-sidecar figure is multiplied by the task counts above
//! (a linear extrapolation, and the report says so).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use knit_tests::Knit;

use super::{
    knit, procs,
    report::{self, Machine},
    rounds, stats, summary,
};
use crate::util;

mod sidecars;
mod table;

/// Services per `knit apply`.
const SERVICES_PER_APPLY: usize = 20;
/// Tasks started before waiting for them to be healthy.
const TASK_BATCH: usize = 50;
/// Samples of a process's memory, 200 ms apart; the median is kept.
const SAMPLES: usize = 5;

/// One step: this many services, and tasks for each new one.
#[derive(Debug, Clone, Copy)]
struct Step {
    services: usize,
    tasks_per_service: usize,
}

/// Memory of one process (or an nginx master with its worker), in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident: every page it maps, shared or not.
    pub rss_kib: f64,
    /// Proportional: shared pages divided among the processes that map
    /// them (summed over a set of processes: the memory the set holds).
    pub pss_kib: f64,
    /// Unique: pages no other process maps (what one more costs).
    pub uss_kib: f64,
}

/// What one step measured.
pub struct Level {
    pub services: usize,
    pub tasks: usize,
    /// Endpoints in the daemon's view (`knit endpoints --json`), healthy.
    pub endpoints: usize,
    pub daemon: Mem,
    /// The `knit run` processes: median per process.
    pub supervisor: Mem,
    /// How long the step took to start its tasks and see them healthy.
    pub took: Duration,
}

pub struct Outcome {
    pub machine: Machine,
    pub date: String,
    pub quick: bool,
    pub version: String,
    /// Level 0: the idle daemon (no services).
    pub levels: Vec<Level>,
    pub sidecars: Vec<sidecars::Measured>,
    pub sidecar_confs: (String, String),
    pub elapsed: Duration,
}

pub fn run(quick: bool) -> Result<()> {
    let started = Instant::now();
    let (steps, sidecar_counts): (Vec<Step>, Vec<usize>) = if quick {
        (
            vec![
                Step {
                    services: 10,
                    tasks_per_service: 1,
                },
                Step {
                    services: 50,
                    tasks_per_service: 1,
                },
            ],
            vec![5, 10],
        )
    } else {
        (
            vec![
                Step {
                    services: 10,
                    tasks_per_service: 2,
                },
                Step {
                    services: 100,
                    tasks_per_service: 2,
                },
                Step {
                    services: 1000,
                    tasks_per_service: 1,
                },
            ],
            vec![10, 50],
        )
    };
    let bin = knit::binary()?;
    let testbin = knit::testbin(&bin)?;
    let started_measuring = Instant::now();
    util::step("memory: starting a knit daemon");
    let mut k = knit::start("bench-mem", "", &bin)?;
    let version = knit::version(&k, &bin)?;
    let pid = k.daemon_pid().context("the daemon's pid")?;
    std::thread::sleep(Duration::from_secs(1));
    let mut levels = vec![Level {
        services: 0,
        tasks: 0,
        endpoints: 0,
        daemon: sample(pid)?,
        supervisor: Mem::default(),
        took: Duration::ZERO,
    }];
    println!("  idle daemon: {}", describe(&levels[0].daemon));
    k.apply(&[(
        "mem-td.json",
        r#"{"family": "mem", "containerDefinitions": [{"name": "app", "image": "unused",
            "portMappings": [{"name": "tcp"}]}]}"#,
    )])?;
    let mut services = 0;
    let mut tasks = 0;
    for step in steps {
        util::step(&format!(
            "memory: {} services, {} task(s) for each new one",
            step.services, step.tasks_per_service
        ));
        let t0 = Instant::now();
        apply_services(&k, services, step.services)?;
        let new: Vec<usize> = (services..step.services)
            .flat_map(|i| std::iter::repeat_n(i, step.tasks_per_service))
            .collect();
        for batch in new.chunks(TASK_BATCH) {
            for &i in batch {
                start_task(&mut k, &testbin, i, tasks)?;
                tasks += 1;
            }
            wait_all_healthy(&k, tasks)?;
        }
        services = step.services;
        let took = t0.elapsed();
        // Let the daemon's caches and the allocator settle.
        std::thread::sleep(Duration::from_secs(2));
        let level = Level {
            services,
            tasks,
            endpoints: healthy(&k)?,
            daemon: sample(pid)?,
            supervisor: supervisors(&bin.path)?,
            took,
        };
        println!(
            "  {services} services, {tasks} tasks ({} healthy endpoints) in {:.1} s: daemon {}, \
             each `knit run` {}",
            level.endpoints,
            took.as_secs_f64(),
            describe(&level.daemon),
            describe(&level.supervisor)
        );
        levels.push(level);
    }
    ensure!(
        k.daemon_pid() == Some(pid),
        "the daemon restarted during the benchmark"
    );
    // Measured: the daemon's log is no longer of interest.
    k.show_log_on_drop(false);
    drop(k);

    util::step("memory: sidecars, one proxy per task");
    rounds::settle(if quick { 1 } else { 10 })?;
    let (measured, confs) = sidecars::measure(&testbin, &sidecar_counts)?;
    let o = Outcome {
        machine: Machine::probe(),
        date: report::now_utc(),
        quick,
        version,
        levels,
        sidecars: measured,
        sidecar_confs: confs,
        elapsed: started_measuring.elapsed(),
    };
    summary::publish(
        quick,
        "memory",
        &o.machine,
        &o.date,
        &table::render(&o)?,
        table::entry(&o)?,
        || table::headline(&o),
    )?;
    println!("{} s with the build", started.elapsed().as_secs());
    table::sane(&o)
}

fn describe(m: &Mem) -> String {
    format!(
        "RSS {:.1} MiB, PSS {:.1} MiB, USS {:.1} MiB",
        m.rss_kib / 1024.0,
        m.pss_kib / 1024.0,
        m.uss_kib / 1024.0
    )
}

/// Services `svc-<from>` to `svc-<to - 1>`, TCP, alias `svc-<i>:9000`.
fn apply_services(k: &Knit, from: usize, to: usize) -> Result<()> {
    let all: Vec<usize> = (from..to).collect();
    for chunk in all.chunks(SERVICES_PER_APPLY) {
        let docs: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    r#"{{"serviceName": "svc-{i}", "taskDefinition": "mem",
                        "serviceConnectConfiguration": {{"enabled": true,
                          "services": [{{"portName": "tcp", "discoveryName": "svc-{i}",
                                         "clientAliases": [{{"dnsName": "svc-{i}", "port": 9000}}]}}]}}}}"#
                )
            })
            .collect();
        k.apply(&[(
            &format!("mem-{}.json", chunk[0]),
            &format!("[{}]", docs.join(",")),
        )])?;
    }
    Ok(())
}

/// A task of `svc-<i>`: a TCP echo server on the task's port.
fn start_task(k: &mut Knit, testbin: &Path, i: usize, n: usize) -> Result<()> {
    let tb = testbin.display().to_string();
    k.run(
        &format!("svc-{i}"),
        &[
            &tb,
            "echo",
            "--id",
            &format!("t{n}"),
            "--port-env",
            "KNIT_PORT_TCP",
        ],
    )
}

/// Healthy endpoints across every service.
fn healthy(k: &Knit) -> Result<usize> {
    let v = k.json(&["endpoints"])?;
    Ok(v.as_array()
        .map(|a| a.iter().filter(|e| e["state"] == "healthy").count())
        .unwrap_or(0))
}

/// Wait up to 2 minutes for `n` healthy endpoints, asking every 250 ms
/// (each question is a `knit endpoints` of every endpoint: not too often).
fn wait_all_healthy(k: &Knit, n: usize) -> Result<()> {
    let start = Instant::now();
    loop {
        let now = healthy(k)?;
        if now >= n {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "{now} of {n} endpoints healthy after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A process's memory now: VmRSS from `status`; Pss and Private_Clean +
/// Private_Dirty (USS) from `smaps_rollup`.
pub fn mem_of(pid: u32) -> Result<Mem> {
    let read = |file: &str| -> Result<String> {
        let path = format!("/proc/{pid}/{file}");
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    };
    let kib = |text: &str, key: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}"))
    };
    let rollup = read("smaps_rollup")?;
    Ok(Mem {
        rss_kib: kib(&read("status")?, "VmRSS:")?,
        pss_kib: kib(&rollup, "Pss:")?,
        uss_kib: kib(&rollup, "Private_Clean:")? + kib(&rollup, "Private_Dirty:")?,
    })
}

/// The median of [`SAMPLES`] readings of `pid`'s memory.
fn sample(pid: u32) -> Result<Mem> {
    let mut v = Vec::new();
    for i in 0..SAMPLES {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        v.push(mem_of(pid)?);
    }
    medians(&v)
}

/// Each figure's median over `v`.
pub fn medians(v: &[Mem]) -> Result<Mem> {
    let of = |f: fn(&Mem) -> f64| {
        stats::median(&v.iter().map(f).collect::<Vec<_>>()).context("no samples")
    };
    Ok(Mem {
        rss_kib: of(|m| m.rss_kib)?,
        pss_kib: of(|m| m.pss_kib)?,
        uss_kib: of(|m| m.uss_kib)?,
    })
}

/// Children of this process running `<bin> run ...`: the tasks' `knit run`.
fn supervisor_pids(bin: &Path) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt;
    let me = std::process::id();
    let bin = bin.as_os_str().as_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            args.len() > 2
                && args[0] == bin
                && args[1] == b"run"
                && procs::ppid_of(*pid as i32) == Some(me as i32)
        })
        .collect()
}

/// The median memory of the `knit run` processes (up to 50 of them).
fn supervisors(bin: &Path) -> Result<Mem> {
    let pids = supervisor_pids(bin);
    ensure!(!pids.is_empty(), "found no `knit run` process");
    // One may exit between listing and reading: skip it.
    let v: Vec<Mem> = pids
        .into_iter()
        .take(50)
        .filter_map(|pid| mem_of(pid).ok())
        .collect();
    medians(&v)
}
