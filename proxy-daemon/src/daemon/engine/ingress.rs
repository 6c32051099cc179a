//! Ingress listeners: other hosts reach this host's L7 tasks through them,
//! one listener per services[] entry and task (its `ingressPortOverride`,
//! else the port it had, else a free one).
//!
//! An apply binds the fixed ports it adds for tasks that already run
//! before anything is stored ([`prebind`], from a [`IngressSnapshot`] taken
//! under the engine's lock): a port that cannot be bound refuses the
//! apply. [`Engine::sync_ingress`] then makes the listeners match the
//! services (after an apply, a task start, a restart).
use std::collections::HashMap;

use proxy_config::{ApplyError, ApplyErrors, ApplyPlan, ServiceSpec};

use super::*;
use crate::proxy::IngressKey;

/// What an apply needs to bind the listeners it adds without the engine's
/// lock: this host's tasks and the listeners they have.
#[derive(Debug, Clone)]
pub struct IngressSnapshot {
    pub address: Ipv4Addr,
    /// (task id, service, its port names).
    pub tasks: Vec<(String, String, Vec<String>)>,
    /// The port of each running listener.
    pub running: BTreeMap<IngressKey, u16>,
}

/// Listeners an apply bound before it was stored, by port.
pub type Prebound = HashMap<u16, std::net::TcpListener>;

/// One listener a task should have.
struct Want<'a> {
    key: IngressKey,
    port_name: &'a str,
    /// The entry's `ingressPortOverride`.
    fixed: Option<u16>,
    service: &'a str,
    /// The entry's index in `services[]` (and in the service's endpoints).
    index: usize,
}

/// The listeners `tasks` (id, service, port names) should have, given
/// each service's spec: every L7 entry, and every TCP entry with tls,
/// whose port the task has.
fn wants<'a, 't>(
    tasks: impl IntoIterator<Item = (&'t str, &'t str, Vec<&'t str>)>,
    spec: impl Fn(&str) -> Option<&'a ServiceSpec>,
) -> Vec<Want<'a>> {
    let mut out = Vec::new();
    for (task, service, ports) in tasks {
        let Some(s) = spec(service).filter(|s| s.enabled) else {
            continue;
        };
        for (index, e) in s.endpoints.iter().enumerate() {
            // L7 entries; TCP ones with tls (callers on other hosts come
            // over mutual TLS).
            if (e.app_protocol.is_l7() || e.tls) && ports.contains(&e.port_name.as_str()) {
                out.push(Want {
                    key: (task.to_string(), e.discovery_name.clone()),
                    port_name: &e.port_name,
                    fixed: e.ingress_port_override,
                    service: &s.name,
                    index,
                });
            }
        }
    }
    out
}

/// Bind, before `plan` is stored, every fixed ingress port it gives a task
/// that already runs here and that no listener of that task's entry holds
/// yet. Refuses the apply (file, JSON path, fix) when a port cannot be
/// bound or two listeners here would need the same one.
pub fn prebind(
    snapshot: &IngressSnapshot,
    state: &ConfigState,
    plan: &ApplyPlan,
) -> Result<Prebound, ApplyErrors> {
    let spec = |name: &str| {
        plan.services
            .iter()
            .find(|s| s.name == name)
            .or_else(|| state.services.get(name).map(|r| &r.spec))
    };
    let tasks = snapshot.tasks.iter().map(|(t, s, ports)| {
        (
            t.as_str(),
            s.as_str(),
            ports.iter().map(String::as_str).collect(),
        )
    });
    let wants = wants(tasks, spec);
    let mut claimed: BTreeMap<u16, &Want> = BTreeMap::new();
    let mut bound = Prebound::new();
    let mut errors = Vec::new();
    for w in &wants {
        let Some(port) = w.fixed else { continue };
        let (file, at) = match plan.sources.get(w.service) {
            Some(src) => (src.file.clone(), src.path.clone()),
            None => (format!("service {:?} (registered)", w.service), "$".into()),
        };
        let mut refuse = |message: String, fix: String| {
            errors.push(ApplyError {
                file: file.clone(),
                path: format!(
                    "{at}.serviceConnectConfiguration.services[{}].ingressPortOverride",
                    w.index
                ),
                message,
                fix,
            })
        };
        if let Some(other) = claimed.get(&port) {
            if other.service == w.service {
                refuse(
                    format!(
                        "tasks {} and {} of service {:?} both run on this host, and ingress port \
                         {port} can serve only one of them",
                        other.key.0, w.key.0, w.service
                    ),
                    format!(
                        "run one task of {:?} per host (knit drain --task {}), or leave \
                         ingressPortOverride out so that knit picks a port per task",
                        w.service, w.key.0
                    ),
                );
            } else {
                refuse(
                    format!(
                        "ingress port {port} is also the ingressPortOverride of service {:?} \
                         (discoveryName {:?}), whose task {} runs on this host",
                        other.service, other.key.1, other.key.0
                    ),
                    "give one of them another ingressPortOverride, or leave it out so that \
                     knit picks a free port"
                        .into(),
                );
            }
            continue;
        }
        claimed.insert(port, w);
        if snapshot.running.get(&w.key) == Some(&port) {
            continue;
        }
        // One of knit's own listeners has it and gives it up in this apply
        // (if it kept it, its entry claims the port too: refused above or
        // below): the sync moves that socket over.
        if snapshot.running.values().any(|p| *p == port) {
            continue;
        }
        match crate::listen::tcp(SocketAddr::from((snapshot.address, port))) {
            Ok(l) => {
                bound.insert(port, l);
            }
            Err(e) => refuse(
                format!(
                    "ingress port {port} cannot be bound on {} for task {} (discoveryName \
                     {:?}): {e}",
                    snapshot.address, w.key.0, w.key.1
                ),
                format!(
                    "free port {port} (something else listens there), choose another \
                     ingressPortOverride, or leave it out so that knit picks a free port"
                ),
            ),
        }
    }
    if errors.is_empty() {
        Ok(bound)
    } else {
        Err(ApplyErrors(errors))
    }
}

/// What a listener's route is built from: another value means a new route.
fn route_of(s: &ServiceRecord, a: &AliasRecord, app: SocketAddr, backend_id: u32) -> String {
    format!(
        "{}|{app}|{backend_id}|{:?}|{:?}",
        a.service_id, a.spec, s.spec.access_log
    )
}

impl Engine {
    /// This host's tasks and their listeners, for [`prebind`].
    pub fn ingress_snapshot(&self) -> IngressSnapshot {
        IngressSnapshot {
            address: self.cfg.host.address,
            tasks: self
                .state
                .tasks
                .values()
                .map(|t| {
                    (
                        t.id.clone(),
                        t.service.clone(),
                        t.ports.iter().map(|p| p.name.clone()).collect(),
                    )
                })
                .collect(),
            running: self
                .ingress
                .running()
                .into_iter()
                .map(|(k, (port, _))| (k, port))
                .collect(),
        }
    }

    /// Make the ingress listeners match the services: one per L7 entry of
    /// each task here, on its `ingressPortOverride` (from `prebound` when
    /// an apply bound it), else the port it had, else a free one; listeners
    /// whose entry is gone stop, those whose route changed get the new one
    /// on the same socket. Records each task's ports. Returns the listeners
    /// that could not start: (task id, why).
    pub(super) fn sync_ingress(&mut self, mut spare: Prebound) -> Vec<(String, String)> {
        let addr = self.cfg.host.address;
        let services: BTreeMap<&str, &ServiceRecord> = self
            .state
            .services
            .iter()
            .map(|s| (s.spec.name.as_str(), s))
            .collect();
        let tasks = self.state.tasks.values().map(|t| {
            (
                t.id.as_str(),
                t.service.as_str(),
                t.ports.iter().map(|p| p.name.as_str()).collect(),
            )
        });
        let wants = wants(tasks, |name| services.get(name).map(|s| &s.spec));
        // Each want with what its route is built from.
        let mut planned = Vec::new();
        for w in &wants {
            let Some(s) = services.get(w.service) else {
                continue;
            };
            let Some(a) = s.aliases.get(w.index) else {
                continue;
            };
            let Some(p) = self
                .state
                .tasks
                .get(&w.key.0)
                .and_then(|t| t.ports.iter().find(|p| p.name == w.port_name))
            else {
                continue;
            };
            let app = SocketAddr::from((addr, p.port));
            let previous = p.ingress_for(&w.key.1);
            planned.push((w, *s, a, app, p.backend_id, previous));
        }
        let fixed: BTreeMap<u16, &IngressKey> = wants
            .iter()
            .filter_map(|w| w.fixed.map(|p| (p, &w.key)))
            .collect();
        // Listeners that stay as they are; the others give up their socket.
        let mut kept: BTreeSet<IngressKey> = BTreeSet::new();
        for (key, (port, built_from)) in self.ingress.running() {
            let keep = planned.iter().any(|(w, s, a, app, id, _)| {
                w.key == key
                    && match w.fixed {
                        Some(p) => p == port,
                        None => fixed.get(&port).is_none_or(|k| **k == key),
                    }
                    && route_of(s, a, *app, *id) == built_from
            });
            if keep {
                kept.insert(key);
            } else if let Some(l) = self.ingress.take(&key) {
                spare.insert(port, l);
            }
        }
        let mut failed = Vec::new();
        let mut assigned: Vec<u16> = Vec::new();
        for (w, s, a, app, backend_id, previous) in planned {
            if kept.contains(&w.key) {
                continue;
            }
            let want = w.fixed.or(previous.filter(|p| !fixed.contains_key(p)));
            let mut socket = match want {
                Some(port) => match spare.remove(&port) {
                    Some(l) => Ok(l),
                    None => match self.ingress.take_inherited(&w.key, Some(port)) {
                        Some(l) => Ok(l),
                        None => crate::listen::tcp(SocketAddr::from((addr, port))),
                    },
                },
                None => match self.ingress.take_inherited(&w.key, None) {
                    Some(l) => Ok(l),
                    None => Err(std::io::ErrorKind::NotFound.into()),
                },
            };
            if socket.is_err() && w.fixed.is_none() {
                // The port it had is taken, or it never had one: any free one.
                socket = self
                    .alloc_port(&assigned)
                    .and_then(|port| crate::listen::tcp(SocketAddr::from((addr, port))));
            }
            let listener = match socket {
                Ok(l) => l,
                Err(e) => {
                    let why = match w.fixed {
                        Some(port) => format!(
                            "the ingress listener of {:?} (ingressPortOverride {port}) cannot \
                             listen on {addr}:{port}: {e}\n  fix: free port {port}, or apply \
                             service {:?} with another ingressPortOverride (or none)",
                            w.key.1, w.service
                        ),
                        None => format!("no port for the ingress listener of {:?}: {e}", w.key.1),
                    };
                    warn!(task = %w.key.0, error = %why, "ingress listener");
                    failed.push((w.key.0.clone(), why));
                    continue;
                }
            };
            let route = build_route(
                s,
                a,
                &[(w.key.0.clone(), app, backend_id)],
                // The sending host chose this task (test lane or not).
                &[],
                RouteParts {
                    health: &mut self.health,
                    budget: self.budgets.entry(a.service_id).or_default().clone(),
                    // Its own cursor: one endpoint, nothing to rotate.
                    cursor: Arc::default(),
                    test_cursor: Arc::default(),
                    pool: self.pools.entry(a.service_id).or_default().clone(),
                    outlier: &self.cfg.outlier,
                    metrics: &self.proxy.metrics,
                    local: self.cfg.host.address,
                    trust_domain: &self.cfg.tls.trust_domain,
                },
            );
            let built_from = route_of(s, a, app, backend_id);
            match self.ingress.start(
                w.key.clone(),
                listener,
                route,
                built_from,
                self.proxy.clone(),
            ) {
                Ok(port) => assigned.push(port),
                Err(e) => {
                    warn!(task = %w.key.0, discovery_name = %w.key.1, error = %e, "could not start the ingress listener");
                    failed.push((
                        w.key.0.clone(),
                        format!("starting an ingress listener: {e}"),
                    ));
                }
            }
        }
        // Record where each task's entries listen now.
        let running = self.ingress.running();
        let mut changed = Vec::new();
        for t in self.state.tasks.values_mut() {
            let before = t.ports.clone();
            for p in &mut t.ports {
                let mine = wants
                    .iter()
                    .filter(|w| w.key.0 == t.id && w.port_name == p.name)
                    .filter_map(|w| running.get(&w.key).map(|(port, _)| (&w.key.1, *port)));
                p.ingress = mine.map(|(d, port)| (d.clone(), port)).collect();
                p.ingress_port = wants
                    .iter()
                    .filter(|w| w.key.0 == t.id && w.port_name == p.name)
                    .find_map(|w| running.get(&w.key).map(|(port, _)| *port));
            }
            if t.ports != before {
                changed.push(t.clone());
            }
        }
        for rec in changed {
            if let Err(e) = self.save_task(&rec) {
                warn!(task = %rec.id, error = %e, "recording the ingress ports");
            }
        }
        failed
    }
}
