//! The running L4 benchmark: a knit daemon with nginx as a task of `web`,
//! HAProxy in front of nginx, and one measured wrk run as a task of `bench`
//! (with the daemon's sk_msg acceleration switched for the knit scenario).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use knit_tests::{Knit, client_service};

use super::{
    ALIAS_PORT, Mode, Scenario,
    config::{WEB_SERVICE, haproxy_cfg, nginx_conf, web_task_definition},
};
use crate::{
    cpu::{self, CLIENT_CPU, Usage},
    knit, peers,
    procs::{self, Guard},
    report::shell_words,
    rounds::Disturbance,
    wrk,
};

/// One wrk run's results.
pub struct Sample {
    pub wrk: wrk::Report,
    /// New connections the kernel counted on alias `web` meanwhile.
    pub vip_new: u64,
    /// Bytes sk_msg handed socket to socket meanwhile.
    pub redirected: u64,
    /// CPU seconds the daemon, nginx and HAProxy used meanwhile.
    pub server_cpu_secs: f64,
    /// CPU that processes outside the benchmark used meanwhile.
    pub others: Usage,
}

impl Disturbance for Sample {
    fn others(&self) -> &Usage {
        &self.others
    }
}

/// The running setup. Fields drop in order: HAProxy first, then the daemon
/// with its tasks (nginx) and cgroups.
pub struct Bench {
    haproxy: Guard,
    pub k: Knit,
    daemon_pid: u32,
    /// wrk's p99.9 script.
    script: PathBuf,
    pub nginx_port: u16,
    pub haproxy_port: u16,
    pub vip: String,
    pub nginx_conf: String,
    pub haproxy_cfg: String,
}

impl Bench {
    pub fn start(bin: &knit::Binary) -> Result<Self> {
        let mut k = knit::start("bench-l4", "", bin)?;
        let nginx_port = procs::free_port()?;
        let haproxy_port = procs::free_port()?;
        ensure!(nginx_port != haproxy_port, "got the same free port twice");
        let (bench_td, bench_svc) = client_service("bench");
        k.apply(&[
            ("web-td.json", &web_task_definition(nginx_port)),
            ("web-svc.json", WEB_SERVICE),
            ("bench-td.json", &bench_td),
            ("bench-svc.json", &bench_svc),
        ])?;

        let dir = k.dir.path().join("nginx");
        let nginx_conf = nginx_conf(&dir, nginx_port);
        peers::run_nginx_task(&mut k, "web", &dir, &nginx_conf, 1)?;

        let haproxy_cfg = haproxy_cfg(haproxy_port, nginx_port);
        let haproxy = peers::start_haproxy(k.dir.path(), &haproxy_cfg, &[haproxy_port])?;

        let vip = knit::Aliases::read(&k)?.vip("web")?;
        let daemon_pid = k.daemon_pid().context("the daemon is not running")?;
        let script = wrk::write_script(&dir)?;
        Ok(Self {
            haproxy,
            k,
            daemon_pid,
            script,
            nginx_port,
            haproxy_port,
            vip,
            nginx_conf,
            haproxy_cfg,
        })
    }

    fn url(&self, s: Scenario) -> String {
        match s {
            Scenario::Direct => format!("http://127.0.0.1:{}/", self.nginx_port),
            Scenario::Knit | Scenario::KnitPlain => format!("http://{}:{ALIAS_PORT}/", self.vip),
            Scenario::Haproxy => format!("http://127.0.0.1:{}/", self.haproxy_port),
        }
    }

    fn load(&self, s: Scenario, mode: Mode, secs: u32, connections: u32) -> wrk::Load {
        wrk::Load {
            url: self.url(s),
            connections,
            secs,
            close: mode == Mode::Close,
            script: Some(self.script.clone()),
        }
    }

    /// CPU seconds of the servers so far: the daemon, nginx (every process
    /// in service `web`'s cgroup) and HAProxy.
    fn server_cpu(&self) -> Result<f64> {
        let ticks = |pid: u32, what: &str| -> Result<f64> {
            Ok(cpu::ticks_to_secs(
                cpu::tree_ticks(pid)?.with_context(|| format!("{what} ({pid}) is gone"))?,
            ))
        };
        Ok(ticks(self.daemon_pid, "the knit daemon")?
            + ticks(self.haproxy.pid(), "HAProxy")?
            + cpu::cgroup_secs(&self.k.cgroup.join("web"))?)
    }

    /// `knit run --service bench -- taskset -c 0 wrk ...` plus its checks.
    pub fn measure(&self, s: Scenario, mode: Mode, secs: u32, conns: u32) -> Result<Sample> {
        if s.via_vip() {
            // New connections take the new setting; wrk opens its own.
            knit::reload_accelerate(&self.k, s == Scenario::Knit)?;
        }
        let load = self.load(s, mode, secs, conns);
        let before = self.vip_connections()?;
        let accel_before = knit::accel(&self.k)?;
        let server_before = self.server_cpu()?;
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
        .args(load.args());
        let out = procs::run_bounded(&mut cmd, Duration::from_secs(u64::from(secs) + 30))?;
        let others = cpu_before.usage_until(&cpu::Snapshot::take()?);
        let server_cpu_secs = self.server_cpu()? - server_before;
        let redirected = knit::accel(&self.k)?.redirected_since(&accel_before)?;
        ensure!(
            out.status.success(),
            "wrk to {} failed ({}):\n{}{}",
            load.url,
            out.status,
            out.stdout,
            out.stderr
        );
        let r = wrk::parse(&out.stdout)?;
        ensure!(
            r.requests > 0,
            "wrk completed no request to {}:\n{}",
            load.url,
            out.stdout
        );
        let grew = self
            .vip_connections()?
            .checked_sub(before)
            .context("web's VIP counter went down: did the daemon restart?")?;
        // Through the VIP every connection wrk opened is one the kernel
        // counted: keep-alive opens `conns`, close one per request.
        let expected = match mode {
            Mode::KeepAlive => u64::from(conns),
            Mode::Close => r.requests,
        };
        match s {
            Scenario::Knit | Scenario::KnitPlain if grew < expected => bail!(
                "the VIP path counted {grew} new connections for a wrk run that made at least \
                 {expected}: the traffic did not go through the L4 short-circuit"
            ),
            Scenario::Direct | Scenario::Haproxy if grew != 0 => bail!(
                "{} run to {} moved web's VIP counter by {grew}: something else uses the VIP, \
                 the comparison is not clean",
                s.label(),
                load.url
            ),
            _ => {}
        }
        // sk_msg carried the sk_msg-on runs' bytes, and nobody else's.
        match s {
            Scenario::Knit if redirected == 0 => bail!(
                "sk_msg handed no byte socket to socket during a run through the VIP with \
                 acceleration on: `knit status` says {:?}",
                knit::accel(&self.k)?
            ),
            Scenario::Knit => {}
            _ if redirected != 0 => bail!(
                "{} run moved {redirected} bytes through sk_msg: the comparison is not clean",
                s.label()
            ),
            _ => {}
        }
        Ok(Sample {
            wrk: r,
            vip_new: grew,
            redirected,
            server_cpu_secs,
            others,
        })
    }

    pub fn vip_connections(&self) -> Result<u64> {
        knit::Aliases::read(&self.k)?.new_connections("web")
    }

    pub fn dir_text(&self) -> String {
        self.k.dir.path().join("nginx").display().to_string()
    }

    /// The commands as run, with the temp dir shown as $DIR.
    pub fn commands(&self, secs: u32) -> Vec<String> {
        let dir = PathBuf::from("$DIR");
        let mut c = vec![
            format!(
                "knit run --service web -- {}",
                shell_words(&peers::nginx_command(&dir, &dir.join("nginx.conf")))
            ),
            shell_words(&peers::haproxy_command(Path::new("haproxy.cfg"))),
            "# the knit VIP runs once with sk_msg on, once off: [datapath] accelerate = true|false \
             in $DIR/knit.toml, then kill -HUP <knit daemon pid> before each"
                .into(),
        ];
        for mode in Mode::ALL {
            for s in Scenario::ALL
                .into_iter()
                .filter(|&s| s != Scenario::KnitPlain)
            {
                let load = self.load(s, mode, secs, mode.connections());
                c.push(format!(
                    "knit run --service bench -- taskset -c {CLIENT_CPU} {}",
                    shell_words(&load.args()).replace(&self.dir_text(), "$DIR")
                ));
            }
        }
        c
    }
}
