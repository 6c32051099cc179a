//! What the L4 benchmark feeds knit, nginx and HAProxy (see `peers` for
//! what the configs share with the L7 benchmark's).
use std::path::Path;

use crate::peers;

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

/// nginx answering `return 200 "ok"` on `port`.
pub fn nginx_conf(dir: &Path, port: u16) -> String {
    peers::nginx_conf(
        dir,
        &peers::ok_server(&format!("127.0.0.1:{port} backlog=4096")),
    )
}

/// Layer 4 only: HAProxy splices bytes between the two connections, the
/// same job as the L4 short-circuit, done in userspace.
pub fn haproxy_cfg(port: u16, backend: u16) -> String {
    peers::haproxy_cfg(
        &["mode tcp"],
        &format!(
            "frontend bench
    bind 127.0.0.1:{port}
    default_backend web
backend web
    server nginx 127.0.0.1:{backend}
"
        ),
    )
}
