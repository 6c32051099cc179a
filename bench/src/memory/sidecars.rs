//! One proxy per task, for real: N HAProxy and N nginx processes, each the
//! minimal sidecar of one task (one listener in front of the task's port,
//! HTTP keep-alive to it), all in front of one backend (`knit-testbin
//! http`, outside knit). Each sidecar carries a few requests before its
//! memory is read, so it has done the work of one. Counts grow (10, then
//! 50): the per-sidecar figure should not depend on N, and the table shows
//! it for each.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use super::{Mem, mem_of};
use crate::{
    procs::{self, Guard},
    stats::Summary,
};

/// Requests each sidecar carries before it is measured.
const WARM_REQUESTS: usize = 50;
/// Connections a sidecar accepts (HAProxy's `maxconn`, nginx's
/// `worker_connections`): set, as a sidecar's config would, and modest.
const MAX_CONNS: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Haproxy,
    Nginx,
}

impl Proxy {
    pub const ALL: [Proxy; 2] = [Proxy::Haproxy, Proxy::Nginx];

    pub fn label(self) -> &'static str {
        match self {
            Proxy::Haproxy => "HAProxy sidecar",
            Proxy::Nginx => "nginx sidecar",
        }
    }
}

/// N sidecars of one kind, measured.
pub struct Measured {
    pub proxy: Proxy,
    pub count: usize,
    /// Per sidecar (an nginx master and its worker together).
    pub rss_kib: Summary,
    pub pss_kib: Summary,
    pub uss_kib: Summary,
}

impl Measured {
    /// What `tasks` sidecars would hold: the pages they share once (the
    /// binary and libraries: RSS less USS, medians), and each one's own
    /// (USS, median). A linear extrapolation from the `count` measured.
    pub fn extrapolate_kib(&self, tasks: usize) -> f64 {
        (self.rss_kib.median - self.uss_kib.median) + tasks as f64 * self.uss_kib.median
    }
}

/// HAProxy as the sidecar of the task at `backend`.
pub fn haproxy_cfg(port: u16, backend: u16) -> String {
    format!(
        "global
    nbthread 1
    maxconn {MAX_CONNS}
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend task
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server app 127.0.0.1:{backend}
"
    )
}

/// nginx as the sidecar of the task at `backend` (files under `dir`).
pub fn nginx_conf(dir: &Path, port: u16, backend: u16) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {MAX_CONNS}; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream app {{
        server 127.0.0.1:{backend};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    )
}

/// `n` GETs over one keep-alive connection to `port` on loopback; each
/// must answer 200.
fn warm(port: u16, n: usize) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    for _ in 0..n {
        s.write_all(b"GET / HTTP/1.1\r\nHost: task\r\n\r\n")?;
        buf.clear();
        // Read the head, then the body its Content-Length announces.
        let mut chunk = [0u8; 4096];
        let (head_end, len) = loop {
            let got = s.read(&mut chunk)?;
            if got == 0 {
                bail!("the sidecar on :{port} closed the connection");
            }
            buf.extend_from_slice(&chunk[..got]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                ensure!(
                    head.starts_with("http/1.1 200"),
                    "the sidecar on :{port} answered {:?}",
                    head.lines().next()
                );
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("no Content-Length from :{port}"))?;
                break (i + 4, len);
            }
            ensure!(buf.len() < 65536, "no end of head from :{port}");
        };
        while buf.len() < head_end + len {
            let got = s.read(&mut chunk)?;
            if got == 0 {
                bail!("the sidecar on :{port} closed mid-body");
            }
            buf.extend_from_slice(&chunk[..got]);
        }
    }
    Ok(())
}

/// Memory of a sidecar: the process and its children (nginx's worker).
fn tree_mem(pid: u32) -> Result<Mem> {
    let mut m = mem_of(pid)?;
    for child in procs::descendants(pid as i32) {
        if let Ok(c) = mem_of(child as u32) {
            // The worker's pages that are not its own are mostly the
            // master's (forked), already in the master's RSS.
            m.rss_kib += c.uss_kib;
            m.pss_kib += c.pss_kib;
            m.uss_kib += c.uss_kib;
        }
    }
    Ok(m)
}

/// Start sidecars of each kind up to each of `counts` (growing), warm and
/// measure them. Also returns one config of each kind, for the report.
pub fn measure(testbin: &Path, counts: &[usize]) -> Result<(Vec<Measured>, (String, String))> {
    let dir = tempfile::Builder::new()
        .prefix("knit-bench-sidecars")
        .tempdir()?;
    let backend = procs::free_port()?;
    let _app = Guard::spawn(
        "the sidecars' backend",
        Command::new(testbin)
            .args(["http", "--id", "app", "--port-env", "PORT"])
            .env("PORT", backend.to_string()),
        &dir.path().join("backend.log"),
    )?;
    procs::wait_listening(
        SocketAddr::from(([127, 0, 0, 1], backend)),
        Duration::from_secs(10),
    )?;
    let mut out = Vec::new();
    let example_dir = Path::new("$DIR/sidecar-0");
    let confs = (
        haproxy_cfg(40001, 40000),
        nginx_conf(example_dir, 40001, 40000),
    );
    for proxy in Proxy::ALL {
        // Dropped at the end of each kind: every sidecar is stopped.
        let mut running: Vec<Guard> = Vec::new();
        for &n in counts {
            while running.len() < n {
                let i = running.len();
                let port = procs::free_port()?;
                let sdir = dir.path().join(format!("{proxy:?}-{i}"));
                std::fs::create_dir_all(&sdir)?;
                let mut g = match proxy {
                    Proxy::Haproxy => {
                        let cfg = sdir.join("haproxy.cfg");
                        std::fs::write(&cfg, haproxy_cfg(port, backend))?;
                        Guard::spawn(
                            "an HAProxy sidecar",
                            Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
                            &sdir.join("log"),
                        )?
                    }
                    Proxy::Nginx => {
                        let conf = sdir.join("nginx.conf");
                        std::fs::write(&conf, nginx_conf(&sdir, port, backend))?;
                        Guard::spawn_graceful(
                            "an nginx sidecar",
                            Command::new("nginx")
                                .arg("-p")
                                .arg(&sdir)
                                .arg("-c")
                                .arg(&conf)
                                .arg("-e")
                                .arg(sdir.join("error.log"))
                                .args(["-g", "daemon off;"]),
                            &sdir.join("log"),
                        )?
                    }
                };
                procs::wait_listening(
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(10),
                )?;
                g.ensure_running()?;
                warm(port, WARM_REQUESTS)
                    .with_context(|| format!("{} {i} on :{port}", proxy.label()))?;
                running.push(g);
            }
            std::thread::sleep(Duration::from_millis(500));
            let mems: Vec<Mem> = running
                .iter()
                .map(|g| tree_mem(g.pid()))
                .collect::<Result<_>>()?;
            let of = |f: fn(&Mem) -> f64| {
                Summary::of(&mems.iter().map(f).collect::<Vec<_>>()).context("no sidecar")
            };
            let m = Measured {
                proxy,
                count: n,
                rss_kib: of(|m| m.rss_kib)?,
                pss_kib: of(|m| m.pss_kib)?,
                uss_kib: of(|m| m.uss_kib)?,
            };
            println!(
                "  {n} {}s: each RSS {:.1} MiB, PSS {:.1} MiB, USS {:.1} MiB (medians)",
                proxy.label(),
                m.rss_kib.median / 1024.0,
                m.pss_kib.median / 1024.0,
                m.uss_kib.median / 1024.0
            );
            out.push(m);
        }
    }
    Ok((out, confs))
}
