//! Aligned tables for humans (`--json` is for machines).
use comfy_table::{Table, presets::NOTHING};

use crate::control::{EndpointRow, ServiceRow, StatusReport};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
}

fn render(t: Table) -> String {
    let mut s: String = t.lines().map(|l| l.trim_end().to_string() + "\n").collect();
    if s.is_empty() {
        s.push('\n');
    }
    s
}

pub fn services(rows: &[ServiceRow]) -> String {
    let mut t = table(&[
        "SERVICE",
        "TASKDEF",
        "NAMESPACE",
        "DISCOVERY",
        "ALIAS",
        "VIP",
        "PROTOCOL",
        "ENDPOINTS",
        "CONNS",
        "ACTIVE",
        "FAILED",
    ]);
    for r in rows {
        let alias = if r.port == 0 {
            r.dns_name.clone()
        } else {
            format!("{}:{}", r.dns_name, r.port)
        };
        t.add_row(vec![
            r.service.clone(),
            r.task_definition.clone(),
            r.namespace.clone(),
            r.discovery_name.clone(),
            alias,
            r.vip.clone(),
            r.protocol.clone(),
            format!("{}/{}", r.healthy, r.endpoints),
            r.new_connections.to_string(),
            r.active_connections.to_string(),
            r.failed_connects.to_string(),
        ]);
    }
    render(t)
}

pub fn endpoints(rows: &[EndpointRow]) -> String {
    let mut t = table(&[
        "SERVICE",
        "TASK",
        "REV",
        "PORT",
        "HOST",
        "ADDRESS",
        "STATE",
        "CONNS",
        "ACTIVE",
        "FAILED",
        "SENT",
        "RECEIVED",
        "EJECTIONS",
    ]);
    for r in rows {
        t.add_row(vec![
            r.service.clone(),
            r.task.clone(),
            r.revision.to_string(),
            r.port_name.clone(),
            if r.host.is_empty() {
                "-".into()
            } else {
                r.host.clone()
            },
            r.address.clone(),
            r.state.to_string(),
            r.new_connections.to_string(),
            r.active_connections.to_string(),
            r.failed_connects.to_string(),
            r.bytes_sent.to_string(),
            r.bytes_received.to_string(),
            r.ejections.to_string(),
        ]);
    }
    render(t)
}

pub fn status(s: &StatusReport) -> String {
    format!(
        "knit {} (pid {}), up {}s\n\
         datapath:     {} ({})\n\
         cgroup:       {}\n\
         state:        {}\n\
         registry:     {}\n\
         hosts file:   {}\n\
         services:     {} ({} client aliases)\n\
         tasks:        {} here, {} on other hosts\n\
         connections:  {} tracked by the connect hook (counted up to 10000)\n\
         acceleration: {}\n\
         L7 proxy:     {} data-plane thread{}; egress listener {} ({} socket{})\n\
         mutual TLS:   {}\n\
         admin:        http://{}/ (metrics, API)\n",
        s.version,
        s.pid,
        s.uptime_s,
        s.datapath,
        s.pin_dir,
        s.cgroup,
        s.state_dir,
        s.registry,
        s.hosts_file,
        s.services,
        s.aliases,
        s.tasks,
        s.remote_tasks,
        s.tracked_connections,
        accel(&s.acceleration),
        s.proxy.threads,
        if s.proxy.threads == 1 { "" } else { "s" },
        s.proxy.egress,
        s.proxy.egress_sockets,
        if s.proxy.egress_sockets == 1 { "" } else { "s" },
        tls(&s.tls),
        s.admin
    )
}

fn tls(t: &crate::control::TlsStatus) -> String {
    let when = |secs: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string()
    };
    if t.roots.is_empty() {
        return format!(
            "trust domain {}; no trust bundle (no `knit signer` has published one)",
            t.trust_domain
        );
    }
    let mut out = format!(
        "trust domain {}; trust bundle: {}",
        t.trust_domain,
        t.roots
            .iter()
            .map(|r| format!("{} (until {})", r.name, when(r.expires_unix)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for i in &t.identities {
        out.push_str(&format!(
            "\n              identity {} (until {})",
            i.name,
            when(i.expires_unix)
        ));
    }
    for p in &t.pending {
        out.push_str(&format!(
            "\n              identity {p}: requested, not issued yet"
        ));
    }
    out
}

fn accel(a: &crate::control::AccelStatus) -> String {
    format!(
        "{}, {} sockets in the sockhash, {} bytes in {} sends handed socket to socket, {} sockets fell back to TCP/IP; daemon paths: {}",
        if a.enabled { "on" } else { "off" },
        a.sockets,
        a.redirected_bytes,
        a.redirected_messages,
        a.tcp_fallback,
        a.daemon_paths
    )
}

/// One frame of `knit top`.
pub fn top(f: &super::top::Frame, interval: std::time::Duration) -> String {
    let mut t = table(&[
        "SERVICE", "ALIAS", "PROTOCOL", "HEALTHY", "REQ/S", "5XX %", "P50 MS", "P99 MS", "CONN/S",
        "ACTIVE",
    ]);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |m| format!("{m:.2}"));
    for s in &f.services {
        t.add_row(vec![
            s.service.clone(),
            s.alias.clone(),
            s.protocol.clone(),
            format!("{}/{}", s.healthy, s.endpoints),
            format!("{:.1}", s.requests_per_s),
            format!("{:.1}", s.errors_5xx_pct),
            ms(s.p50_latency_ms),
            ms(s.p99_latency_ms),
            format!("{:.1}", s.new_connections_per_s),
            s.active_connections.to_string(),
        ]);
    }
    let mut out = format!(
        "knit top: every {:.1} s (Ctrl-C ends)\n{}",
        interval.as_secs_f64(),
        render(t)
    );
    if !f.edges.is_empty() {
        let mut e = table(&["SOURCE", "TARGET", "REQ/S", "TCP CONN/S", "TCP BYTES/S"]);
        for edge in &f.edges {
            e.add_row(vec![
                edge.source.clone(),
                edge.target.clone(),
                format!("{:.1}", edge.requests_per_s),
                format!("{:.1}", edge.connections_per_s),
                format!("{:.0}", edge.bytes_per_s),
            ]);
        }
        out.push_str(
            "\nservice graph (HTTP/gRPC requests and TCP connections between services):\n",
        );
        out.push_str(&render(e));
    }
    out
}
