//! The servers knit is measured against and beside, as the `l4` and `l7`
//! benchmarks run them: nginx (one worker, files in a temp dir) as a knit
//! task or on its own, and HAProxy (one thread, outside knit), all pinned
//! to the servers' CPU. Each benchmark brings what genuinely differs: its
//! nginx `server` and `upstream` blocks, and HAProxy's mode, options,
//! frontends and backends (`mode tcp` for l4, `mode http` for l7).
use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};
use knit_tests::Knit;

use crate::{
    cpu::SERVER_CPU,
    procs::{self, Guard},
};

/// How long a peer may take to listen on its ports.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// `taskset -c 1 nginx -p DIR -c CONF -e DIR/error.log -g 'daemon off;'`.
pub fn nginx_command(dir: &Path, conf: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    vec![
        "taskset".into(),
        "-c".into(),
        SERVER_CPU.into(),
        "nginx".into(),
        "-p".into(),
        d.clone(),
        "-c".into(),
        conf.display().to_string(),
        // Before the config is read, errors go here, not to /var/log/nginx.
        "-e".into(),
        format!("{d}/error.log"),
        "-g".into(),
        "daemon off;".into(),
    ]
}

/// An nginx config with its files in `dir`: one worker (on 2 CPUs the
/// other is the load generator's, and one worker on one pinned CPU gives
/// the same server capacity in every scenario), then an `http` block with
/// the settings every benchmark shares and `blocks`, the benchmark's own
/// `server` and `upstream` blocks (indented by four spaces). Shared: no
/// access log, temp paths in `dir`, and `keepalive_requests` raised so
/// that keep-alive connections (and h2 connections, which it also bounds
/// since nginx 1.19.7) never reconnect mid-run (nginx's default closes a
/// connection after 1000 requests, which would mix connects into the runs).
pub fn nginx_conf(dir: &Path, blocks: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
# The temp dir is root's; a worker running as nobody could not use it.
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{blocks}}}
"
    )
}

/// A backend's `server` block: `return 200 "ok"` on `listen` (an address
/// and its options).
pub fn ok_server(listen: &str) -> String {
    format!(
        "    server {{
        listen {listen};
        location / {{ return 200 \"ok\"; }}
    }}
"
    )
}

/// nginx as a task of knit service `service`, with `conf` in
/// `dir`/nginx.conf; returns once the service has `endpoints` healthy
/// endpoints (one per port nginx listens on).
pub fn run_nginx_task(
    k: &mut Knit,
    service: &str,
    dir: &Path,
    conf: &str,
    endpoints: usize,
) -> Result<()> {
    let conf_path = write_in(dir, "nginx.conf", conf)?;
    let cmd = nginx_command(dir, &conf_path);
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    k.run(service, &args)?;
    k.wait_healthy(service, endpoints)
        .with_context(|| format!("nginx did not come up; see {}", dir.display()))
}

/// nginx on its own (outside knit, as a proxy would run in front of any
/// backend), with `conf` in `dir`/nginx.conf, once it listens on `ports`
/// on loopback. `what` names it in errors.
pub fn start_nginx(what: &str, dir: &Path, conf: &str, ports: &[u16]) -> Result<Guard> {
    let conf_path = write_in(dir, "nginx.conf", conf)?;
    let cmd = nginx_command(dir, &conf_path);
    let mut nginx = Guard::spawn_graceful(what, &mut command(&cmd)?, &dir.join("stdout.log"))?;
    wait_ports(&mut nginx, ports)?;
    Ok(nginx)
}

/// HAProxy's config: one thread, like nginx's one worker; `maxconn` far
/// above the connections used, and low enough that HAProxy (two fds per
/// connection) does not fail to raise its fd limit where the hard limit is
/// modest; `defaults` (the benchmark's mode and options) before the shared
/// timeouts; then `proxies`, the benchmark's frontends and backends.
pub fn haproxy_cfg(defaults: &[&str], proxies: &str) -> String {
    let defaults: String = defaults.iter().map(|d| format!("    {d}\n")).collect();
    format!(
        "global
    nbthread 1
    maxconn 4096
defaults
{defaults}    timeout connect 2s
    timeout client 30s
    timeout server 30s
{proxies}"
    )
}

/// `taskset -c 1 haproxy -db -f CFG`.
pub fn haproxy_command(cfg: &Path) -> Vec<String> {
    ["taskset", "-c", SERVER_CPU, "haproxy", "-db", "-f"]
        .into_iter()
        .map(String::from)
        .chain([cfg.display().to_string()])
        .collect()
}

/// HAProxy outside knit, as it would run in front of any backend, with
/// `cfg` in `dir`/haproxy.cfg (its log beside it), once it listens on
/// `ports` on loopback.
pub fn start_haproxy(dir: &Path, cfg: &str, ports: &[u16]) -> Result<Guard> {
    let cfg_path = write_in(dir, "haproxy.cfg", cfg)?;
    let cmd = haproxy_command(&cfg_path);
    let mut haproxy = Guard::spawn("haproxy", &mut command(&cmd)?, &dir.join("haproxy.log"))?;
    wait_ports(&mut haproxy, ports)?;
    Ok(haproxy)
}

/// `text` written to `dir`/`name` (the directory made if need be).
fn write_in(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn command(words: &[String]) -> Result<Command> {
    let (program, args) = words.split_first().context("an empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    Ok(cmd)
}

/// Wait until `peer` listens on every one of `ports`, and is still running.
fn wait_ports(peer: &mut Guard, ports: &[u16]) -> Result<()> {
    for &port in ports {
        procs::wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), LISTEN_TIMEOUT)?;
    }
    peer.ensure_running()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_holds_the_benchmarks_blocks() {
        let conf = nginx_conf(Path::new("/d"), &ok_server("127.0.0.1:80 backlog=4096"));
        assert!(conf.starts_with("worker_processes 1;\n"));
        assert!(conf.contains("pid /d/nginx.pid;\n"));
        assert!(conf.ends_with(
            "    scgi_temp_path /d/scgi;\n    server {\n        listen 127.0.0.1:80 \
             backlog=4096;\n        location / { return 200 \"ok\"; }\n    }\n}\n"
        ));
    }

    #[test]
    fn haproxy_cfg_puts_the_mode_before_the_timeouts() {
        let cfg = haproxy_cfg(&["mode tcp"], "frontend f\n");
        assert_eq!(
            cfg,
            "global\n    nbthread 1\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout \
             connect 2s\n    timeout client 30s\n    timeout server 30s\nfrontend f\n"
        );
    }

    #[test]
    fn commands_are_pinned_to_the_servers_cpu() {
        let h = haproxy_command(Path::new("$DIR/haproxy.cfg"));
        assert_eq!(
            h.join(" "),
            format!("taskset -c {SERVER_CPU} haproxy -db -f $DIR/haproxy.cfg")
        );
        let n = nginx_command(Path::new("/d"), Path::new("/d/nginx.conf"));
        assert_eq!(&n[..4], ["taskset", "-c", SERVER_CPU, "nginx"]);
    }
}
