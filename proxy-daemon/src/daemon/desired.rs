//! The desired routing state: a pure function of the registry's services,
//! this host's tasks, other hosts' tasks and which endpoints are in
//! rotation. It says what the kernel maps should hold, which endpoints each
//! L7 alias's proxy route has, and which names each namespace resolves;
//! the engine applies it (`Maps::sync` writes only what differs, the route
//! table is swapped, the hosts views rewritten when their names change).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use proxy_common::maps::{BE_VIA_DAEMON, MODE_L4, MODE_L7};
use proxy_config::AppProtocol;

use crate::{
    datapath::DesiredAlias,
    registry::{AliasRecord, HostedTask, ServiceRecord, TaskPort, TaskRecord},
};

/// One task of a service as routing sees it: the record, the address of
/// its host, and whether it runs here.
#[derive(Clone, Copy)]
pub struct Member<'a> {
    pub task: &'a TaskRecord,
    pub address: Ipv4Addr,
    pub local: bool,
}

/// Every task each service has, here and on other hosts: the one walk over
/// both that routing, the tables and the metrics share.
pub fn members_by_service<'a>(
    tasks: &'a BTreeMap<String, TaskRecord>,
    remote: &'a BTreeMap<String, Arc<HostedTask>>,
    address: Ipv4Addr,
) -> BTreeMap<&'a str, Vec<Member<'a>>> {
    let mut out: BTreeMap<&str, Vec<Member>> = BTreeMap::new();
    for t in tasks.values() {
        out.entry(t.service.as_str()).or_default().push(Member {
            task: t,
            address,
            local: true,
        });
    }
    for h in remote.values() {
        out.entry(h.task.service.as_str())
            .or_default()
            .push(Member {
                task: &h.task,
                address: h.address,
                local: false,
            });
    }
    out
}

pub fn is_l7(a: &AliasRecord) -> bool {
    a.spec.app_protocol != AppProtocol::Tcp
}

/// What routing reads: the registry's services, this host's and other
/// hosts' tasks, this host's address, and which endpoints are in rotation.
pub struct Inputs<'a, F: Fn(&TaskRecord, &TaskPort) -> bool> {
    pub services: &'a [ServiceRecord],
    pub tasks: &'a BTreeMap<String, TaskRecord>,
    pub remote: &'a BTreeMap<String, Arc<HostedTask>>,
    pub address: Ipv4Addr,
    /// Is this endpoint in rotation (running, ready, not draining, not
    /// ejected, healthy)?
    pub eligible: F,
}

/// The endpoints of one L7 alias's proxy route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Route {
    /// Indexes into [`Inputs::services`] and that service's aliases.
    pub service: usize,
    pub alias: usize,
    /// (task id, where the proxy connects, backend id): a local task's
    /// port, or the ingress listener of the host that runs it.
    pub endpoints: Vec<(String, SocketAddr, u32)>,
    /// With test traffic rules: the endpoints of tasks of a revision newer
    /// than the one the service pins, which only matching requests reach
    /// (and `endpoints` are the pinned revision's).
    pub test_endpoints: Vec<(String, SocketAddr, u32)>,
}

/// Which requests a task's endpoints get, by its revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Every request (the pinned revision, or no test traffic rules).
    Production,
    /// Only requests matching the alias's test traffic rule.
    Test,
    /// None while the pinned revision has an endpoint in rotation.
    Older,
}

/// The lane of a task of revision `revision` on an alias with (`rule`) or
/// without test traffic rules, of a service that pins `pinned`.
fn lane(rule: bool, pinned: Option<u32>, revision: u32) -> Lane {
    match pinned {
        Some(p) if rule && revision > p => Lane::Test,
        // 0: recorded before revisions were; taken as the pinned one.
        Some(p) if rule && revision != 0 && revision < p => Lane::Older,
        _ => Lane::Production,
    }
}

/// The desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The kernel's aliases and their backends in slot order.
    pub aliases: Vec<DesiredAlias>,
    /// Backends that need counters: every endpoint of every alias, in
    /// rotation or not, and every port of this host's tasks.
    pub backend_ids: BTreeSet<u32>,
    /// The proxy's routes: one per L7 alias and per TCP alias with tls.
    pub l7: Vec<L7Route>,
    /// Per namespace (every namespace with a service), the names its tasks
    /// resolve: DNS name -> VIP.
    pub names: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
}

/// The desired state for `inputs`.
pub fn desired<F: Fn(&TaskRecord, &TaskPort) -> bool>(inputs: &Inputs<'_, F>) -> Desired {
    let mut out = Desired::default();
    let members = members_by_service(inputs.tasks, inputs.remote, inputs.address);
    for (si, s) in inputs.services.iter().enumerate() {
        // Deleted: out of Service Connect (its tasks drain, then go).
        if s.deleting {
            continue;
        }
        let members = members.get(s.spec.name.as_str()).map_or(&[][..], |m| m);
        let names = out.names.entry(s.spec.namespace.clone()).or_default();
        for (ai, a) in s.aliases.iter().enumerate() {
            // The kernel's backends (TCP aliases; L7 ones only when the
            // daemon is gone, failing open): never the test lane's.
            let (mut backends, mut older_backends) = (Vec::new(), Vec::new());
            let (mut endpoints, mut test_endpoints, mut older) =
                (Vec::new(), Vec::new(), Vec::new());
            let rule = a.spec.test_traffic.is_some();
            for m in members {
                for p in m.task.ports.iter().filter(|p| p.name == a.spec.port_name) {
                    out.backend_ids.insert(p.backend_id);
                    if !(inputs.eligible)(m.task, p) {
                        continue;
                    }
                    let lane = lane(rule, s.spec.task_definition_revision, m.task.revision);
                    // Another host's L7 endpoint, or any endpoint of
                    // another host of an entry with tls: that entry's own
                    // ingress listener there.
                    let port = if m.local {
                        Some(p.port)
                    } else {
                        p.ingress_for(&a.spec.discovery_name)
                    };
                    // With tls, another host's endpoint is reached only
                    // through this daemon and its ingress listener there
                    // (none yet: not a backend yet).
                    let flags = if a.spec.tls && !m.local {
                        BE_VIA_DAEMON
                    } else {
                        0
                    };
                    if flags == 0 || port.is_some() {
                        let backend = (m.address, p.port, p.backend_id, flags);
                        match lane {
                            Lane::Production => backends.push(backend),
                            Lane::Older => older_backends.push(backend),
                            Lane::Test => {}
                        }
                    }
                    if let Some(port) = port {
                        let e = (
                            m.task.id.clone(),
                            SocketAddr::from((m.address, port)),
                            p.backend_id,
                        );
                        match lane {
                            Lane::Production => endpoints.push(e),
                            Lane::Test => test_endpoints.push(e),
                            Lane::Older => older.push(e),
                        }
                    }
                }
            }
            // Older revisions serve only while the pinned one has nothing.
            if endpoints.is_empty() {
                endpoints = older;
            }
            if backends.is_empty() {
                backends = older_backends;
            }
            // L7 aliases; and TCP ones with tls (the daemon carries their
            // connections to other hosts).
            if is_l7(a) || a.spec.tls {
                out.l7.push(L7Route {
                    service: si,
                    alias: ai,
                    endpoints,
                    test_endpoints,
                });
            }
            out.aliases.push(DesiredAlias {
                vip: a.vip,
                port: a.spec.port,
                service_id: a.service_id,
                ns_id: s.ns_id,
                mode: if is_l7(a) { MODE_L7 } else { MODE_L4 },
                backends,
            });
            names.insert(a.spec.dns_name.clone(), a.vip);
        }
    }
    out.backend_ids.extend(
        inputs
            .tasks
            .values()
            .flat_map(|t| t.ports.iter().map(|p| p.backend_id)),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    const HERE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const THERE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A service in `ns` with one alias `dns:port` on port mapping `web`
    /// (`protocol`: "tcp" or "http"); `aliases: false` makes it client-only.
    fn service(name: &str, ns: &str, ns_id: u32, id: u32, protocol: &str) -> ServiceRecord {
        let spec = json!({
            "name": name, "task_definition": name, "namespace": ns,
            "endpoints": [{
                "port_name": "web", "discovery_name": name, "dns_name": name, "port": 80,
                "app_protocol": protocol, "container_port": 0,
            }],
        });
        let spec: proxy_config::ServiceSpec = match serde_json::from_value(spec) {
            Ok(s) => s,
            Err(e) => panic!("a service spec: {e}"),
        };
        let aliases = spec
            .endpoints
            .iter()
            .map(|e| AliasRecord {
                spec: e.clone(),
                service_id: id,
                vip: Ipv4Addr::new(127, 255, 0, id as u8),
            })
            .collect();
        ServiceRecord {
            spec,
            ns_id,
            aliases,
            deleting: false,
            deleted_unix_ms: 0,
        }
    }

    fn client_only(name: &str, ns: &str, ns_id: u32) -> ServiceRecord {
        let mut s = service(name, ns, ns_id, 0, "tcp");
        s.spec.endpoints.clear();
        s.aliases.clear();
        s
    }

    fn task(id: &str, service: &str, port: u16, backend_id: u32) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            service: service.into(),
            cgroup: PathBuf::from("/nonexistent"),
            pid: Some(1),
            ports: vec![TaskPort {
                name: "web".into(),
                port,
                backend_id,
                ready: true,
                ingress_port: Some(port + 1000),
                ingress: BTreeMap::new(),
            }],
            started_unix_ms: 0,
            draining: false,
            drain_started_unix_ms: 0,
            health: None,
            revision: 1,
        }
    }

    struct World {
        services: Vec<ServiceRecord>,
        tasks: BTreeMap<String, TaskRecord>,
        remote: BTreeMap<String, Arc<HostedTask>>,
    }

    impl World {
        fn new(services: Vec<ServiceRecord>, tasks: Vec<TaskRecord>) -> Self {
            Self {
                services,
                tasks: tasks.into_iter().map(|t| (t.id.clone(), t)).collect(),
                remote: BTreeMap::new(),
            }
        }

        fn remote(mut self, t: TaskRecord) -> Self {
            self.remote.insert(
                t.id.clone(),
                Arc::new(HostedTask {
                    host: "h2".into(),
                    address: THERE,
                    task: t,
                }),
            );
            self
        }

        /// The desired state, with the engine's rule of rotation minus
        /// outliers, plus `ejected` backends out.
        fn desired(&self, ejected: &[u32]) -> Desired {
            desired(&Inputs {
                services: &self.services,
                tasks: &self.tasks,
                remote: &self.remote,
                address: HERE,
                eligible: |t: &TaskRecord, p: &TaskPort| {
                    t.pid.is_some()
                        && p.ready
                        && !t.draining
                        && !ejected.contains(&p.backend_id)
                        && t.health.is_none_or(|h| h == crate::health::Status::Healthy)
                },
            })
        }
    }

    fn backends(d: &Desired, service_id: u32) -> Vec<u32> {
        d.aliases
            .iter()
            .find(|a| a.service_id == service_id)
            .map(|a| a.backends.iter().map(|b| b.2).collect())
            .unwrap_or_default()
    }

    #[test]
    fn namespaces_resolve_only_their_own_names() {
        let w = World::new(
            vec![
                service("db", "prod", 1, 1, "tcp"),
                service("db", "test", 2, 2, "tcp"),
                client_only("app", "staging", 3),
            ],
            vec![],
        );
        let d = w.desired(&[]);
        assert_eq!(d.names["prod"]["db"], Ipv4Addr::new(127, 255, 0, 1));
        assert_eq!(d.names["test"]["db"], Ipv4Addr::new(127, 255, 0, 2));
        // A namespace with only a client-only service still gets its
        // (empty) view: its tasks resolve nothing of the others'.
        assert!(d.names["staging"].is_empty());
        let ns: Vec<u32> = d.aliases.iter().map(|a| a.ns_id).collect();
        assert_eq!(ns, [1, 2]);
    }

    #[test]
    fn client_only_services_have_no_alias_and_their_tasks_counters() {
        let w = World::new(
            vec![client_only("app", "default", 1)],
            vec![task("app-1", "app", 5000, 9)],
        );
        let d = w.desired(&[]);
        assert!(d.aliases.is_empty() && d.l7.is_empty());
        assert!(d.backend_ids.contains(&9));
    }

    #[test]
    fn only_ready_healthy_undrained_unejected_endpoints_are_in_rotation() {
        let mut not_ready = task("db-2", "db", 5002, 2);
        not_ready.ports[0].ready = false;
        let mut draining = task("db-3", "db", 5003, 3);
        draining.draining = true;
        let mut unhealthy = task("db-4", "db", 5004, 4);
        unhealthy.health = Some(crate::health::Status::Unhealthy);
        let mut starting = task("db-5", "db", 5005, 5);
        starting.pid = None;
        let ejected = task("db-6", "db", 5006, 6);
        let w = World::new(
            vec![service("db", "default", 1, 1, "tcp")],
            vec![
                task("db-1", "db", 5001, 1),
                not_ready,
                draining,
                unhealthy,
                starting,
                ejected,
                task("db-7", "db", 5007, 7),
            ],
        );
        let d = w.desired(&[6]);
        assert_eq!(backends(&d, 1), [1, 7]);
        // Every endpoint keeps its counters, in rotation or not.
        assert_eq!(d.backend_ids, (1..=7).collect());
        assert_eq!(d.aliases[0].mode, MODE_L4);
    }

    #[test]
    fn other_hosts_endpoints_route_to_their_address_and_ingress() {
        let w = World::new(
            vec![
                service("db", "default", 1, 1, "tcp"),
                service("web", "default", 1, 2, "http"),
            ],
            vec![task("db-1", "db", 5001, 1), task("web-1", "web", 6001, 3)],
        )
        .remote(task("db-2", "db", 5002, 2))
        .remote(task("web-2", "web", 6002, 4));
        let d = w.desired(&[]);
        let db = &d.aliases[0];
        assert_eq!(
            db.backends,
            [(HERE, 5001, 1, 0), (THERE, 5002, 2, 0)],
            "TCP goes host to host in the kernel, to the app's port"
        );
        assert_eq!(d.aliases[1].mode, MODE_L7);
        assert_eq!(d.l7.len(), 1);
        assert_eq!(
            d.l7[0].endpoints,
            [
                ("web-1".to_string(), SocketAddr::from((HERE, 6001)), 3),
                // Another host's L7 endpoint: its host's ingress listener.
                ("web-2".to_string(), SocketAddr::from((THERE, 7002)), 4),
            ]
        );
        // An ejected remote endpoint leaves both the kernel and the proxy.
        let d = w.desired(&[4]);
        assert_eq!(d.l7[0].endpoints.len(), 1);
        assert_eq!(backends(&d, 2), [3]);
    }

    #[test]
    fn with_tls_other_hosts_endpoints_are_reached_only_through_the_daemon() {
        let mut db = service("db", "default", 1, 1, "tcp");
        db.aliases[0].spec.tls = true;
        let mut web = service("web", "default", 1, 2, "http");
        web.aliases[0].spec.tls = true;
        let mut db2 = task("db-2", "db", 5002, 2);
        db2.ports[0].ingress = BTreeMap::from([("db".into(), 7102)]);
        let mut db3 = task("db-3", "db", 5003, 5);
        // An older daemon's task: no ingress listener of db, so no way to
        // reach it over mutual TLS.
        db3.ports[0].ingress_port = None;
        let w = World::new(
            vec![db, web],
            vec![task("db-1", "db", 5001, 1), task("web-1", "web", 6001, 3)],
        )
        .remote(db2)
        .remote(db3)
        .remote(task("web-2", "web", 6002, 4));
        let d = w.desired(&[]);
        assert_eq!(
            d.aliases[0].backends,
            [(HERE, 5001, 1, 0), (THERE, 5002, 2, BE_VIA_DAEMON)],
            "same host in the kernel; the other host only through the daemon"
        );
        assert_eq!(d.aliases[0].mode, MODE_L4);
        // The daemon's route of the TCP alias: the other host's ingress.
        assert_eq!(
            d.l7[0].endpoints,
            [
                ("db-1".to_string(), SocketAddr::from((HERE, 5001)), 1),
                ("db-2".to_string(), SocketAddr::from((THERE, 7102)), 2),
            ]
        );
        // An L7 alias's backends (the kernel's fail-open path) never send
        // another host's traffic around the daemon.
        assert_eq!(
            d.aliases[1].backends,
            [(HERE, 6001, 3, 0), (THERE, 6002, 4, BE_VIA_DAEMON)]
        );
    }

    #[test]
    fn each_entry_of_a_remote_port_goes_to_its_own_ingress_listener() {
        // Two entries (discovery names "web" and "web-b") on port `web`.
        let mut s = service("web", "default", 1, 2, "http");
        let mut second = s.aliases[0].clone();
        second.spec.discovery_name = "web-b".into();
        second.spec.dns_name = "web-b".into();
        second.service_id = 3;
        s.spec.endpoints.push(second.spec.clone());
        s.aliases.push(second);
        let mut t = task("web-2", "web", 6002, 4);
        t.ports[0].ingress = BTreeMap::from([("web".into(), 7100), ("web-b".into(), 7101)]);
        let d = World::new(vec![s.clone()], vec![]).remote(t).desired(&[]);
        let ports: Vec<u16> = d.l7.iter().map(|r| r.endpoints[0].1.port()).collect();
        assert_eq!(ports, [7100, 7101]);
        // A task of a daemon before per-entry listeners: its one listener.
        let d = World::new(vec![s], vec![])
            .remote(task("web-3", "web", 6003, 5))
            .desired(&[]);
        let ports: Vec<u16> = d.l7.iter().map(|r| r.endpoints[0].1.port()).collect();
        assert_eq!(ports, [7003, 7003]);
    }

    #[test]
    fn a_remote_l7_endpoint_without_an_ingress_listener_is_not_proxied_to() {
        let mut t = task("web-2", "web", 6002, 4);
        t.ports[0].ingress_port = None;
        let w = World::new(vec![service("web", "default", 1, 2, "http")], vec![]).remote(t);
        let d = w.desired(&[]);
        assert!(d.l7[0].endpoints.is_empty());
        assert_eq!(backends(&d, 2), [4]);
    }

    #[test]
    fn test_traffic_lanes_by_revision() {
        // Without a rule or a pin every revision serves (a rolling deploy).
        assert_eq!(lane(false, Some(1), 2), Lane::Production);
        assert_eq!(lane(true, None, 5), Lane::Production);
        assert_eq!(lane(true, Some(1), 2), Lane::Test);
        assert_eq!(lane(true, Some(2), 2), Lane::Production);
        assert_eq!(lane(true, Some(2), 1), Lane::Older);
        assert_eq!(lane(true, Some(2), 0), Lane::Production);
    }
}
