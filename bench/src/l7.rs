//! `cargo xtask bench l7`: knit's L7 proxy (the daemon, reached through an
//! L7 alias's VIP), with same-host acceleration (sk_msg) on and off,
//! against direct requests, HAProxy in `mode http`, nginx as a proxy and
//! Envoy (the proxy ECS Service Connect runs: one hop, and the two hops of
//! ECS's shape, a client sidecar then a server sidecar), over HTTP/1.1
//! (wrk) and h2c (h2load), in one run.
//!
//! One knit daemon; one nginx (one worker) runs as the task of service
//! `web`, with an HTTP/1.1 port behind alias `web:8080` (appProtocol `http`)
//! and an h2c port behind alias `web2:8080` (`http2`). The load generator
//! always runs as a task of the client-only service `bench`, so every
//! scenario pays the same cgroup hooks and only the destination differs.
//! Two loads per protocol: saturation (64 requests in flight: requests/s,
//! and latency under load) and one connection with serial requests (the
//! latency one hop adds). The daemon is pinned to the servers' CPU like
//! HAProxy and the nginx proxy. For sk_msg off the daemon restarts with
//! `[datapath] accelerate = false` (and again with `true` for on), so that
//! its pooled upstream connections are made anew on the chosen path. Each
//! run is checked: requests completed without errors; through knit the
//! alias's kernel counter saw the connections and the proxy counted the
//! requests (so the proxy served them, not the kernel's fail-open path);
//! sk_msg carried bytes in the sk_msg-on runs and none in any other;
//! elsewhere the counters did not move. The daemon's, HAProxy's and the
//! nginx proxy's CPU time per request come from /proc, nginx's (the
//! backend) from its service's cgroup. The `accel` benchmark reuses this
//! setup for its one-connection runs.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use super::{
    cpu::{CLIENT_CPU, SERVER_CPU, Usage},
    knit,
    report::{self, Machine},
    rounds::{self, Disturbance, Plan},
    stats, summary,
};

pub mod config;
mod goals;
pub mod setup;
pub mod table;

pub use goals::sane;

use setup::Bench;

/// The client alias port of `web` and `web2`.
pub const ALIAS_PORT: u16 = 8080;
/// Requests in flight at saturation: wrk's connections (HTTP/1.1), and
/// h2load's connections × streams per connection (h2c).
const H1_CONNS: u32 = 64;
const H2_CONNS: u32 = 8;
const H2_STREAMS: u32 = 8;
/// Without the proxy's request counts (a knit without metrics), a knit
/// run's daemon must have used at least this much CPU per request: a
/// proxied request costs it 10 µs or more; in a run that bypassed the proxy
/// it only does its fixed work (its monitor, registering the load
/// generator's task), which is about 1 µs per request in the shortest runs.
const MIN_PROXY_CPU_US: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2c,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::H1, Proto::H2c];

    pub fn label(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2c => "h2c",
        }
    }

    pub fn tool(self) -> &'static str {
        match self {
            Proto::H1 => "wrk",
            Proto::H2c => "h2load",
        }
    }

    /// The knit alias of this protocol.
    pub fn alias(self) -> &'static str {
        match self {
            Proto::H1 => "web",
            Proto::H2c => "web2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    /// Through the VIP and the daemon's proxy, sk_msg on (as shipped).
    Knit,
    /// The same with `[datapath] accelerate = false`.
    KnitPlain,
    Haproxy,
    Nginx,
    /// One Envoy in front of the backend (a server sidecar alone).
    Envoy,
    /// ECS Service Connect's path: the client task's Envoy, then the
    /// server task's Envoy, then the backend.
    EnvoyPair,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Direct,
        Scenario::Knit,
        Scenario::KnitPlain,
        Scenario::Haproxy,
        Scenario::Nginx,
        Scenario::Envoy,
        Scenario::EnvoyPair,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Knit => "knit VIP (L7 proxy, sk_msg on)",
            Scenario::KnitPlain => "knit VIP (L7 proxy, sk_msg off)",
            Scenario::Haproxy => "HAProxy http",
            Scenario::Nginx => "nginx proxy",
            Scenario::Envoy => "Envoy (one hop)",
            Scenario::EnvoyPair => "Envoy × 2 (ECS: client + server sidecar)",
        }
    }

    /// Through the VIP and the daemon's proxy (either knit scenario).
    pub fn via_knit(self) -> bool {
        matches!(self, Scenario::Knit | Scenario::KnitPlain)
    }
}

/// Saturation (many requests in flight) or one connection, serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Saturate,
    Serial,
}

impl Load {
    pub const ALL: [Load; 2] = [Load::Saturate, Load::Serial];

    pub fn label(self) -> &'static str {
        match self {
            Load::Saturate => "64 in flight",
            Load::Serial => "1 conn serial",
        }
    }

    /// (connections, streams per connection; 1 for HTTP/1.1).
    pub fn shape(self, p: Proto) -> (u32, u32) {
        match (self, p) {
            (Load::Saturate, Proto::H1) => (H1_CONNS, 1),
            (Load::Saturate, Proto::H2c) => (H2_CONNS, H2_STREAMS),
            (Load::Serial, _) => (1, 1),
        }
    }
}

/// One cell of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub proto: Proto,
    pub load: Load,
    pub scenario: Scenario,
}

impl Cell {
    /// Protocol by protocol, load by load, scenarios interleaved.
    pub fn all() -> Vec<Cell> {
        Self::grid(&Load::ALL, &Scenario::ALL)
    }

    /// As [`Cell::all`] over some loads and scenarios. The two knit
    /// scenarios swap places from one block (protocol and load) to the
    /// next: switching sk_msg restarts the daemon, and this way it happens
    /// once per block rather than twice.
    pub fn grid(loads: &[Load], scenarios: &[Scenario]) -> Vec<Cell> {
        let mut v = Vec::new();
        let mut block = 0;
        for proto in Proto::ALL {
            for &load in loads {
                let mut order = scenarios.to_vec();
                let on = order.iter().position(|&s| s == Scenario::Knit);
                let off = order.iter().position(|&s| s == Scenario::KnitPlain);
                if let (Some(a), Some(b)) = (on, off)
                    && block % 2 == 1
                {
                    order.swap(a, b);
                }
                v.extend(order.into_iter().map(|scenario| Cell {
                    proto,
                    load,
                    scenario,
                }));
                block += 1;
            }
        }
        v
    }
}

/// How long: the shared plan (its `secs` for saturation runs) and the
/// serial runs' length.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub plan: Plan,
    pub serial_secs: u32,
}

impl Timing {
    pub fn secs(&self, load: Load) -> u32 {
        match load {
            Load::Saturate => self.plan.secs,
            Load::Serial => self.serial_secs,
        }
    }
}

/// What one run measured, whichever tool ran it.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub errors: u64,
    pub error_text: String,
}

/// One measured run and what was seen around it.
pub struct Sample {
    pub m: Measured,
    /// New connections the kernel counted on alias `web` and `web2`.
    pub vip_new: [u64; 2],
    /// Requests the proxy counted for `web` and `web2` (None: this knit
    /// has no metrics).
    pub proxied: Option<[u64; 2]>,
    /// CPU seconds the scenario's proxy used (knit daemon, HAProxy, nginx
    /// proxy; none for direct).
    pub proxy_cpu_secs: Option<f64>,
    /// CPU seconds the knit daemon used (every scenario: it must be idle
    /// but for its monitor when it is not in the path).
    pub daemon_cpu_secs: f64,
    /// CPU seconds of the backend (every process in service `web`'s
    /// cgroup: nginx's master and worker).
    pub backend_cpu_secs: f64,
    /// Bytes sk_msg handed socket to socket.
    pub redirected: u64,
    /// Sockets of the sockhash that kept TCP/IP (their first send raced
    /// the peer's handshake).
    pub fallbacks: u64,
    pub others: Usage,
    /// `perf stat` on the proxy, in a profile run.
    pub perf: Option<crate::perf::Counts>,
}

impl Disturbance for Sample {
    fn others(&self) -> &Usage {
        &self.others
    }
}

impl Sample {
    /// The proxy's CPU time per request, in µs.
    pub fn proxy_us_per_request(&self) -> Option<f64> {
        let secs = self.proxy_cpu_secs?;
        (self.m.requests > 0).then(|| secs * 1e6 / self.m.requests as f64)
    }

    /// The servers' CPU time per request, in µs: the daemon (the proxy in
    /// the knit scenarios, its idle monitor in the others), the backend,
    /// and HAProxy or the nginx proxy where they are the proxy.
    pub fn servers_us_per_request(&self, s: Scenario) -> Option<f64> {
        let proxy = match s {
            Scenario::Direct | Scenario::Knit | Scenario::KnitPlain => 0.0,
            _ => self.proxy_cpu_secs?,
        };
        let secs = self.daemon_cpu_secs + self.backend_cpu_secs + proxy;
        (self.m.requests > 0).then(|| secs * 1e6 / self.m.requests as f64)
    }
}

/// Everything the table needs.
pub struct Outcome {
    pub machine: Machine,
    pub h2load: String,
    pub date: String,
    pub quick: bool,
    pub timing: Timing,
    pub runs: Vec<rounds::Kept<Cell, Sample>>,
    pub runs_repeated: usize,
    /// One run per path at saturation with `perf stat` on its proxy.
    pub profiles: Vec<(Cell, Sample)>,
    pub disturbed_used: usize,
    pub knit_version: String,
    pub pinning: String,
    pub commands: Vec<String>,
    pub backend_conf: String,
    pub proxy_conf: String,
    pub haproxy_cfg: String,
    /// The server sidecar's and the client sidecar's envoy.yaml.
    pub envoy_yaml: [String; 2],
    pub envoy: String,
    pub sanity: Vec<String>,
    /// Daemon restarts to switch sk_msg, their longest, and sk_msg-on runs
    /// measured again because every socket kept TCP/IP.
    pub restarts: (usize, Duration, usize),
    pub elapsed: Duration,
}

pub fn run(quick: bool) -> Result<()> {
    let started = Instant::now();
    let timing = if quick {
        Timing {
            plan: Plan {
                secs: 1,
                warmup_secs: 0,
                rounds: 1,
            },
            serial_secs: 1,
        }
    } else {
        Timing {
            plan: Plan {
                secs: 7,
                warmup_secs: 2,
                rounds: 3,
            },
            serial_secs: 3,
        }
    };
    preflight()?;
    let bin = knit::binary()?;
    // The build is not the benchmark's time.
    let started_measuring = Instant::now();

    crate::util::step(
        "l7: starting a knit daemon, nginx (service web), HAProxy, an nginx proxy and two Envoys",
    );
    let mut bench = Bench::start(&bin)?;
    println!("{}", bench.describe());

    // Quick runs check every run as they go (and `sane` at the end).
    let mut sanity = Vec::new();
    let sanity_cells = if quick {
        Vec::new()
    } else {
        Cell::grid(&[Load::Saturate], &Scenario::ALL)
    };
    if !quick {
        crate::util::step("l7: sanity: one short run through each path");
    }
    for cell in sanity_cells {
        let Cell {
            proto, scenario, ..
        } = cell;
        let s = bench.measure(cell, 1, (2, 2))?;
        ensure!(
            s.m.errors == 0,
            "sanity run {} {} had errors: {}",
            proto.label(),
            scenario.label(),
            s.m.error_text
        );
        let line = format!(
            "{} {}: {} requests{}",
            proto.label(),
            scenario.label(),
            s.m.requests,
            match (scenario.via_knit(), s.proxy_us_per_request()) {
                (true, Some(us)) => format!(
                    ", {} new connections on alias {}, {} requests counted by the proxy, \
                     daemon CPU {us:.0} µs per request, {} bytes through sk_msg",
                    s.vip_new[proto as usize],
                    proto.alias(),
                    s.proxied
                        .map_or("no".into(), |p| p[proto as usize].to_string()),
                    s.redirected,
                ),
                _ => String::new(),
            }
        );
        println!("  ok  {line}");
        sanity.push(line);
    }

    crate::util::step("l7: waiting for other processes to leave the CPUs alone");
    rounds::settle(if quick { 3 } else { 60 })?;

    let cells = Cell::all();
    if timing.plan.warmup_secs > 0 {
        crate::util::step(&format!(
            "l7: warm-up, {} s per saturation cell (discarded)",
            timing.plan.warmup_secs
        ));
        for &c in cells.iter().filter(|c| c.load == Load::Saturate) {
            let s = bench.measure(c, timing.plan.warmup_secs, c.load.shape(c.proto))?;
            progress("warm-up", c, &s);
        }
    }

    crate::util::step(&format!(
        "l7: {} rounds ({} s per saturation run, {} s per serial run), scenarios interleaved",
        timing.plan.rounds, timing.plan.secs, timing.serial_secs
    ));
    let planned: u64 = cells
        .iter()
        .map(|c| u64::from(timing.secs(c.load)))
        .sum::<u64>()
        * timing.plan.rounds as u64;
    // Repeats of disturbed runs may add this much; then they are kept.
    // Quick runs keep disturbed runs: they only prove the benchmark works.
    let (budget, settle_secs) = if quick { (0, 1) } else { (planned + 120, 30) };
    let measured = rounds::measure(
        &cells,
        timing.plan.rounds,
        budget,
        settle_secs,
        |c| bench.measure(c, timing.secs(c.load), c.load.shape(c.proto)),
        progress,
    )?;

    crate::util::step(&format!(
        "l7: profiles: one {} s run per path at saturation with perf stat on its proxy",
        timing.plan.secs
    ));
    let mut profiles = Vec::new();
    for c in Cell::grid(&[Load::Saturate], &Scenario::ALL)
        .into_iter()
        .filter(|c| c.scenario != Scenario::Direct)
    {
        let s = bench.profile(c, timing.plan.secs)?;
        progress("profile", c, &s);
        profiles.push((c, s));
    }

    let outcome = Outcome {
        machine: Machine::probe(),
        h2load: h2load_version(),
        date: report::now_utc(),
        quick,
        timing,
        runs: measured.runs,
        runs_repeated: measured.repeated,
        profiles,
        disturbed_used: measured.disturbed_used,
        knit_version: knit::version(&bench.k, &bin)?,
        pinning: bench.pinning.clone(),
        commands: bench.commands(&timing),
        backend_conf: bench.backend_conf.replace(&bench.dir_text(), "$DIR/nginx"),
        proxy_conf: bench
            .proxy_conf
            .replace(&bench.proxy_dir_text(), "$DIR/nginx-proxy"),
        haproxy_cfg: bench.haproxy_cfg.clone(),
        envoy_yaml: bench.envoy_yaml.clone(),
        envoy: bench.envoy_version.clone(),
        sanity,
        restarts: bench.restarts(),
        elapsed: started_measuring.elapsed(),
    };
    // Measured: the daemon's log is no longer of interest.
    bench.k.show_log_on_drop(false);
    drop(bench);
    summary::publish(
        quick,
        "l7",
        &outcome.machine,
        &outcome.date,
        &table::render(&outcome)?,
        goals::entry(&outcome)?,
        || goals::headline(&outcome),
    )?;
    println!(
        "measuring took {} s; with the build {} s",
        outcome.elapsed.as_secs(),
        started.elapsed().as_secs()
    );
    goals::sane(&outcome.runs)
}

/// What the L7 setup needs of the machine: 2 CPUs, h2load.
pub fn preflight() -> Result<()> {
    ensure!(
        std::thread::available_parallelism().map_or(1, usize::from) >= 2,
        "the L7 benchmarks pin the load generator to CPU {CLIENT_CPU} and the servers to CPU \
         {SERVER_CPU}; they need 2 CPUs"
    );
    ensure!(
        which("h2load"),
        "h2load is missing\n  fix: apt-get install nghttp2-client"
    );
    crate::perf::preflight()
}

pub fn progress(what: &str, c: Cell, s: &Sample) {
    println!(
        "  [{what}] {:<8} {:<13} {:<40} {:>9} req/s  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  proxy {:>6}  others {:>3.0}%  errors: {}",
        c.proto.label(),
        c.load.label(),
        c.scenario.label(),
        stats::rate(s.m.rps),
        stats::micros(s.m.p50_us),
        stats::micros(s.m.p99_us),
        stats::micros(s.m.p999_us),
        s.proxy_us_per_request()
            .map_or("-".into(), |us| format!("{us:.1}µs")),
        s.others.cpus * 100.0,
        s.m.error_text
    );
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d: PathBuf| d.join(tool).is_file()))
}

/// "h2load nghttp2/1.52.0".
pub fn h2load_version() -> String {
    super::procs::banner(std::process::Command::new("h2load").arg("--version"))
        .lines()
        .next()
        .unwrap_or("h2load")
        .trim()
        .to_string()
}
