//! The daemon's state and every change to it. One `Engine` behind a tokio
//! mutex; each operation updates the registry first (the source of truth
//! that survives a crash), then [`Engine::reconcile`] makes the kernel maps
//! and the hosts block match.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use proxy_config::{DaemonConfig, HealthCheck, OutlierConfig, TaskDefinition};
use tokio::time::Instant;
use tracing::{info, warn};

use super::desired::{self, is_l7, members_by_service};
use crate::{
    cgroup,
    control::{EndpointRow, Response, ServiceRow, StatusReport, TaskPlan},
    datapath::Datapath,
    health::{self, HealthState},
    hosts::HostsFile,
    metrics::{EndpointLabels, ProxyMetrics, ServiceLabels, Snapshot, TargetLabels},
    outlier::Outliers,
    proxy::{
        AliasRoute, Endpoint, EndpointHealth, IngressListeners, Proxy, RetryBudget, RouteTable,
        ServicePool,
    },
    registry::{
        AliasRecord, ConfigState, HostedTask, RegistryError, ServiceRecord, Store, TaskPort,
        TaskRecord, etcd::Etcd, state::ApplySummary,
    },
};

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Keys whose new values are in effect.
    pub applied: Vec<&'static str>,
    /// Keys that changed but take effect at the next start.
    pub need_restart: Vec<&'static str>,
}

/// Which registry holds the shared state.
pub enum Shared {
    /// `store` (one host).
    Embedded,
    /// etcd (a fleet); `store` keeps only this host's tasks.
    Etcd(Arc<Etcd>),
}

/// ECS Service Connect's per-request timeout when the service sets none.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long what is left of an ended task has between SIGTERM and SIGKILL
/// (ECS's default `stopTimeout`).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// ECS Service Connect's idle timeout for HTTP, HTTP/2 and gRPC.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A task that asked to start but never reported running is dropped after this.
const START_GRACE_MS: u64 = 30_000;

pub struct Engine {
    pub cfg: DaemonConfig,
    pub store: Store,
    pub shared: Shared,
    pub dp: Datapath,
    pub hosts: HostsFile,
    /// `<cgroup2 mount>/<cfg.cgroup>`.
    pub cgroup_root: PathBuf,
    pub services: Vec<ServiceRecord>,
    pub task_definitions: BTreeMap<String, TaskDefinition>,
    /// This host's tasks.
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Other hosts' tasks (etcd), by task id.
    pub remote: BTreeMap<String, Arc<HostedTask>>,
    pub outliers: Outliers,
    pub started: Instant,
    last_hosts: Option<BTreeMap<String, BTreeMap<String, Ipv4Addr>>>,
    pub proxy: Arc<Proxy>,
    /// Round-robin cursors of L7 aliases, by alias id (outlive route tables).
    cursors: BTreeMap<u32, Arc<AtomicUsize>>,
    /// Retry budgets of L7 aliases, by alias id.
    budgets: BTreeMap<u32, Arc<RetryBudget>>,
    /// Connections and limits of L7 aliases, by alias id (ingress routes
    /// share them; the limits change in place on every reconcile).
    pools: BTreeMap<u32, Arc<ServicePool>>,
    /// Passive health and in-flight counts of L7 endpoints, by backend id.
    health: BTreeMap<u32, Arc<EndpointHealth>>,
    ingress: IngressListeners,
    /// Cgroups of ended tasks being stopped: (cgroup, SIGKILL deadline).
    stopping: Vec<(PathBuf, Instant)>,
    /// Health-check state of tasks whose task definition has a healthCheck.
    health_checks: BTreeMap<String, HealthState>,
    /// Where the admin HTTP listens (set once bound).
    pub admin: String,
    /// Copies of the egress, admin and control listeners, by name, for a
    /// new daemon that takes over.
    pub listener_fds: Vec<(String, std::os::fd::OwnedFd)>,
    /// Handed over: no more changes; the main loop drains and exits.
    pub retired: bool,
    /// Tells the main loop to retire.
    pub retire_signal: Arc<tokio::sync::Notify>,
}

/// Is this endpoint in rotation now? (Running, its port accepted a
/// connection, not draining, not ejected, healthy if it has a check.)
fn eligible(outliers: &Outliers, t: &TaskRecord, p: &TaskPort) -> bool {
    t.pid.is_some()
        && p.ready
        && !t.draining
        && !outliers.is_ejected(p.backend_id)
        && t.health.is_none_or(|h| h == health::Status::Healthy)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `KNIT_PORT_<NAME>`: the port mapping's name upper-cased, other characters as `_`.
pub fn port_env_name(name: &str) -> String {
    let up: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("KNIT_PORT_{up}")
}

impl Engine {
    pub fn new(
        cfg: DaemonConfig,
        store: Store,
        shared: Shared,
        dp: Datapath,
        cgroup_root: PathBuf,
        proxy: Arc<Proxy>,
        inherited_ingress: std::collections::HashMap<(String, String), std::net::TcpListener>,
    ) -> anyhow::Result<Self> {
        let hosts = HostsFile::new(cfg.hosts_file.clone(), &cfg.cgroup);
        let mut tasks = BTreeMap::new();
        for t in store.tasks()? {
            if cgroup::is_populated(&t.cgroup) {
                info!(task = %t.id, "recovered a running task");
                tasks.insert(t.id.clone(), t);
            } else {
                info!(task = %t.id, "a task ended while the daemon was away; deregistering it");
                store.remove_task(&t.id)?;
                if let Shared::Etcd(etcd) = &shared {
                    etcd.withdraw(&t.id);
                }
                cgroup::remove_tree(&t.cgroup);
            }
        }
        let mut e = Self {
            cfg,
            store,
            shared,
            dp,
            hosts,
            cgroup_root,
            services: Vec::new(),
            task_definitions: BTreeMap::new(),
            tasks,
            remote: BTreeMap::new(),
            outliers: Outliers::default(),
            started: Instant::now(),
            last_hosts: None,
            proxy,
            cursors: BTreeMap::new(),
            budgets: BTreeMap::new(),
            pools: BTreeMap::new(),
            health: BTreeMap::new(),
            ingress: IngressListeners::default(),
            stopping: Vec::new(),
            health_checks: BTreeMap::new(),
            admin: String::new(),
            listener_fds: Vec::new(),
            retired: false,
            retire_signal: Arc::default(),
        };
        e.ingress.inherited = inherited_ingress;
        e.load_shared()?;
        if let Shared::Etcd(etcd) = &e.shared {
            for t in e.tasks.values() {
                etcd.publish(t);
            }
            // Learn this host's fleet index now, so that tasks can start
            // even if etcd goes away later.
            if e.store.host_index()?.is_none() {
                match etcd.host_index() {
                    Ok(i) => e.store.set_host_index(i)?,
                    Err(err) => {
                        warn!(error = %err, "no fleet index yet; tasks start once etcd answers")
                    }
                }
            }
        }
        e.sweep_unknown_cgroups();
        // Recovered tasks keep their last verdict until their next check.
        let recovered: Vec<(String, String, Option<health::Status>)> = e
            .tasks
            .values()
            .map(|t| (t.id.clone(), t.service.clone(), t.health))
            .collect();
        for (id, service, status) in recovered {
            if let (Some(spec), Some(status)) = (e.health_spec(&service), status) {
                e.health_checks
                    .insert(id, HealthState::new(spec, status, Instant::now()));
            }
        }
        let ids: Vec<String> = e.tasks.keys().cloned().collect();
        for id in ids {
            e.start_ingress(&id);
        }
        e.reconcile()?;
        Ok(e)
    }

    /// Is this endpoint in rotation now?
    fn eligible(&self, t: &TaskRecord, p: &TaskPort) -> bool {
        eligible(&self.outliers, t, p)
    }

    /// Read the shared state again (after an apply, or when etcd's view
    /// changed) and route by it.
    fn load_shared(&mut self) -> anyhow::Result<()> {
        let config: ConfigState = match &self.shared {
            Shared::Embedded => self.store.config()?,
            Shared::Etcd(etcd) => {
                let v = etcd.view();
                self.remote = v.remote.clone();
                v.config.clone()
            }
        };
        self.services = config.services.into_values().collect();
        self.task_definitions = config.task_definitions;
        Ok(())
    }

    /// etcd's view changed: route by it.
    pub fn refresh_shared(&mut self) -> anyhow::Result<()> {
        if self.retired {
            return Ok(());
        }
        self.load_shared()?;
        let known: BTreeSet<u32> = self
            .remote
            .values()
            .flat_map(|h| h.task.ports.iter().map(|p| p.backend_id))
            .chain(
                self.tasks
                    .values()
                    .flat_map(|t| t.ports.iter().map(|p| p.backend_id)),
            )
            .collect();
        // Endpoints that left the fleet take their passive health along.
        self.health.retain(|id, _| known.contains(id));
        self.reconcile()
    }

    /// Save one of this host's tasks: locally, and for the fleet.
    fn save_task(&self, rec: &TaskRecord) -> Result<(), crate::registry::RegistryError> {
        self.store.put_task(rec)?;
        if let Shared::Etcd(etcd) = &self.shared {
            etcd.publish(rec);
        }
        Ok(())
    }

    fn endpoint_state(&self, t: &TaskRecord, p: &TaskPort) -> &'static str {
        if t.draining {
            "draining"
        } else if t.pid.is_none() || !p.ready || t.health == Some(health::Status::Starting) {
            "starting"
        } else if t.health == Some(health::Status::Unhealthy) {
            "unhealthy"
        } else if self.outliers.is_ejected(p.backend_id) {
            "ejected"
        } else {
            "healthy"
        }
    }

    /// Make the kernel maps, the proxy's routes and the hosts block match
    /// the registry (see [`desired::desired`]).
    pub fn reconcile(&mut self) -> anyhow::Result<()> {
        let outliers = &self.outliers;
        let d = desired::desired(&desired::Inputs {
            services: &self.services,
            tasks: &self.tasks,
            remote: &self.remote,
            address: self.cfg.host.address,
            eligible: |t: &TaskRecord, p: &TaskPort| eligible(outliers, t, p),
        });
        let mut routes = RouteTable::default();
        let mut l7_ids = BTreeSet::new();
        for r in &d.l7 {
            let s = &self.services[r.service];
            let a = &s.aliases[r.alias];
            l7_ids.insert(a.service_id);
            let route = build_route(
                s,
                a,
                &r.endpoints,
                RouteParts {
                    health: &mut self.health,
                    budget: self.budgets.entry(a.service_id).or_default().clone(),
                    cursor: self.cursors.entry(a.service_id).or_default().clone(),
                    pool: self.pools.entry(a.service_id).or_default().clone(),
                    outlier: &self.cfg.outlier,
                    metrics: &self.proxy.metrics,
                },
            );
            routes.aliases.insert(a.service_id, route);
        }
        self.proxy.routes.store(Arc::new(routes));
        // A service gone (or no longer HTTP): its idle connections go too.
        self.pools.retain(|id, _| l7_ids.contains(id));
        // Each task's cgroup id (its directory's inode) -> its namespace.
        // And for the proxy, who sends: cgroup id -> service (and its
        // access log configuration).
        let mut task_ns: BTreeMap<u64, u32> = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for t in self.tasks.values() {
            let Some(s) = self.services.iter().find(|s| s.spec.name == t.service) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(&t.cgroup) else {
                continue;
            };
            let ino = std::os::unix::fs::MetadataExt::ino(&meta);
            task_ns.insert(ino, s.ns_id);
            sources.insert(
                ino,
                Arc::new(crate::proxy::access::Source {
                    service: t.service.clone(),
                    access_log: s.spec.access_log,
                }),
            );
        }
        self.dp.maps.sync(&d.aliases, &d.backend_ids, &task_ns)?;
        self.proxy.sources.store(Arc::new(sources));
        let names = d.names;
        if self.last_hosts.as_ref() != Some(&names) {
            match self.write_hosts(&names) {
                Ok(()) => self.last_hosts = Some(names),
                Err(e) => {
                    warn!(file = %self.hosts.path().display(), error = %e, "could not update the hosts file")
                }
            }
        }
        Ok(())
    }

    /// The hosts file has every namespace's aliases (the default
    /// namespace's first where two share a name); each namespace's view
    /// only its own.
    fn write_hosts(
        &self,
        names: &BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
    ) -> std::io::Result<()> {
        let mut all: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        let default = self.default_namespace();
        let order = names
            .iter()
            .filter(|(ns, _)| **ns == default)
            .chain(names.iter().filter(|(ns, _)| **ns != default));
        for (_, entries) in order {
            for (name, vip) in entries {
                all.entry(name.clone()).or_insert(*vip);
            }
        }
        self.hosts.write(&all.into_iter().collect::<Vec<_>>())?;
        for (ns, entries) in names {
            let entries: Vec<(String, Ipv4Addr)> =
                entries.iter().map(|(n, v)| (n.clone(), *v)).collect();
            self.hosts.write_view(&self.hosts_view(ns), &entries)?;
        }
        Ok(())
    }

    /// `<state_dir>/hosts/<namespace>`.
    fn hosts_view(&self, namespace: &str) -> PathBuf {
        self.cfg.state_dir.join("hosts").join(namespace)
    }

    fn default_namespace(&self) -> String {
        match &self.shared {
            Shared::Etcd(etcd) => etcd.view().config.default_namespace.clone(),
            Shared::Embedded => self.store.config().ok().and_then(|c| c.default_namespace),
        }
        .unwrap_or_else(|| self.cfg.default_namespace.clone())
    }

    /// Remove our block from the hosts file (clean shutdown).
    pub fn clear_hosts(&mut self) {
        if let Err(e) = self.hosts.write(&[]) {
            warn!(file = %self.hosts.path().display(), error = %e, "could not clean the hosts file");
        }
    }

    pub fn apply(&mut self, files: Vec<(String, String)>) -> Response {
        let files: Vec<(String, Vec<u8>)> = files
            .into_iter()
            .map(|(n, c)| (n, c.into_bytes()))
            .collect();
        let default = self.cfg.default_namespace.clone();
        let plan = |state: &ConfigState| proxy_config::plan(&files, &state.existing(&default));
        let result = match &self.shared {
            Shared::Embedded => {
                self.store
                    .config()
                    .map(|state| plan(&state))
                    .and_then(|p| match p {
                        Ok(p) => self.store.apply(&p).map(Ok),
                        Err(errs) => Ok(Err(errs)),
                    })
            }
            Shared::Etcd(etcd) => etcd.apply(plan),
        };
        self.applied(result)
    }

    /// With etcd: what an apply needs without the engine's lock (the
    /// registry and the default namespace), so that planning and the etcd
    /// transaction run outside it and nothing waits on etcd but the CLI
    /// that applies; [`Engine::applied`] then routes by the result.
    pub fn etcd_apply_handle(&self) -> Option<(Arc<Etcd>, String)> {
        match &self.shared {
            Shared::Etcd(etcd) => Some((etcd.clone(), self.cfg.default_namespace.clone())),
            Shared::Embedded => None,
        }
    }

    /// Route by the result of an apply (made here, or in etcd without the lock).
    pub fn applied(
        &mut self,
        result: Result<Result<ApplySummary, proxy_config::ApplyErrors>, RegistryError>,
    ) -> Response {
        let summary = match result {
            Ok(Ok(s)) => s,
            Ok(Err(errs)) => return Response::bad_input(errs.to_string()),
            Err(e) => return Response::failure(e.to_string()),
        };
        if self.retired {
            // Handed over meanwhile: the new daemon routes by it (etcd's watch).
            return Response::ok(&summary);
        }
        if let Err(e) = self.load_shared() {
            return Response::failure(format!("{e:#}"));
        }
        if let Err(e) = self.reconcile() {
            return Response::failure(format!("applied, but updating the datapath failed: {e:#}"));
        }
        let changed = summary
            .items
            .iter()
            .filter(|i| i.action != "unchanged")
            .count();
        info!(
            changed,
            unchanged = summary.items.len() - changed,
            "applied"
        );
        Response::ok(&summary)
    }

    pub fn task_start(&mut self, service: &str) -> Response {
        let Some(svc) = self.services.iter().find(|s| s.spec.name == service) else {
            let known: Vec<&str> = self.services.iter().map(|s| s.spec.name.as_str()).collect();
            return Response::bad_input(format!(
                "no service {service:?} is registered (known: {})\n  fix: knit apply -f a service definition with \"serviceName\": {service:?}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        };
        let svc_namespace = svc.spec.namespace.clone();
        let Some(td) = self
            .task_definitions
            .get(&svc.spec.task_definition)
            .cloned()
        else {
            return Response::bad_input(format!(
                "service {service:?} uses task definition {:?}, which is not registered\n  fix: knit apply -f its task definition",
                svc.spec.task_definition
            ));
        };
        // Ids come from this host's own counters: a task starts also while
        // etcd is away (once this host has its fleet index).
        let host = match &self.shared {
            Shared::Embedded => None,
            Shared::Etcd(etcd) => {
                let index = match self.store.host_index() {
                    Ok(Some(i)) => i,
                    Ok(None) => match etcd
                        .host_index()
                        .and_then(|i| self.store.set_host_index(i).map(|()| i))
                    {
                        Ok(i) => i,
                        Err(e) => {
                            return Response::failure(format!(
                                "this host has no index in the fleet yet (it gets one from etcd once): {e}"
                            ));
                        }
                    },
                    Err(e) => return Response::failure(e.to_string()),
                };
                Some((etcd.host().to_string(), index))
            }
        };
        let reserved = self.store.reserve_task(
            service,
            td.port_mappings.len(),
            host.as_ref().map(|(n, i)| (n.as_str(), *i)),
        );
        let (task_id, ids) = match reserved {
            Ok(r) => r,
            Err(e) => return Response::failure(e.to_string()),
        };
        let mut ports = Vec::new();
        let mut env = BTreeMap::new();
        for (pm, backend_id) in td.port_mappings.iter().zip(ids) {
            let port = if pm.container_port != 0 {
                // A fixed port serves one task per host: a second would
                // fail to bind, and the readiness probe would see the first.
                let taken = self
                    .tasks
                    .values()
                    .find(|t| t.ports.iter().any(|p| p.port == pm.container_port));
                if let Some(other) = taken {
                    return Response::bad_input(format!(
                        "service {service:?}: port {} (containerPort of port mapping {:?}) is already used by task {} on this host\n  fix: omit containerPort (or set it to 0) so that knit picks a port per task",
                        pm.container_port, pm.name, other.id
                    ));
                }
                pm.container_port
            } else {
                let pending: Vec<u16> = ports.iter().map(|p: &TaskPort| p.port).collect();
                match self.alloc_port(&pending) {
                    Ok(p) => p,
                    Err(e) => return Response::failure(format!("finding a free port: {e}")),
                }
            };
            env.insert(port_env_name(&pm.name), port.to_string());
            ports.push(TaskPort {
                name: pm.name.clone(),
                port,
                backend_id,
                ready: false,
                ingress_port: None,
            });
        }
        let cg = self.cgroup_root.join(service).join(&task_id);
        if let Err(e) = cgroup::ensure(&cg) {
            return Response::failure(e.to_string());
        }
        let rec = TaskRecord {
            id: task_id.clone(),
            service: service.to_string(),
            cgroup: cg.clone(),
            pid: None,
            ports,
            started_unix_ms: now_ms(),
            draining: false,
            drain_started_unix_ms: 0,
            health: None,
        };
        if let Err(e) = self.save_task(&rec) {
            return Response::failure(e.to_string());
        }
        env = self.task_env(&rec);
        self.tasks.insert(task_id.clone(), rec);
        self.start_ingress(&task_id);
        // The kernel must know the task's namespace before it connects.
        if let Err(e) = self.reconcile() {
            return Response::failure(format!("{e:#}"));
        }
        info!(task = %task_id, service, "task starting");
        Response::ok(&TaskPlan {
            task_id,
            cgroup: cg,
            env,
            command: td.command.clone(),
            hosts_view: {
                let view = self.hosts_view(&svc_namespace);
                view.exists().then(|| (view, self.cfg.hosts_file.clone()))
            },
        })
    }

    pub fn task_running(&mut self, task_id: &str, pid: u32) -> Response {
        let Some(service) = self.tasks.get(task_id).map(|t| t.service.clone()) else {
            return Response::bad_input(format!("no task {task_id:?}"));
        };
        let spec = self.health_spec(&service);
        let Some(t) = self.tasks.get_mut(task_id) else {
            return Response::bad_input(format!("no task {task_id:?}"));
        };
        t.pid = Some(pid);
        if let Some(spec) = spec {
            // No traffic before the first passing check.
            t.health = Some(health::Status::Starting);
            self.health_checks.insert(
                task_id.to_string(),
                HealthState::new(spec, health::Status::Starting, Instant::now()),
            );
        }
        let rec = t.clone();
        if let Err(e) = self.save_task(&rec) {
            return Response::failure(e.to_string());
        }
        info!(task = %task_id, pid, "task running");
        Response::ok(&())
    }

    /// Deregister a task and remove its cgroup (killing what is left in it).
    pub fn task_gone(&mut self, task_id: &str, why: &str) -> anyhow::Result<()> {
        let Some(t) = self.tasks.remove(task_id) else {
            return Ok(());
        };
        info!(task = %task_id, why, "deregistering task");
        for p in &t.ports {
            self.outliers.forget(p.backend_id);
            self.health.remove(&p.backend_id);
        }
        self.ingress.stop(task_id);
        self.health_checks.remove(task_id);
        self.reconcile()?;
        // What is left of the task gets SIGTERM now and SIGKILL after the
        // grace period (the monitor sees to it and removes the cgroup).
        // The cgroup is swept at start-up if the daemon dies before that.
        cgroup::signal_all(&t.cgroup, nix::sys::signal::Signal::SIGTERM);
        self.stopping
            .push((t.cgroup.clone(), Instant::now() + STOP_TIMEOUT));
        self.store.remove_task(task_id)?;
        if let Shared::Etcd(etcd) = &self.shared {
            etcd.withdraw(task_id);
        }
        Ok(())
    }

    /// Finish stopping tasks: remove their cgroups once empty, SIGKILL
    /// what outlives the grace period.
    fn reap(&mut self) {
        let now = Instant::now();
        self.stopping.retain(|(cg, deadline)| {
            if !cgroup::is_populated(cg) {
                cgroup::remove_tree(cg);
                return cg.exists();
            }
            if now >= *deadline {
                cgroup::kill_all(cg);
            }
            true
        });
    }

    /// Task cgroups the registry does not know (a daemon that died while
    /// stopping them): stop them the same way.
    fn sweep_unknown_cgroups(&mut self) {
        let known: BTreeSet<PathBuf> = self.tasks.values().map(|t| t.cgroup.clone()).collect();
        let Ok(services) = std::fs::read_dir(&self.cgroup_root) else {
            return;
        };
        for svc in services.flatten().filter(|e| e.path().is_dir()) {
            let Ok(tasks) = std::fs::read_dir(svc.path()) else {
                continue;
            };
            for task in tasks.flatten().filter(|e| e.path().is_dir()) {
                let cg = task.path();
                if !known.contains(&cg) {
                    warn!(cgroup = %cg.display(), "stopping a task cgroup the registry does not know");
                    cgroup::signal_all(&cg, nix::sys::signal::Signal::SIGTERM);
                    self.stopping.push((cg, Instant::now() + STOP_TIMEOUT));
                }
            }
        }
    }

    pub fn drain(&mut self, service: Option<&str>, task: Option<&str>) -> Response {
        let ids: Vec<String> = self
            .tasks
            .values()
            .filter(|t| service.is_none_or(|s| t.service == s) && task.is_none_or(|id| t.id == id))
            .map(|t| t.id.clone())
            .collect();
        if ids.is_empty() {
            return Response::bad_input(format!(
                "nothing to drain: no running task matches {}",
                task.map(|t| format!("task {t:?}"))
                    .or(service.map(|s| format!("service {s:?}")))
                    .unwrap_or_default()
            ));
        }
        for id in &ids {
            if let Some(t) = self.tasks.get_mut(id) {
                if !t.draining {
                    t.draining = true;
                    t.drain_started_unix_ms = now_ms();
                }
                let rec = t.clone();
                if let Err(e) = self.save_task(&rec) {
                    return Response::failure(e.to_string());
                }
            }
        }
        if let Err(e) = self.reconcile() {
            return Response::failure(e.to_string());
        }
        Response::ok(&ids)
    }

    /// Ports that have not accepted a connection yet: (task, port name, port).
    pub fn unready_ports(&self) -> Vec<(String, String, u16)> {
        self.tasks
            .values()
            .filter(|t| t.pid.is_some() && !t.draining)
            .flat_map(|t| {
                t.ports
                    .iter()
                    .filter(|p| !p.ready)
                    .map(|p| (t.id.clone(), p.name.clone(), p.port))
            })
            .collect()
    }

    pub fn mark_ready(&mut self, ready: &[(String, String)]) -> anyhow::Result<()> {
        if self.retired {
            return Ok(());
        }
        for (task, port) in ready {
            if let Some(t) = self.tasks.get_mut(task) {
                for p in t.ports.iter_mut().filter(|p| &p.name == port) {
                    p.ready = true;
                }
                let rec = t.clone();
                self.save_task(&rec)?;
                info!(task = %task, port = %port, "endpoint ready");
            }
        }
        if !ready.is_empty() {
            self.reconcile()?;
        }
        Ok(())
    }

    /// Is every connection and request of a draining task over?
    fn drained(&self, t: &TaskRecord) -> bool {
        t.ports.iter().all(|p| {
            self.dp
                .maps
                .backend_counters(p.backend_id)
                .is_none_or(|c| c.active == 0)
                && self
                    .health
                    .get(&p.backend_id)
                    .is_none_or(|h| h.inflight.load(Ordering::Relaxed) == 0)
        })
    }

    /// Failures in a row of an endpoint: for L7 the 5xx answers and failed
    /// connects the proxy saw, for L4 the failed connects the kernel saw.
    fn consecutive_failures(&self, backend_id: u32, l7: bool) -> Option<u64> {
        if l7 {
            Some(self.health.get(&backend_id).map_or(0, |h| {
                u64::from(h.consecutive_failures.load(Ordering::Relaxed))
            }))
        } else {
            self.dp
                .maps
                .backend_counters(backend_id)
                .map(|c| c.consecutive_failures)
        }
    }

    /// One pass of the monitor: task liveness, draining, outliers.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        if self.retired {
            return Ok(());
        }
        let now = Instant::now();
        let gone: Vec<(String, &'static str)> = self
            .tasks
            .values()
            .filter_map(|t| {
                if t.pid.is_some() && !cgroup::is_populated(&t.cgroup) {
                    Some((t.id.clone(), "its processes exited"))
                } else if t.pid.is_none()
                    && now_ms().saturating_sub(t.started_unix_ms) > START_GRACE_MS
                {
                    Some((t.id.clone(), "it never started"))
                } else if t.draining && self.drained(t) {
                    Some((t.id.clone(), "drained"))
                } else if t.draining
                    && now_ms().saturating_sub(t.drain_started_unix_ms)
                        > self.cfg.proxy.drain_timeout_ms
                {
                    Some((t.id.clone(), "its drain timed out"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in gone {
            self.task_gone(&id, why)?;
        }
        self.reap();
        let returning: Vec<u32> = self.outliers.due(now);
        for id in returning {
            // L7 counts restart from zero (the proxy reports the endpoint
            // again as it crosses the threshold); the kernel's L4 count is
            // not ours to reset, so new failures count from where it is.
            let c = match self.health.get(&id) {
                Some(h) => {
                    h.consecutive_failures.store(0, Ordering::Relaxed);
                    0
                }
                None => self.consecutive_failures(id, false).unwrap_or(0),
            };
            self.outliers.restore(id, c);
        }
        let mut changed = false;
        let cfg = self.cfg.outlier.clone();
        let mut ejections = Vec::new();
        let all = members_by_service(&self.tasks, &self.remote, self.cfg.host.address);
        for s in &self.services {
            let all = all.get(s.spec.name.as_str()).map_or(&[][..], |m| m);
            for a in &s.aliases {
                let members: Vec<u32> = all
                    .iter()
                    .filter(|m| m.task.pid.is_some() && !m.task.draining)
                    .flat_map(|m| {
                        m.task
                            .ports
                            .iter()
                            .filter(|p| p.name == a.spec.port_name && p.ready)
                    })
                    .map(|p| p.backend_id)
                    .collect();
                for id in &members {
                    let Some(consecutive) = self.consecutive_failures(*id, is_l7(a)) else {
                        continue;
                    };
                    ejections.push((
                        s.spec.name.clone(),
                        *id,
                        consecutive,
                        members.clone(),
                        outlier_config(&cfg, a),
                    ));
                }
            }
        }
        for (service, id, consecutive, members, cfg) in ejections {
            let ejected = members
                .iter()
                .filter(|m| self.outliers.is_ejected(**m))
                .count();
            if self
                .outliers
                .observe(&cfg, id, consecutive, members.len(), ejected, now)
            {
                warn!(backend = id, service = %service, failures = consecutive, "ejecting an endpoint that keeps failing");
                changed = true;
            }
        }
        if changed || self.outliers.take_returned() {
            self.reconcile()?;
        }
        Ok(())
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
                        state: self.endpoint_state(t, p).to_string(),
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
            accel: (
                self.cfg.datapath.accelerate,
                self.dp.maps.accelerated_sockets(),
                self.dp.maps.accel_counters(),
            ),
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
                snap.services.push((
                    labels,
                    c.active.min(i64::MAX as u64),
                    c.new_conns,
                    c.bytes_sent + c.bytes_received,
                    c.failed,
                ));
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
                        snap.endpoints.push((
                            endpoint_labels(&target, &t.id, SocketAddr::from((m.address, port))),
                            self.eligible(t, p),
                            u64::from(self.outliers.ejections(p.backend_id)),
                            c.new_conns,
                            c.bytes_sent + c.bytes_received,
                        ));
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

    /// The sockets a new daemon takes over: names and descriptors.
    pub fn handover_fds(&self) -> (Vec<String>, Vec<std::os::fd::BorrowedFd<'_>>) {
        use std::os::fd::AsFd;
        let mut names = Vec::new();
        let mut fds = Vec::new();
        for (name, fd) in &self.listener_fds {
            names.push(name.clone());
            fds.push(fd.as_fd());
        }
        for (name, fd) in self.ingress.fds() {
            names.push(name);
            fds.push(fd);
        }
        (names, fds)
    }

    /// Handed over: stop accepting, stop checking, close the store (a new
    /// daemon opens it next), and tell the main loop.
    pub fn retire(&mut self) {
        self.retired = true;
        self.ingress.stop_all();
        self.health_checks.clear();
        self.store.close();
        self.retire_signal.notify_one();
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let registry = match &self.shared {
            Shared::Embedded => String::new(),
            Shared::Etcd(etcd) => {
                if etcd.view().connected {
                    "; etcd connected".into()
                } else {
                    "; etcd unreachable, serving the last known view".into()
                }
            }
        };
        format!(
            "serving {} services; {} tasks here, {} on other hosts{registry}",
            self.services.len(),
            self.tasks.len(),
            self.remote.len()
        )
    }

    /// A new config from SIGHUP: take what can change while running.
    pub fn reload(&mut self, new: DaemonConfig) -> ReloadReport {
        let mut report = ReloadReport::default();
        let old = self.cfg.clone();
        let mut take = |key: &'static str, changed: bool, live: bool| {
            if changed {
                if live {
                    report.applied.push(key);
                } else {
                    report.need_restart.push(key);
                }
            }
        };
        take(
            "default_namespace",
            old.default_namespace != new.default_namespace,
            true,
        );
        take(
            "outlier.consecutive_failures",
            old.outlier.consecutive_failures != new.outlier.consecutive_failures,
            true,
        );
        take(
            "outlier.base_ejection_ms",
            old.outlier.base_ejection_ms != new.outlier.base_ejection_ms,
            true,
        );
        take(
            "outlier.max_ejection_ms",
            old.outlier.max_ejection_ms != new.outlier.max_ejection_ms,
            true,
        );
        take(
            "outlier.max_ejection_percent",
            old.outlier.max_ejection_percent != new.outlier.max_ejection_percent,
            true,
        );
        take(
            "outlier.interval_ms",
            old.outlier.interval_ms != new.outlier.interval_ms,
            false,
        );
        take(
            "proxy.drain_timeout_ms",
            old.proxy.drain_timeout_ms != new.proxy.drain_timeout_ms,
            true,
        );
        take("log.level", old.log.level != new.log.level, true);
        let accelerate = new.datapath.accelerate && !crate::datapath::accelerate_forced_off();
        take(
            "datapath.accelerate",
            old.datapath.accelerate != accelerate,
            true,
        );
        take("log.format", old.log.format != new.log.format, false);
        take("state_dir", old.state_dir != new.state_dir, false);
        take("bpf_pin_dir", old.bpf_pin_dir != new.bpf_pin_dir, false);
        take("cgroup", old.cgroup != new.cgroup, false);
        take("socket", old.socket != new.socket, false);
        take("hosts_file", old.hosts_file != new.hosts_file, false);
        take("admin", old.admin != new.admin, false);
        take("registry", old.registry != new.registry, false);
        take("host", old.host != new.host, false);
        // What needs a restart keeps its running value.
        let mut cfg = old;
        cfg.default_namespace = new.default_namespace;
        cfg.outlier = proxy_config::OutlierConfig {
            interval_ms: cfg.outlier.interval_ms,
            ..new.outlier
        };
        cfg.proxy = new.proxy;
        cfg.log.level = new.log.level;
        cfg.datapath.accelerate = accelerate;
        if let Err(e) = self.dp.maps.set_accelerate(accelerate) {
            warn!(error = %e, "switching same-host acceleration");
        }
        self.cfg = cfg;
        // Routes carry the failure threshold; the hosts file the default
        // namespace's preference.
        self.last_hosts = None;
        if let Err(e) = self.reconcile() {
            warn!(error = %format!("{e:#}"), "routing after a reload");
        }
        report
    }

    /// This host's name in the registry.
    pub fn host_name(&self) -> String {
        match &self.shared {
            Shared::Etcd(etcd) => etcd.host().to_string(),
            Shared::Embedded => self.cfg.host.name.clone().unwrap_or_default(),
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
            registry: match &self.shared {
                Shared::Embedded => "embedded".into(),
                Shared::Etcd(etcd) => {
                    let v = etcd.view();
                    format!(
                        "etcd as host {:?}: {} (revision {})",
                        etcd.host(),
                        if v.connected {
                            "connected"
                        } else {
                            "unreachable, serving the last known view"
                        },
                        v.revision
                    )
                }
            },
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

impl Engine {
    /// A free port for a task or an ingress listener. Ports already handed
    /// out (which their task may not have bound yet) are skipped, so that
    /// two of knit's listeners never get the same one.
    fn alloc_port(&self, pending: &[u16]) -> std::io::Result<u16> {
        let taken: BTreeSet<u16> = self
            .tasks
            .values()
            .flat_map(|t| t.ports.iter())
            .flat_map(|p| [Some(p.port), p.ingress_port])
            .flatten()
            .chain(pending.iter().copied())
            .collect();
        for _ in 0..64 {
            let port = free_port(self.cfg.host.address)?;
            if !taken.contains(&port) {
                return Ok(port);
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free port found in 64 tries",
        ))
    }

    /// The health check of a service's task definition, if it has one.
    fn health_spec(&self, service: &str) -> Option<HealthCheck> {
        let s = self.services.iter().find(|s| s.spec.name == service)?;
        self.task_definitions
            .get(&s.spec.task_definition)?
            .health_check
            .clone()
    }

    /// The environment of a task (and of its health checks).
    fn task_env(&self, t: &TaskRecord) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = t
            .ports
            .iter()
            .map(|p| (port_env_name(&p.name), p.port.to_string()))
            .collect();
        env.insert("KNIT_TASK_ID".into(), t.id.clone());
        env.insert("KNIT_SERVICE".into(), t.service.clone());
        env.insert(
            "KNIT_HOST_ADDRESS".into(),
            self.cfg.host.address.to_string(),
        );
        env
    }

    /// Health checks to run now: (task, check, cgroup, environment).
    pub fn due_health_checks(
        &mut self,
    ) -> Vec<(String, HealthCheck, PathBuf, BTreeMap<String, String>)> {
        let now = Instant::now();
        let due: Vec<(String, HealthCheck)> = self
            .health_checks
            .iter_mut()
            .filter_map(|(id, h)| h.start_if_due(now).then(|| (id.clone(), h.spec.clone())))
            .collect();
        due.into_iter()
            .filter_map(|(id, spec)| {
                let t = self.tasks.get(&id)?;
                Some((id, spec, t.cgroup.clone(), self.task_env(t)))
            })
            .collect()
    }

    /// A check's result; a change of verdict changes the rotation.
    pub fn record_health(&mut self, task_id: &str, passed: bool) -> anyhow::Result<()> {
        if self.retired {
            return Ok(());
        }
        let Some(h) = self.health_checks.get_mut(task_id) else {
            return Ok(());
        };
        if !h.record(passed, Instant::now()) {
            return Ok(());
        }
        let status = h.status;
        if let Some(t) = self.tasks.get_mut(task_id) {
            t.health = Some(status);
            let rec = t.clone();
            self.save_task(&rec)?;
        }
        info!(task = %task_id, ?status, "health check verdict");
        self.reconcile()
    }

    /// Start ingress listeners for a task's L7 ports (once per port).
    fn start_ingress(&mut self, task_id: &str) {
        let Some(t) = self.tasks.get(task_id).cloned() else {
            return;
        };
        let Some(s) = self.services.iter().find(|s| s.spec.name == t.service) else {
            return;
        };
        let addr = self.cfg.host.address;
        let mut changed = false;
        let mut ports = t.ports.clone();
        let mut assigned: Vec<u16> = Vec::new();
        for p in &mut ports {
            let Some(a) = s
                .aliases
                .iter()
                .find(|a| a.spec.port_name == p.name && is_l7(a))
            else {
                continue;
            };
            let app = SocketAddr::from((addr, p.port));
            let route = build_route(
                s,
                a,
                &[(t.id.clone(), app, p.backend_id)],
                RouteParts {
                    health: &mut self.health,
                    budget: self.budgets.entry(a.service_id).or_default().clone(),
                    // Its own cursor: one endpoint, nothing to rotate.
                    cursor: Arc::default(),
                    pool: self.pools.entry(a.service_id).or_default().clone(),
                    outlier: &self.cfg.outlier,
                    metrics: &self.proxy.metrics,
                },
            );
            // Keep the port a task had (a restarted daemon listens again there).
            let want = match p.ingress_port.or(a.spec.ingress_port_override) {
                Some(port) => port,
                None => match self.alloc_port(&assigned) {
                    Ok(port) => port,
                    Err(e) => {
                        warn!(task = %t.id, error = %e, "no free port for an ingress listener");
                        continue;
                    }
                },
            };
            match self.ingress.start(
                &t.id,
                &p.name,
                SocketAddr::from((addr, want)),
                route,
                self.proxy.clone(),
            ) {
                Ok(port) => {
                    changed |= p.ingress_port != Some(port);
                    p.ingress_port = Some(port);
                    assigned.push(port);
                }
                Err(e) => {
                    warn!(task = %t.id, port = %p.name, error = %e, "could not start the ingress listener")
                }
            }
        }
        if changed && let Some(rec) = self.tasks.get_mut(task_id) {
            rec.ports = ports;
            let rec = rec.clone();
            if let Err(e) = self.save_task(&rec) {
                warn!(task = %task_id, error = %e, "recording the ingress port");
            }
        }
    }
}

/// An alias's per-request timeout: its own, ECS's 15 s default, or none (0).
fn request_timeout(a: &AliasRecord) -> Option<Duration> {
    match a.spec.per_request_timeout_s {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(u64::from(s))),
        None => Some(DEFAULT_REQUEST_TIMEOUT),
    }
}

/// What a route shares with the engine's longer-lived state.
struct RouteParts<'a> {
    health: &'a mut BTreeMap<u32, Arc<EndpointHealth>>,
    budget: Arc<RetryBudget>,
    cursor: Arc<AtomicUsize>,
    pool: Arc<ServicePool>,
    outlier: &'a OutlierConfig,
    metrics: &'a ProxyMetrics,
}

/// The L7 route of alias `a` of service `s` over `endpoints` (task, address,
/// backend id), with its metric series looked up once.
fn build_route(
    s: &ServiceRecord,
    a: &AliasRecord,
    endpoints: &[(String, SocketAddr, u32)],
    parts: RouteParts<'_>,
) -> Arc<AliasRoute> {
    let (labels, target) = alias_labels(s, a);
    let endpoints = endpoints
        .iter()
        .map(|(task, addr, id)| Endpoint {
            backend_id: *id,
            addr: *addr,
            health: parts.health.entry(*id).or_default().clone(),
            requests: parts
                .metrics
                .for_endpoint(&endpoint_labels(&target, task, *addr)),
        })
        .collect();
    parts.pool.limits.set(&a.spec.limits.unwrap_or_default());
    Arc::new(AliasRoute {
        service: s.spec.name.clone(),
        counters: parts.metrics.for_alias(&labels, &target),
        dns_name: a.spec.dns_name.clone(),
        port: a.spec.port,
        protocol: a.spec.app_protocol,
        endpoints,
        request_timeout: request_timeout(a),
        failure_threshold: outlier_config(parts.outlier, a).consecutive_failures,
        idle_timeout: idle_timeout(a),
        cursor: parts.cursor,
        budget: parts.budget,
        pool: parts.pool,
        access_log: s.spec.access_log,
        discovery_name: a.spec.discovery_name.clone(),
    })
}

/// An alias's metric labels: server side and client side.
fn alias_labels(s: &ServiceRecord, a: &AliasRecord) -> (ServiceLabels, TargetLabels) {
    (
        ServiceLabels {
            namespace: s.spec.namespace.clone(),
            service: s.spec.name.clone(),
            discovery_name: a.spec.discovery_name.clone(),
        },
        TargetLabels {
            namespace: s.spec.namespace.clone(),
            service: s.spec.name.clone(),
            target_discovery_name: a.spec.discovery_name.clone(),
        },
    )
}

fn endpoint_labels(t: &TargetLabels, task: &str, addr: SocketAddr) -> EndpointLabels {
    EndpointLabels {
        namespace: t.namespace.clone(),
        service: t.service.clone(),
        target_discovery_name: t.target_discovery_name.clone(),
        task: task.to_string(),
        endpoint: addr.to_string(),
    }
}

/// An alias's outlier detection: the daemon's `[outlier]`, overridden by
/// the service's `outlierDetection` where it sets a value.
fn outlier_config(base: &OutlierConfig, a: &AliasRecord) -> OutlierConfig {
    let mut c = base.clone();
    if let Some(o) = &a.spec.outlier {
        c.consecutive_failures = o.consecutive_failures.unwrap_or(c.consecutive_failures);
        c.base_ejection_ms = o
            .base_ejection_s
            .map_or(c.base_ejection_ms, |s| u64::from(s) * 1000);
        c.max_ejection_ms = o
            .max_ejection_s
            .map_or(c.max_ejection_ms, |s| u64::from(s) * 1000);
        c.max_ejection_percent = o.max_ejection_percent.unwrap_or(c.max_ejection_percent);
    }
    c
}

/// An L7 alias's idle timeout: its own, ECS's 300 s default, or none (0).
fn idle_timeout(a: &AliasRecord) -> Option<Duration> {
    match a.spec.idle_timeout_s {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(u64::from(s))),
        None => Some(DEFAULT_IDLE_TIMEOUT),
    }
}

/// A port nothing listens on now (the kernel's pick for an ephemeral bind).
fn free_port(addr: Ipv4Addr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((addr, 0))?.local_addr()?.port())
}
