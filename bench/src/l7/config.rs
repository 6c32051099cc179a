//! What the L7 benchmark feeds knit, nginx (backend and proxy), HAProxy
//! and Envoy (see `peers` for what the configs share with the L4
//! benchmark's).
use std::path::Path;

use super::{ALIAS_PORT, setup::Ports};
use crate::peers::{self, EnvoyCluster, EnvoyListener};

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

/// The backend: `return 200 "ok"` on an HTTP/1.1 port and on an h2c port
/// (`listen ... http2` without TLS: HTTP/2 with prior knowledge).
pub fn backend_conf(dir: &Path, h1: u16, h2: u16) -> String {
    peers::nginx_conf(
        dir,
        &format!(
            "{}{}",
            peers::ok_server(&format!("127.0.0.1:{h1} backlog=4096")),
            peers::ok_server(&format!("127.0.0.1:{h2} http2 backlog=4096"))
        ),
    )
}

/// nginx as a proxy: HTTP/1.1 and h2c fronts, both to the backend's
/// HTTP/1.1 port (nginx's proxy_pass only speaks HTTP/1.x upstream) over
/// kept-alive connections.
pub fn proxy_conf(dir: &Path, h1: u16, h2: u16, backend_h1: u16) -> String {
    peers::nginx_conf(
        dir,
        &format!(
            "    upstream web {{
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
"
        ),
    )
}

/// HAProxy in `mode http`: an HTTP/1.1 front to the backend's HTTP/1.1
/// port, an h2c front (`proto h2`) to its h2c port (`proto h2`), reused
/// server connections.
pub fn haproxy_cfg(h1: u16, h2: u16, backend_h1: u16, backend_h2: u16) -> String {
    peers::haproxy_cfg(
        &["mode http", "option http-keep-alive", "http-reuse always"],
        &format!(
            "frontend h1
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
        ),
    )
}

/// Envoy with an HTTP/1.1 listener on `listen.h1` to `upstream.h1` and an
/// h2c listener on `listen.h2` to `upstream.h2` (h2 upstream), as HAProxy
/// does. As the server task's sidecar (and as one Envoy hop) the upstream
/// is the backend; as the client task's, the server sidecar's listeners
/// (ECS Service Connect's two hops: client Envoy, server Envoy, app).
pub fn envoy_yaml(listen: Ports, upstream: Ports) -> String {
    peers::envoy_yaml(
        &[
            EnvoyListener {
                name: "h1",
                port: listen.h1,
                h2: false,
                cluster: "up_h1",
            },
            EnvoyListener {
                name: "h2c",
                port: listen.h2,
                h2: true,
                cluster: "up_h2c",
            },
        ],
        &[
            EnvoyCluster {
                name: "up_h1",
                port: upstream.h1,
                h2: false,
            },
            EnvoyCluster {
                name: "up_h2c",
                port: upstream.h2,
                h2: true,
            },
        ],
    )
}
