//! What the L4 benchmark feeds knit, nginx and HAProxy.
use std::path::Path;

use super::SERVER_CPU;

pub const WEB_SERVICE: &str = r#"{"serviceName": "web", "taskDefinition": "web",
  "serviceConnectConfiguration": {"enabled": true,
    "services": [{"portName": "http", "discoveryName": "web",
                  "clientAliases": [{"dnsName": "web", "port": 8080}]}]}}"#;

/// A fixed containerPort, so nginx's config can name it. No appProtocol:
/// a TCP service, balanced in the kernel.
pub fn web_task_definition(port: u16) -> String {
    format!(
        r#"{{"family": "web", "containerDefinitions": [{{"name": "nginx", "image": "nginx",
            "portMappings": [{{"name": "http", "containerPort": {port}, "protocol": "tcp"}}]}}]}}"#
    )
}

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

/// One worker: on 2 CPUs the second is wrk's, and one worker on one pinned
/// CPU gives the same server capacity in every scenario. keepalive_requests
/// is raised so keep-alive runs never reconnect (nginx's default closes a
/// connection after 1000 requests, which would mix connects into them).
pub fn nginx_conf(dir: &Path, port: u16) -> String {
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
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 \"ok\"; }}
    }}
}}
"
    )
}

/// Layer 4 only: HAProxy splices bytes between the two connections, the
/// same job as the L4 short-circuit, done in userspace. One thread, like
/// nginx's one worker. maxconn: far above the 64 connections used, and low
/// enough that HAProxy (two fds per connection) does not fail to raise its
/// fd limit where the hard limit is modest.
pub fn haproxy_cfg(port: u16, backend: u16) -> String {
    format!(
        "global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:{port}
    default_backend web
backend web
    server nginx 127.0.0.1:{backend}
"
    )
}
