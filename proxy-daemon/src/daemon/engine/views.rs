//! Read models: the tables, the metrics snapshot, stats and status.
use super::*;
use crate::{
    control::EndpointState,
    metrics::{AccelSample, EndpointSample, ServiceSample},
};

impl Engine {
    pub(super) fn endpoint_state(&self, t: &TaskRecord, p: &TaskPort) -> EndpointState {
        if t.draining {
            EndpointState::Draining
        } else if t.pid.is_none() || !p.ready || t.health == Some(health::Status::Starting) {
            EndpointState::Starting
        } else if t.health == Some(health::Status::Unhealthy) {
            EndpointState::Unhealthy
        } else if self.outliers.is_ejected(p.backend_id) {
            EndpointState::Ejected
        } else {
            EndpointState::Healthy
        }
    }

    pub fn service_rows(&self) -> Vec<ServiceRow> {
        let mut rows = Vec::new();
        let all = members_by_service(&self.tasks, &self.remote, self.cfg.host.address);
        for s in &self.services {
            let all = all.get(s.spec.name.as_str()).map_or(&[][..], |m| m);
            for a in &s.aliases {
                let eps: Vec<(&TaskRecord, &TaskPort)> = all
                    .iter()
                    .flat_map(|m| {
                        m.task
                            .ports
                            .iter()
                            .filter(|p| p.name == a.spec.port_name)
                            .map(move |p| (m.task, p))
                    })
                    .collect();
                let c = self
                    .dp
                    .maps
                    .service_counters(a.service_id)
                    .unwrap_or_default();
                rows.push(ServiceRow {
                    service: s.spec.name.clone(),
                    namespace: s.spec.namespace.clone(),
                    discovery_name: a.spec.discovery_name.clone(),
                    dns_name: a.spec.dns_name.clone(),
                    port: a.spec.port,
                    vip: a.vip.to_string(),
                    protocol: a.spec.app_protocol.to_string(),
                    healthy: eps.iter().filter(|(t, p)| self.eligible(t, p)).count(),
                    endpoints: eps.len(),
                    new_connections: c.new_conns,
                    active_connections: c.active,
                    failed_connects: c.failed,
                });
            }
            if s.aliases.is_empty() {
                rows.push(ServiceRow {
                    service: s.spec.name.clone(),
                    namespace: s.spec.namespace.clone(),
                    discovery_name: "-".into(),
                    dns_name: "(client only)".into(),
                    port: 0,
                    vip: "-".into(),
                    protocol: "-".into(),
                    healthy: 0,
                    endpoints: 0,
                    new_connections: 0,
                    active_connections: 0,
                    failed_connects: 0,
                });
            }
        }
        rows
    }

    pub fn endpoint_rows(&self, service: Option<&str>) -> Vec<EndpointRow> {
        let own = self.host_name();
        members_by_service(&self.tasks, &self.remote, self.cfg.host.address)
            .into_values()
            .flatten()
            .filter(|m| service.is_none_or(|s| m.task.service == s))
            .flat_map(|m| {
                let t = m.task;
                let host = if m.local {
                    own.clone()
                } else {
                    self.remote
                        .get(&t.id)
                        .map_or_else(String::new, |h| h.host.clone())
                };
                t.ports.iter().map(move |p| {
                    let c = self
                        .dp
                        .maps
                        .backend_counters(p.backend_id)
                        .unwrap_or_default();
                    EndpointRow {
                        service: t.service.clone(),
                        task: t.id.clone(),
                        port_name: p.name.clone(),
                        host: host.clone(),
                        backend_id: p.backend_id,
                        address: SocketAddr::from((m.address, p.port)).to_string(),
                        state: self.endpoint_state(t, p),
                        new_connections: c.new_conns,
                        active_connections: c.active,
                        failed_connects: c.failed,
                        bytes_sent: c.bytes_sent,
                        bytes_received: c.bytes_received,
                        ejections: self.outliers.ejections(p.backend_id),
                        ingress_port: p.ingress_port,
                    }
                })
            })
            .collect()
    }

    /// Kernel counters and endpoint states for a metrics scrape.
    pub fn metrics_snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            accel: AccelSample {
                enabled: self.cfg.datapath.accelerate,
                sockets: self.dp.maps.accelerated_sockets(),
                counters: self.dp.maps.accel_counters(),
            },
            ..Snapshot::default()
        };
        let all = members_by_service(&self.tasks, &self.remote, self.cfg.host.address);
        for s in &self.services {
            let all = all.get(s.spec.name.as_str()).map_or(&[][..], |m| m);
            for a in &s.aliases {
                let (labels, target) = alias_labels(s, a);
                let c = self
                    .dp
                    .maps
                    .service_counters(a.service_id)
                    .unwrap_or_default();
                snap.services.push(ServiceSample {
                    labels,
                    active_connections: c.active,
                    new_connections: c.new_conns,
                    bytes: c.bytes_sent + c.bytes_received,
                    failed_connects: c.failed,
                });
                for m in all {
                    let t = m.task;
                    for p in t.ports.iter().filter(|p| p.name == a.spec.port_name) {
                        let c = self
                            .dp
                            .maps
                            .backend_counters(p.backend_id)
                            .unwrap_or_default();
                        // As the proxy labels it: another host's L7 endpoint
                        // is reached at that host's ingress listener.
                        let port = if !m.local && is_l7(a) {
                            p.ingress_port.unwrap_or(p.port)
                        } else {
                            p.port
                        };
                        snap.endpoints.push(EndpointSample {
                            labels: endpoint_labels(
                                &target,
                                &t.id,
                                SocketAddr::from((m.address, port)),
                            ),
                            in_rotation: self.eligible(t, p),
                            ejections: u64::from(self.outliers.ejections(p.backend_id)),
                            new_connections: c.new_conns,
                            bytes: c.bytes_sent + c.bytes_received,
                        });
                    }
                }
            }
        }
        snap
    }

    /// Cumulative counters per alias and per edge of the service graph.
    pub fn stats(&self) -> crate::control::StatsReport {
        let routes = self.proxy.routes.load();
        let rows = self.service_rows();
        let mut services = Vec::new();
        for s in &self.services {
            for a in &s.aliases {
                let Some(row) = rows.iter().find(|r| {
                    r.service == s.spec.name
                        && r.dns_name == a.spec.dns_name
                        && r.port == a.spec.port
                }) else {
                    continue;
                };
                let c = self
                    .dp
                    .maps
                    .service_counters(a.service_id)
                    .unwrap_or_default();
                let mut st = crate::control::ServiceStats {
                    service: s.spec.name.clone(),
                    namespace: s.spec.namespace.clone(),
                    discovery_name: a.spec.discovery_name.clone(),
                    dns_name: a.spec.dns_name.clone(),
                    port: a.spec.port,
                    protocol: a.spec.app_protocol.to_string(),
                    healthy: row.healthy,
                    endpoints: row.endpoints,
                    new_connections: c.new_conns,
                    active_connections: c.active,
                    bytes: c.bytes_sent + c.bytes_received,
                    ..Default::default()
                };
                if let Some(r) = routes.aliases.get(&a.service_id) {
                    let m = &r.counters;
                    st.requests = m.requests.get();
                    st.codes = std::array::from_fn(|i| m.codes[i].get());
                    st.retries = m.retries.get();
                    st.latency_sum_us = m.latency_sum_us.get();
                    st.latency_count = m.latency_count.get();
                }
                services.push(st);
            }
        }
        crate::control::StatsReport {
            at_unix_ms: now_ms(),
            services,
            edges: self
                .proxy
                .metrics
                .edges()
                .into_iter()
                .map(|(source, target, requests)| crate::control::EdgeStats {
                    source,
                    target,
                    requests,
                })
                .collect(),
        }
    }

    pub fn status(&self) -> StatusReport {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            datapath: if self.dp.adopted {
                "adopted".into()
            } else {
                "loaded".into()
            },
            pin_dir: self.dp.dir.display().to_string(),
            cgroup: self.cgroup_root.display().to_string(),
            state_dir: self.cfg.state_dir.display().to_string(),
            hosts_file: self.cfg.hosts_file.display().to_string(),
            services: self.services.len(),
            aliases: self.services.iter().map(|s| s.aliases.len()).sum(),
            tasks: self.tasks.len(),
            remote_tasks: self.remote.len(),
            registry: self.registry.describe(),
            tracked_connections: self.dp.maps.tracked_connections(),
            map_writes: self.dp.maps.writes(),
            acceleration: {
                let c = self.dp.maps.accel_counters();
                crate::control::AccelStatus {
                    enabled: self.cfg.datapath.accelerate,
                    daemon_paths: match &self.dp.daemon_paths {
                        Ok(cg) => format!("on (sockops on {})", cg.display()),
                        Err(why) => format!("off ({why})"),
                    },
                    sockets: self.dp.maps.accelerated_sockets(),
                    inserted: c.inserted,
                    redirected_messages: c.redirected_msgs,
                    redirected_bytes: c.redirected_bytes,
                    tcp_fallback: c.tcp_fallback,
                }
            },
            config: Some(self.cfg.clone()),
            admin: self.admin.clone(),
        }
    }
}
