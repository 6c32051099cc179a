//! The read side: after every change the engine publishes a plain-data
//! [`ReadModel`] (tables, the metrics' labels and states, status) in one
//! walk over the state; `daemon/read.rs` answers every read from it.
use super::*;
use crate::{
    control::{AccelStatus, EndpointState},
    daemon::read::{AliasEndpoint, AliasView, ReadModel},
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

    /// Publish the state as it is now for readers (admin API, `/metrics`,
    /// the CLI's reads), who never take the engine's lock. Called after
    /// every reconcile, so after every change that routing sees.
    pub fn publish(&self) {
        let all = self.state.members(self.cfg.host.address);
        let mut aliases = Vec::new();
        for s in &self.state.services {
            let members = all.get(s.spec.name.as_str()).map_or(&[][..], |m| m);
            for a in &s.aliases {
                let (labels, target) = alias_labels(s, a);
                let l7 = is_l7(a);
                let mut healthy = 0;
                let mut endpoints = Vec::new();
                for m in members {
                    for p in m.task.ports.iter().filter(|p| p.name == a.spec.port_name) {
                        let in_rotation = self.eligible(m.task, p);
                        healthy += usize::from(in_rotation);
                        // As the proxy labels it: another host's L7 endpoint
                        // is reached at that host's ingress listener.
                        let port = if !m.local && l7 {
                            p.ingress_for(&a.spec.discovery_name).unwrap_or(p.port)
                        } else {
                            p.port
                        };
                        endpoints.push(AliasEndpoint {
                            labels: endpoint_labels(
                                &target,
                                &m.task.id,
                                SocketAddr::from((m.address, port)),
                            ),
                            backend_id: p.backend_id,
                            in_rotation,
                            ejections: u64::from(self.outliers.ejections(p.backend_id)),
                        });
                    }
                }
                aliases.push(AliasView {
                    row: ServiceRow {
                        service: s.spec.name.clone(),
                        namespace: s.spec.namespace.clone(),
                        discovery_name: a.spec.discovery_name.clone(),
                        dns_name: a.spec.dns_name.clone(),
                        port: a.spec.port,
                        vip: a.vip.to_string(),
                        protocol: a.spec.app_protocol.to_string(),
                        service_connect: true,
                        healthy,
                        endpoints: endpoints.len(),
                        new_connections: 0,
                        active_connections: 0,
                        failed_connects: 0,
                    },
                    service_id: Some(a.service_id),
                    labels: Some(labels),
                    endpoints,
                });
            }
            if s.aliases.is_empty() {
                aliases.push(AliasView {
                    row: ServiceRow {
                        service: s.spec.name.clone(),
                        namespace: s.spec.namespace.clone(),
                        discovery_name: "-".into(),
                        dns_name: if s.spec.enabled {
                            "(client only)".into()
                        } else {
                            "(not in Service Connect)".into()
                        },
                        service_connect: s.spec.enabled,
                        port: 0,
                        vip: "-".into(),
                        protocol: "-".into(),
                        healthy: 0,
                        endpoints: 0,
                        new_connections: 0,
                        active_connections: 0,
                        failed_connects: 0,
                    },
                    service_id: None,
                    labels: None,
                    endpoints: Vec::new(),
                });
            }
        }
        let own = self.host_name();
        let endpoints = all
            .into_values()
            .flatten()
            .flat_map(|m| {
                let t = m.task;
                let host = if m.local {
                    own.clone()
                } else {
                    self.state
                        .remote
                        .get(&t.id)
                        .map_or_else(String::new, |h| h.host.clone())
                };
                t.ports.iter().map(move |p| EndpointRow {
                    service: t.service.clone(),
                    task: t.id.clone(),
                    port_name: p.name.clone(),
                    host: host.clone(),
                    backend_id: p.backend_id,
                    address: SocketAddr::from((m.address, p.port)).to_string(),
                    state: self.endpoint_state(t, p),
                    new_connections: 0,
                    active_connections: 0,
                    failed_connects: 0,
                    bytes_sent: 0,
                    bytes_received: 0,
                    ejections: self.outliers.ejections(p.backend_id),
                    ingress_port: p.ingress_port,
                    ingress_ports: p.ingress.clone(),
                })
            })
            .collect();
        self.reader.publish(ReadModel {
            aliases,
            endpoints,
            status: Some(self.status_base()),
        });
    }

    /// `knit status` as far as the engine's state goes (the reader adds
    /// uptime, the registry's state and the kernel's counters).
    fn status_base(&self) -> StatusReport {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_s: 0,
            datapath: if self.dp.adopted {
                "adopted".into()
            } else {
                "loaded".into()
            },
            pin_dir: self.dp.dir.display().to_string(),
            cgroup: self.cgroup_root.display().to_string(),
            state_dir: self.cfg.state_dir.display().to_string(),
            hosts_file: self.cfg.hosts_file.display().to_string(),
            services: self.state.services.len(),
            aliases: self.state.services.iter().map(|s| s.aliases.len()).sum(),
            tasks: self.state.tasks.len(),
            remote_tasks: self.state.remote.len(),
            registry: String::new(),
            tracked_connections: 0,
            map_writes: self.dp.maps.writes(),
            acceleration: AccelStatus {
                enabled: self.cfg.datapath.accelerate,
                daemon_paths: match &self.dp.daemon_paths {
                    Ok(cg) => format!("on (sockops on {})", cg.display()),
                    Err(why) => format!("off ({why})"),
                },
                ..AccelStatus::default()
            },
            config: Some(self.cfg.clone()),
            admin: self.admin.clone(),
        }
    }
}
