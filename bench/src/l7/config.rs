//! What the L7 benchmark feeds knit, nginx (backend and proxy) and HAProxy.
use std::path::Path;

use super::{ALIAS_PORT, SERVER_CPU};

/// Service `web` with two aliases on the one nginx task: `web:8080` for
/// its HTTP/1.1 port and `web2:8080` for its h2c port.
pub fn web_service() -> String {
    format!(
        r#"{{"serviceName": "web", "taskDefinition": "web",
  "serviceConnectConfiguration": {{"enabled": true,
    "services": [
      {{"portName": "http", "discoveryName": "web",
        "clientAliases": [{{"dnsName": "web", "port": {ALIAS_PORT}}}]}},
      {{"portName": "h2c", "discoveryName": "web2",
        "clientAliases": [{{"dnsName": "web2", "port": {ALIAS_PORT}}}]}}]}}}}"#
    )
}

/// Fixed containerPorts, so that nginx's config can name them; appProtocol
/// `http` and `http2`: both go through the daemon's L7 proxy.
pub fn web_task_definition(h1: u16, h2: u16) -> String {
    format!(
        r#"{{"family": "web", "containerDefinitions": [{{"name": "nginx", "image": "nginx",
            "portMappings": [
              {{"name": "http", "containerPort": {h1}, "protocol": "tcp", "appProtocol": "http"}},
              {{"name": "h2c", "containerPort": {h2}, "protocol": "tcp", "appProtocol": "http2"}}]}}]}}"#
    )
}

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

/// The start of both nginx configs: one worker (on 2 CPUs the other is the
/// load generator's), files in the temp dir.
fn nginx_head(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
# The temp dir is root's; a worker running as nobody could not use it.
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
"
    )
}

/// The `http` settings both share: no access log, temp paths in the temp
/// dir, and `keepalive_requests` raised so that keep-alive connections (and
/// h2 connections, which it also bounds since nginx 1.19.7) never reconnect
/// mid-run.
fn nginx_http_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
"
    )
}

/// The backend: `return 200 "ok"` on an HTTP/1.1 port and on an h2c port
/// (`listen ... http2` without TLS: HTTP/2 with prior knowledge).
pub fn backend_conf(dir: &Path, h1: u16, h2: u16) -> String {
    format!(
        "{}http {{
{}    server {{
        listen 127.0.0.1:{h1} backlog=4096;
        location / {{ return 200 \"ok\"; }}
    }}
    server {{
        listen 127.0.0.1:{h2} http2 backlog=4096;
        location / {{ return 200 \"ok\"; }}
    }}
}}
",
        nginx_head(dir),
        nginx_http_common(dir)
    )
}

/// nginx as a proxy: HTTP/1.1 and h2c fronts, both to the backend's
/// HTTP/1.1 port (nginx's proxy_pass only speaks HTTP/1.x upstream) over
/// kept-alive connections.
pub fn proxy_conf(dir: &Path, h1: u16, h2: u16, backend_h1: u16) -> String {
    format!(
        "{}http {{
{}    upstream web {{
        server 127.0.0.1:{backend_h1};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{h1} backlog=4096;
        listen 127.0.0.1:{h2} http2 backlog=4096;
        location / {{
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        nginx_head(dir),
        nginx_http_common(dir)
    )
}

/// HAProxy in `mode http`: an HTTP/1.1 front to the backend's HTTP/1.1
/// port, an h2c front (`proto h2`) to its h2c port (`proto h2`), reused
/// server connections. One thread, like nginx's one worker. maxconn: far
/// above what is used, low enough for a modest fd limit.
pub fn haproxy_cfg(h1: u16, h2: u16, backend_h1: u16, backend_h2: u16) -> String {
    format!(
        "global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend h1
    bind 127.0.0.1:{h1}
    default_backend web_h1
frontend h2c
    bind 127.0.0.1:{h2} proto h2
    default_backend web_h2c
backend web_h1
    server nginx 127.0.0.1:{backend_h1}
backend web_h2c
    server nginx 127.0.0.1:{backend_h2} proto h2
"
    )
}
