//! The read side: after every change the engine publishes a plain-data
//! [`ReadModel`] (tables, the metrics' labels and states, status) in one
//! walk over the state; `daemon/read.rs` answers every read from it.
use super::*;
use crate::{
    control::{AccelStatus, EndpointState, ProxyStatus},
    daemon::read::{AliasEndpoint, AliasView, EndpointView, ReadModel},
};

/// One shared copy of each name a published model repeats (service and
/// port names, task ids, hosts).
#[derive(Default)]
struct Names<'a>(std::collections::HashMap<&'a str, Arc<str>>);

impl<'a> Names<'a> {
    fn get(&mut self, name: &'a str) -> Arc<str> {
        self.0
            .entry(name)
            .or_insert_with(|| Arc::from(name))
            .clone()
    }
}

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
        let own = self.host_name();
        let mut names = Names::default();
        let mut aliases = Vec::new();
        for s in &self.state.services {
            let members = all.get(s.spec.name.as_str()).map_or(&[][..], |m| m);
            let family = &s.spec.task_definition;
            let task_definition = match s
                .spec
                .task_definition_revision
                .or_else(|| self.state.task_definitions.get(family).map(|t| t.revision))
            {
                Some(n) => format!("{family}:{n}"),
                None => family.clone(),
            };
            if s.deleting {
                aliases.push(AliasView {
                    row: ServiceRow {
                        service: s.spec.name.clone(),
                        task_definition: task_definition.clone(),
                        namespace: s.spec.namespace.clone(),
                        discovery_name: "-".into(),
                        dns_name: "(deleting: its tasks drain)".into(),
                        service_connect: false,
                        port: 0,
                        vip: "-".into(),
                        protocol: "-".into(),
                        healthy: 0,
                        endpoints: members.len(),
                        new_connections: 0,
                        active_connections: 0,
                        failed_connects: 0,
                    },
                    service_id: None,
                    labels: None,
                    endpoints: Vec::new(),
                });
                continue;
            }
            for a in &s.aliases {
                let (labels, _) = alias_labels(s, a);
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
                            task: names.get(&m.task.id),
                            address: SocketAddr::from((m.address, port)),
                            backend_id: p.backend_id,
                            in_rotation,
                            ejections: u64::from(self.outliers.ejections(p.backend_id)),
                        });
                    }
                }
                aliases.push(AliasView {
                    row: ServiceRow {
                        service: s.spec.name.clone(),
                        task_definition: task_definition.clone(),
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
                        task_definition: task_definition.clone(),
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
        let mut endpoints = Vec::new();
        for m in all.into_values().flatten() {
            let t = m.task;
            let host = if m.local {
                names.get(&own)
            } else {
                names.get(self.state.remote.get(&t.id).map_or("", |h| h.host.as_str()))
            };
            for p in &t.ports {
                endpoints.push(EndpointView {
                    service: names.get(&t.service),
                    task: names.get(&t.id),
                    revision: t.revision,
                    port_name: names.get(&p.name),
                    host: host.clone(),
                    backend_id: p.backend_id,
                    address: SocketAddr::from((m.address, p.port)),
                    state: self.endpoint_state(t, p),
                    ejections: self.outliers.ejections(p.backend_id),
                    ingress_port: p.ingress_port,
                    ingress_ports: p.ingress.clone(),
                    latency: self.health.get(&p.backend_id).map(|h| h.latency.clone()),
                });
            }
        }
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
            // Read live (identities change between models).
            tls: Default::default(),
            admin: self.admin.clone(),
            proxy: ProxyStatus {
                threads: self.proxy.dataplane.threads(),
                egress: self.egress.0.clone(),
                egress_sockets: self.egress.1,
            },
        }
    }
}
