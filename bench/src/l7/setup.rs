//! The running L7 benchmark: a knit daemon (pinned to the servers' CPU)
//! with nginx as the task of `web`; HAProxy, an nginx proxy and an Envoy
//! (the server sidecar) in front of that nginx, and a second Envoy (the
//! client sidecar) in front of the first; one measured load-generator run
//! as a task of `bench`.
//! The daemon restarts when a knit run wants sk_msg switched.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use knit_tests::{Knit, client_service};

use super::{
    ALIAS_PORT, Cell, MIN_PROXY_CPU_US, Measured, Proto, Sample, Scenario, Timing,
    config::{backend_conf, envoy_yaml, haproxy_cfg, proxy_conf, web_service, web_task_definition},
};
use crate::{
    cpu::{self, CLIENT_CPU, SERVER_CPU},
    h2load, knit, peers,
    procs::{self, Guard},
    report::shell_words,
    util, wrk,
};

/// Ports of one HTTP/1.1 and one h2c listener.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub h1: u16,
    pub h2: u16,
}

impl Ports {
    fn of(&self, p: Proto) -> u16 {
        match p {
            Proto::H1 => self.h1,
            Proto::H2c => self.h2,
        }
    }
}

/// The running setup. Fields drop in order: the proxies first, then the
/// daemon with its tasks (nginx) and cgroups.
pub struct Bench {
    envoy_client: Guard,
    envoy_server: Guard,
    nginx_proxy: Guard,
    haproxy: Guard,
    pub k: Knit,
    daemon_pid: u32,
    pub backend: Ports,
    pub haproxy_ports: Ports,
    pub proxy_ports: Ports,
    /// The server sidecar's (one Envoy hop) and the client sidecar's.
    pub envoy_ports: [Ports; 2],
    /// VIPs of `web` and `web2`.
    pub vips: [String; 2],
    pub backend_conf: String,
    pub proxy_conf: String,
    pub haproxy_cfg: String,
    /// The server sidecar's and the client sidecar's envoy.yaml.
    pub envoy_yaml: [String; 2],
    /// "envoy 1.40.0/Clean/RELEASE/BoringSSL".
    pub envoy_version: String,
    /// What was pinned where, for the report.
    pub pinning: String,
    /// The daemon's admin address (its `/metrics` count the proxy's
    /// requests); None for a knit without one (then the check falls back
    /// to the daemon's CPU time).
    admin: Option<String>,
    /// The daemon's sk_msg setting now.
    accel_on: bool,
    /// Restarts to switch it, and the longest.
    restarts: usize,
    longest_restart: Duration,
    /// sk_msg-on runs measured again (see `measure`).
    fallback_repeats: usize,
    /// wrk's p99.9 script.
    script: PathBuf,
}

impl Bench {
    pub fn start(bin: &knit::Binary) -> Result<Self> {
        // One data-plane thread, as HAProxy has one (`nbthread 1`), nginx
        // one worker and Envoy one (`--concurrency 1`).
        let mut k = knit::start("bench-l7", "[proxy]\nthreads = 1\n", bin)?;
        let mut ports = Vec::new();
        while ports.len() < 10 {
            let p = procs::free_port()?;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let backend = Ports {
            h1: ports[0],
            h2: ports[1],
        };
        let haproxy_ports = Ports {
            h1: ports[2],
            h2: ports[3],
        };
        let proxy_ports = Ports {
            h1: ports[4],
            h2: ports[5],
        };
        let envoy_ports = [
            Ports {
                h1: ports[6],
                h2: ports[7],
            },
            Ports {
                h1: ports[8],
                h2: ports[9],
            },
        ];
        let (bench_td, bench_svc) = client_service("bench");
        k.apply(&[
            ("web-td.json", &web_task_definition(backend.h1, backend.h2)),
            ("web-svc.json", &web_service()),
            ("bench-td.json", &bench_td),
            ("bench-svc.json", &bench_svc),
        ])?;

        // The backend, a knit task.
        let dir = k.dir.path().join("nginx");
        let backend_conf = backend_conf(&dir, backend.h1, backend.h2);
        peers::run_nginx_task(&mut k, "web", &dir, &backend_conf, 2)?;

        // The proxies run outside knit, as they would in front of any
        // backend, pinned beside it.
        let haproxy_cfg = haproxy_cfg(haproxy_ports.h1, haproxy_ports.h2, backend.h1, backend.h2);
        let haproxy = peers::start_haproxy(
            k.dir.path(),
            &haproxy_cfg,
            &[haproxy_ports.h1, haproxy_ports.h2],
        )?;
        let pdir = k.dir.path().join("nginx-proxy");
        let proxy_conf = proxy_conf(&pdir, proxy_ports.h1, proxy_ports.h2, backend.h1);
        let nginx_proxy = peers::start_nginx(
            "nginx proxy",
            &pdir,
            &proxy_conf,
            &[proxy_ports.h1, proxy_ports.h2],
        )?;

        let envoy = peers::envoy_binary()?;
        let envoy_version = envoy_version(&envoy);
        let [es, ec] = envoy_ports;
        let envoy_yaml = [envoy_yaml(es, backend), envoy_yaml(ec, es)];
        let envoy_server = peers::start_envoy(
            "Envoy (server sidecar)",
            &envoy,
            &k.dir.path().join("envoy-server"),
            &envoy_yaml[0],
            &[es.h1, es.h2],
        )?;
        let envoy_client = peers::start_envoy(
            "Envoy (client sidecar)",
            &envoy,
            &k.dir.path().join("envoy-client"),
            &envoy_yaml[1],
            &[ec.h1, ec.h2],
        )?;

        let (daemon_pid, threads) = pin_daemon(&k)?;
        let pinning = format!(
            "load generator `taskset -c {CLIENT_CPU}`; nginx (backend), HAProxy, the nginx \
             proxy and both Envoys `taskset -c {SERVER_CPU}` at start; the knit daemon \
             `taskset -a -p -c {SERVER_CPU} <pid>` right after it started (all its {threads} \
             threads)"
        );

        let aliases = knit::Aliases::read(&k)?;
        let vips = [aliases.vip("web")?, aliases.vip("web2")?];
        let admin = k.json(&["status"])?["admin"].as_str().map(str::to_string);
        let accel_on = knit::accel(&k)?.enabled;
        let script = wrk::write_script(k.dir.path())?;
        // The L7 aliases must have their endpoint, and be L7.
        let eps = k.json(&["endpoints", "web"])?;
        ensure!(
            eps.as_array().is_some_and(|a| !a.is_empty()),
            "`knit endpoints web --json` lists no endpoint: {eps}"
        );
        Ok(Self {
            envoy_client,
            envoy_server,
            nginx_proxy,
            haproxy,
            k,
            daemon_pid,
            backend,
            haproxy_ports,
            proxy_ports,
            envoy_ports,
            vips,
            backend_conf,
            proxy_conf,
            haproxy_cfg,
            envoy_yaml,
            envoy_version,
            pinning,
            admin,
            accel_on,
            restarts: 0,
            longest_restart: Duration::ZERO,
            fallback_repeats: 0,
            script,
        })
    }

    /// sk_msg on or off for what the daemon connects from now on: a
    /// restart when it must change (see `knit::restart_accelerate`), then
    /// the daemon pinned again and its new pid and admin address read.
    fn accelerate(&mut self, on: bool) -> Result<()> {
        if self.accel_on == on {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        knit::restart_accelerate(&mut self.k, on)?;
        self.k
            .wait_healthy("web", 2)
            .context("nginx's endpoints after the daemon's restart")?;
        let took = t0.elapsed();
        (self.daemon_pid, _) = pin_daemon(&self.k)?;
        self.admin = self.k.json(&["status"])?["admin"]
            .as_str()
            .map(str::to_string);
        self.accel_on = on;
        self.restarts += 1;
        self.longest_restart = self.longest_restart.max(took);
        println!(
            "  (daemon restarted with sk_msg {} in {} ms)",
            if on { "on" } else { "off" },
            took.as_millis()
        );
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!(
            "nginx on 127.0.0.1:{} (HTTP/1.1) and :{} (h2c); VIPs {}:{ALIAS_PORT} (web) and \
             {}:{ALIAS_PORT} (web2); HAProxy on :{} and :{}; nginx proxy on :{} and :{}; \
             Envoy on :{} and :{} (server sidecar) and :{} and :{} (client sidecar)",
            self.backend.h1,
            self.backend.h2,
            self.vips[0],
            self.vips[1],
            self.haproxy_ports.h1,
            self.haproxy_ports.h2,
            self.proxy_ports.h1,
            self.proxy_ports.h2,
            self.envoy_ports[0].h1,
            self.envoy_ports[0].h2,
            self.envoy_ports[1].h1,
            self.envoy_ports[1].h2,
        )
    }

    fn url(&self, c: Cell) -> String {
        let host = match c.scenario {
            Scenario::Direct => format!("127.0.0.1:{}", self.backend.of(c.proto)),
            Scenario::Knit | Scenario::KnitPlain => {
                format!("{}:{ALIAS_PORT}", self.vips[c.proto as usize])
            }
            Scenario::Haproxy => format!("127.0.0.1:{}", self.haproxy_ports.of(c.proto)),
            Scenario::Nginx => format!("127.0.0.1:{}", self.proxy_ports.of(c.proto)),
            Scenario::Envoy => format!("127.0.0.1:{}", self.envoy_ports[0].of(c.proto)),
            Scenario::EnvoyPair => format!("127.0.0.1:{}", self.envoy_ports[1].of(c.proto)),
        };
        format!("http://{host}/")
    }

    /// The load generator's command line. HTTP/1.1 has no streams:
    /// wrk opens connections × streams connections.
    fn load_args(
        &self,
        c: Cell,
        secs: u32,
        (conns, streams): (u32, u32),
        log: &Path,
    ) -> Vec<String> {
        match c.proto {
            Proto::H1 => wrk::Load {
                url: self.url(c),
                connections: conns * streams,
                secs,
                close: false,
                script: Some(self.script.clone()),
            }
            .args(),
            Proto::H2c => h2load::Load {
                url: self.url(c),
                connections: conns,
                streams,
                secs,
                log: log.to_path_buf(),
            }
            .args(),
        }
    }

    /// The scenario's proxy processes (both Envoys for ECS's shape; none
    /// for direct).
    fn proxy_pids(&self, s: Scenario) -> Vec<u32> {
        match s {
            Scenario::Direct => vec![],
            Scenario::Knit | Scenario::KnitPlain => vec![self.daemon_pid],
            Scenario::Haproxy => vec![self.haproxy.pid()],
            Scenario::Nginx => vec![self.nginx_proxy.pid()],
            Scenario::Envoy => vec![self.envoy_server.pid()],
            Scenario::EnvoyPair => vec![self.envoy_client.pid(), self.envoy_server.pid()],
        }
    }

    /// CPU ticks of the scenario's proxy, if it has one.
    fn proxy_ticks(&self, s: Scenario) -> Result<Option<u64>> {
        let pids = self.proxy_pids(s);
        if pids.is_empty() {
            return Ok(None);
        }
        let mut ticks = 0;
        for pid in pids {
            ticks += cpu::tree_ticks(pid)?
                .with_context(|| format!("the {} process ({pid}) is gone", s.label()))?;
        }
        Ok(Some(ticks))
    }

    fn daemon_ticks(&self) -> Result<u64> {
        cpu::tree_ticks(self.daemon_pid)?.context("the knit daemon is gone")
    }

    fn backend_cpu(&self) -> Result<f64> {
        cpu::cgroup_secs(&self.k.cgroup.join("web"))
    }

    /// `knit run --service bench -- taskset -c 0 wrk|h2load ...` plus its
    /// checks.
    /// A run with `perf stat` on the scenario's proxy (every thread of
    /// every process of it): not one of the measured rounds (perf adds its
    /// own cost), the profile beside them.
    pub fn profile(&mut self, c: Cell, secs: u32) -> Result<Sample> {
        ensure!(
            c.scenario != Scenario::Direct,
            "direct runs have no proxy to profile"
        );
        if c.scenario.via_knit() {
            self.accelerate(c.scenario == Scenario::Knit)?;
        }
        self.measure_once(c, secs, c.load.shape(c.proto), true)
    }

    pub fn measure(&mut self, c: Cell, secs: u32, shape: (u32, u32)) -> Result<Sample> {
        if c.scenario.via_knit() {
            self.accelerate(c.scenario == Scenario::Knit)?;
        }
        // An sk_msg-on run whose every socket kept TCP/IP (each first send
        // raced its peer's handshake: possible with one connection) did
        // not measure sk_msg: measure it again, a few times at most.
        for _ in 0..3 {
            let s = self.measure_once(c, secs, shape, false)?;
            if c.scenario == Scenario::Knit && s.redirected == 0 {
                println!("  every socket of the run kept TCP/IP; measuring it again");
                self.fallback_repeats += 1;
                continue;
            }
            return Ok(s);
        }
        bail!(
            "three sk_msg-on runs in a row through {} kept TCP/IP: acceleration does not take \
             this path",
            self.url(c)
        )
    }

    /// Daemon restarts to switch sk_msg, the longest, and sk_msg-on runs
    /// measured again because sk_msg carried none of their bytes.
    pub fn restarts(&self) -> (usize, Duration, usize) {
        (self.restarts, self.longest_restart, self.fallback_repeats)
    }

    fn measure_once(
        &mut self,
        c: Cell,
        secs: u32,
        shape: (u32, u32),
        profile: bool,
    ) -> Result<Sample> {
        let log = self.k.dir.path().join("h2load.log");
        let args = self.load_args(c, secs, shape, &log);
        let url = self.url(c);
        let vip_before = self.vip_connections()?;
        let req_before = self.proxied_requests()?;
        let proxy_before = self.proxy_ticks(c.scenario)?;
        let daemon_before = self.daemon_ticks()?;
        let backend_before = self.backend_cpu()?;
        let accel_before = knit::accel(&self.k)?;
        let perf_log = self.k.dir.path().join("perf-stat.log");
        let perf = if profile {
            let mut pids = Vec::new();
            for p in self.proxy_pids(c.scenario) {
                pids.extend(cpu::tree_pids(p)?);
            }
            Some(crate::perf::Stat::start(&pids, secs, &perf_log)?)
        } else {
            None
        };
        let cpu_before = cpu::Snapshot::take()?;
        let mut cmd = self.k.cmd();
        cmd.args([
            "run",
            "--service",
            "bench",
            "--",
            "taskset",
            "-c",
            CLIENT_CPU,
        ])
        .args(&args);
        let out = procs::run_bounded(&mut cmd, Duration::from_secs(u64::from(secs) + 30))?;
        let perf = match perf {
            Some(p) => Some(p.finish(&perf_log, Duration::from_secs(10))?),
            None => None,
        };
        let others = cpu_before.usage_until(&cpu::Snapshot::take()?);
        let daemon_cpu_secs =
            cpu::ticks_to_secs(self.daemon_ticks()?.saturating_sub(daemon_before));
        let proxy_cpu_secs = match (proxy_before, self.proxy_ticks(c.scenario)?) {
            (Some(a), Some(b)) => Some(cpu::ticks_to_secs(b.saturating_sub(a))),
            _ => None,
        };
        let backend_cpu_secs = self.backend_cpu()? - backend_before;
        let accel_after = knit::accel(&self.k)?;
        let redirected = accel_after.redirected_since(&accel_before)?;
        let fallbacks = accel_after.fallbacks_since(&accel_before);
        ensure!(
            out.status.success(),
            "{} to {url} failed ({}):\n{}{}",
            c.proto.tool(),
            out.status,
            out.stdout,
            out.stderr
        );
        let m = match c.proto {
            Proto::H1 => {
                let r = wrk::parse(&out.stdout)?;
                Measured {
                    requests: r.requests,
                    rps: r.rps,
                    p50_us: r.p50_us,
                    p99_us: r.p99_us,
                    p999_us: r.p999_us,
                    errors: r.errors(),
                    error_text: r.describe_errors(),
                }
            }
            Proto::H2c => {
                let r = h2load::parse(&out.stdout, &log)?;
                let _ = std::fs::remove_file(&log);
                Measured {
                    requests: r.succeeded,
                    rps: r.rps,
                    p50_us: r.p50_us,
                    p99_us: r.p99_us,
                    p999_us: r.p999_us,
                    errors: r.errors(),
                    error_text: r.describe_errors(),
                }
            }
        };
        ensure!(
            m.requests > 0,
            "{} completed no request to {url}:\n{}",
            c.proto.tool(),
            out.stdout
        );
        let vip_after = self.vip_connections()?;
        let proxied = match (req_before, self.proxied_requests()?) {
            (Some(a), Some(b)) => Some([0, 1].map(|i| b[i].saturating_sub(a[i]))),
            _ => None,
        };
        let mut grew = [0; 2];
        for i in 0..2 {
            grew[i] = vip_after[i]
                .checked_sub(vip_before[i])
                .context("a VIP counter went down: did the daemon restart?")?;
        }
        let conns = u64::from(match c.proto {
            Proto::H1 => shape.0 * shape.1,
            Proto::H2c => shape.0,
        });
        let mine = c.proto as usize;
        match c.scenario {
            Scenario::Knit | Scenario::KnitPlain => {
                // The connect hook sent the load generator's connections to
                // the alias (the kernel counted them) ...
                if grew[mine] < conns || grew[1 - mine] != 0 {
                    bail!(
                        "alias {} counted {} new connections (and the other alias {}) for a \
                         run that opened {conns} to its VIP: the traffic did not take the \
                         VIP path",
                        c.proto.alias(),
                        grew[mine],
                        grew[1 - mine]
                    );
                }
                // ... and the daemon's proxy served the requests (the
                // kernel's fail-open path goes straight to nginx): it
                // counted at least those the load generator completed, or
                // without metrics, it burned CPU for them.
                match proxied {
                    Some(n) if n[mine] < m.requests => bail!(
                        "the proxy counted {} requests to {} during a run that completed {} \
                         through its VIP: the requests did not go through the proxy",
                        n[mine],
                        c.proto.alias(),
                        m.requests
                    ),
                    Some(_) => {}
                    None => {
                        let us = daemon_cpu_secs * 1e6 / m.requests as f64;
                        if us < MIN_PROXY_CPU_US {
                            bail!(
                                "the knit daemon used {us:.2} µs of CPU per request during a \
                                 run through {url}: it did not proxy them (fail-open?)"
                            );
                        }
                    }
                }
            }
            _ if grew != [0, 0] || proxied.is_some_and(|n| n != [0, 0]) => bail!(
                "{} run to {url} moved the VIP counters by {grew:?} and the proxy's request \
                 counts by {proxied:?}: something else uses the VIPs, the comparison is not \
                 clean",
                c.scenario.label()
            ),
            _ => {}
        }
        // sk_msg carried the sk_msg-on runs' bytes (unless every socket
        // fell back, see `measure`), and nobody else's.
        match c.scenario {
            Scenario::Knit if redirected == 0 && fallbacks == 0 => bail!(
                "sk_msg handed no byte socket to socket during a run through {url} with \
                 acceleration on, and no socket fell back: `knit status` says {:?}",
                knit::accel(&self.k)?
            ),
            Scenario::Knit => {}
            _ if redirected != 0 => bail!(
                "{} run to {url} moved {redirected} bytes through sk_msg: the comparison is \
                 not clean",
                c.scenario.label()
            ),
            _ => {}
        }
        Ok(Sample {
            m,
            vip_new: grew,
            proxied,
            proxy_cpu_secs,
            daemon_cpu_secs,
            backend_cpu_secs,
            redirected,
            fallbacks,
            others,
            perf,
        })
    }

    /// New connections the kernel counted on `web` and `web2`.
    pub fn vip_connections(&self) -> Result<[u64; 2]> {
        let a = knit::Aliases::read(&self.k)?;
        Ok([a.new_connections("web")?, a.new_connections("web2")?])
    }

    /// Requests the proxy counted for `web` and `web2` (from the daemon's
    /// `/metrics`, `knit_request_count_total`); None without an admin
    /// address.
    pub fn proxied_requests(&self) -> Result<Option<[u64; 2]>> {
        let Some(admin) = &self.admin else {
            return Ok(None);
        };
        let text = http_get(admin, "/metrics")?;
        Ok(Some([
            request_count(&text, "web"),
            request_count(&text, "web2"),
        ]))
    }

    pub fn dir_text(&self) -> String {
        self.k.dir.path().join("nginx").display().to_string()
    }

    pub fn proxy_dir_text(&self) -> String {
        self.k.dir.path().join("nginx-proxy").display().to_string()
    }

    /// The commands as run, with the temp dir shown as $DIR.
    pub fn commands(&self, t: &Timing) -> Vec<String> {
        let dir = PathBuf::from("$DIR");
        let (n, p) = (dir.join("nginx"), dir.join("nginx-proxy"));
        let mut c = vec![
            format!(
                "knit run --service web -- {}",
                shell_words(&peers::nginx_command(&n, &n.join("nginx.conf")))
            ),
            shell_words(&peers::nginx_command(&p, &p.join("nginx.conf"))),
            shell_words(&peers::haproxy_command(&dir.join("haproxy.cfg"))),
            shell_words(&peers::envoy_command(
                "envoy",
                &dir.join("envoy-server/envoy.yaml"),
            )),
            shell_words(&peers::envoy_command(
                "envoy",
                &dir.join("envoy-client/envoy.yaml"),
            )),
            format!("taskset -a -p -c {SERVER_CPU} <knit daemon pid>"),
            "# knit VIP runs once with sk_msg on, once off: the daemon is restarted (kill -9, \
             then knit daemon --config $DIR/knit.toml with [datapath] accelerate = true|false) \
             and pinned again"
                .into(),
        ];
        for cell in super::Cell::all()
            .into_iter()
            .filter(|c| c.scenario != Scenario::KnitPlain)
        {
            let args = self.load_args(
                cell,
                t.secs(cell.load),
                cell.load.shape(cell.proto),
                &dir.join("h2load.log"),
            );
            c.push(format!(
                "knit run --service bench -- taskset -c {CLIENT_CPU} {}",
                shell_words(&args).replace(&self.k.dir.path().display().to_string(), "$DIR")
            ));
        }
        c
    }
}

/// "envoy 1.40.0/Clean/RELEASE/BoringSSL" from `envoy --version`.
fn envoy_version(envoy: &str) -> String {
    let banner = procs::banner(Command::new(envoy).arg("--version"));
    banner
        .split_whitespace()
        .skip_while(|w| *w != "version:")
        .nth(1)
        .and_then(|v| v.split_once('/'))
        .map_or_else(
            || banner.trim().to_string(),
            |(_, rest)| format!("envoy {rest}"),
        )
}

/// Pin every thread of the daemon (tokio's workers included) to the
/// servers' CPU, as HAProxy and the nginx proxy are; threads it starts
/// later inherit the mask. Its pid, and how many threads it had.
fn pin_daemon(k: &Knit) -> Result<(u32, usize)> {
    let pid = k.daemon_pid().context("the daemon is not running")?;
    util::output(Command::new("taskset").args(["-a", "-p", "-c", SERVER_CPU, &pid.to_string()]))
        .context("pinning the knit daemon")?;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok((pid, threads))
}

/// GET `path` from the daemon's admin listener on loopback (HTTP/1.1,
/// `Connection: close`): the body.
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("admin address {addr:?}"))?;
    ensure!(
        sock.ip().is_loopback(),
        "admin address {addr} is not on loopback"
    );
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .with_context(|| format!("connecting to the admin listener {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}{path}"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {addr}{path}: {}",
        head.lines().next().unwrap_or_default()
    );
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "GET {addr}{path} came chunked; expected a plain body"
    );
    Ok(body.to_string())
}

/// The sum of `knit_request_count_total` samples labelled
/// `discovery_name="<name>"` in Prometheus text.
fn request_count(metrics: &str, name: &str) -> u64 {
    let label = format!("discovery_name=\"{name}\"");
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("knit_request_count_total{")?;
            let (labels, value) = rest.rsplit_once("} ")?;
            labels
                .split(',')
                .any(|kv| kv == label)
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_of_one_discovery_name() {
        let m = "# HELP knit_request_count Requests\n\
                 knit_request_count_total{namespace=\"default\",service=\"web\",discovery_name=\"web\"} 130\n\
                 knit_request_count_total{namespace=\"default\",service=\"web\",discovery_name=\"web2\"} 7\n\
                 knit_request_count_per_target_total{namespace=\"default\",target_discovery_name=\"web\"} 9\n";
        assert_eq!(request_count(m, "web"), 130);
        assert_eq!(request_count(m, "web2"), 7);
        assert_eq!(request_count(m, "db"), 0);
    }
}
