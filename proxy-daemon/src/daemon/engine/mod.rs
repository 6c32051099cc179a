//! The daemon's state and every change to it. One `Engine` behind a tokio
//! mutex; each operation updates the registry first (the source of truth
//! that survives a crash), then [`Engine::reconcile`] applies the desired
//! state (`daemon/desired.rs`) to the kernel maps, the proxy's routes and
//! the hosts block.
//!
//! Here: start-up and recovery, the registry (embedded or etcd), applies,
//! reconcile, reload and handover. Each other job has a file of its own:
//! `tasks` (lifecycle: start, running, gone, drain, readiness), `checks`
//! (health checks), `ingress` (listeners for other hosts), `outliers` (the
//! monitor's ejection pass), `routes` (one L7 alias's proxy route),
//! `views` (the read model it publishes after each change, for readers
//! that never take the lock: `daemon/read.rs`).
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

use proxy_common::maps::{DENY_AUDIT, DENY_ENFORCE, EdgeKey, MODE_L4};
use proxy_config::{DaemonConfig, HealthCheck, OutlierConfig, TaskDefinition};
use tokio::time::Instant;
use tracing::{info, warn};

mod checks;
mod ingress;
mod outliers;
mod routes;
mod tasks;
mod views;

pub use ingress::{IngressSnapshot, Prebound};
use routes::{RouteParts, alias_labels, build_route, outlier_config};

use super::{
    desired::{self, is_l7, members_by_service},
    error::EngineError,
    read::Reader,
};
use crate::{
    cgroup,
    control::{ServiceRow, StatusReport, TaskPlan},
    datapath::Datapath,
    health::{self, HealthState},
    hosts::HostsFile,
    metrics::{EndpointLabels, ProxyMetrics, ServiceLabels, TargetLabels},
    outlier::Outliers,
    proxy::{
        AliasRoute, Endpoint, EndpointHealth, IngressListeners, Proxy, RetryBudget, RouteTable,
        ServicePool,
    },
    registry::{
        AliasRecord, ConfigState, HostedTask, Registry, RegistryError, ServiceRecord, TaskPort,
        TaskRecord,
        etcd::Etcd,
        state::{ApplySummary, DeleteTarget},
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

/// ECS Service Connect's per-request timeout when the service sets none.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long what is left of a task the registry does not know has between
/// SIGTERM and SIGKILL (ECS's default `stopTimeout`; a known task's comes
/// from its task definition).
const STOP_TIMEOUT: Duration = Duration::from_secs(TaskDefinition::DEFAULT_STOP_TIMEOUT_S as u64);
/// ECS Service Connect's idle timeout for HTTP, HTTP/2 and gRPC.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How often a deleted service's release is tried (it waits on etcd).
const RELEASE_EVERY: Duration = Duration::from_secs(2);

/// A task that asked to start but never reported running is dropped after this.
const START_GRACE_MS: u64 = 30_000;

/// The plain state the engine routes by, nothing else: what the registry
/// holds (services, task definitions), this host's tasks and other hosts'
/// tasks. [`desired::desired`] and the read model are functions of it (and
/// of which endpoints are in rotation).
#[derive(Default)]
pub struct State {
    pub services: Vec<ServiceRecord>,
    /// Each family's newest revision.
    pub task_definitions: BTreeMap<String, TaskDefinition>,
    /// Every revision registered, by `family:N`.
    pub revisions: BTreeMap<String, TaskDefinition>,
    /// This host's tasks.
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Other hosts' tasks (etcd), by task id.
    pub remote: BTreeMap<String, Arc<HostedTask>>,
}

impl State {
    /// Active revision `revision` of `family` (`None`: the newest): what
    /// a new task may run.
    pub fn task_definition(&self, family: &str, revision: Option<u32>) -> Option<&TaskDefinition> {
        match revision {
            None => self.task_definitions.get(family),
            Some(n) => self.any_revision(family, n).filter(|t| !t.inactive),
        }
    }

    /// Revision `n` of `family`, deleted (inactive) or not: what a task
    /// that runs it goes by.
    pub fn any_revision(&self, family: &str, n: u32) -> Option<&TaskDefinition> {
        self.task_definitions
            .get(family)
            .filter(|t| t.revision == n)
            .or_else(|| {
                self.revisions
                    .get(&crate::registry::state::revision_key(family, n))
            })
    }

    /// The active revisions of `family`, in order.
    pub fn revision_numbers(&self, family: &str) -> Vec<u32> {
        let mut out: BTreeSet<u32> = self
            .revisions
            .values()
            .filter(|t| t.family == family && !t.inactive)
            .map(|t| t.revision)
            .collect();
        out.extend(self.task_definitions.get(family).map(|t| t.revision));
        out.into_iter().collect()
    }

    /// Every task of each service, this host's and other hosts': the one
    /// walk that routing, the read model and the outlier pass share.
    pub fn members(&self, address: Ipv4Addr) -> BTreeMap<&str, Vec<desired::Member<'_>>> {
        members_by_service(&self.tasks, &self.remote, address)
    }
}

pub struct Engine {
    pub cfg: DaemonConfig,
    /// The embedded store or etcd, behind one face.
    pub registry: Registry,
    pub dp: Datapath,
    pub hosts: HostsFile,
    /// `<cgroup2 mount>/<cfg.cgroup>`.
    pub cgroup_root: PathBuf,
    /// What it routes by.
    pub state: State,
    pub outliers: Outliers,
    /// What readers see (published after every change).
    pub reader: Arc<Reader>,
    last_hosts: Option<BTreeMap<String, BTreeMap<String, Ipv4Addr>>>,
    pub proxy: Arc<Proxy>,
    /// Round-robin cursors of L7 aliases, by alias id (outlive route tables).
    cursors: BTreeMap<u32, Arc<AtomicUsize>>,
    /// The same for their test lanes.
    test_cursors: BTreeMap<u32, Arc<AtomicUsize>>,
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
    /// The kernel's failed-connect count of each TCP alias at the last
    /// outlier pass (an alias whose count did not grow is not looked into).
    l4_failed_seen: BTreeMap<u32, u64>,
    /// The (task, alias) pairs the kernel refuses (or audits) at connect,
    /// with their metric labels and the count already exported.
    denials: BTreeMap<EdgeKey, (crate::metrics::DeniedLabels, u64)>,
    /// Health-check state of tasks whose task definition has a healthCheck.
    health_checks: BTreeMap<String, HealthState>,
    /// Where the admin HTTP listens (set once bound).
    pub admin: String,
    /// The egress listener's address and how many sockets its group has.
    pub egress: (String, usize),
    /// Copies of the egress, admin and control listeners, by name, for a
    /// new daemon that takes over.
    pub listener_fds: Vec<(String, std::os::fd::OwnedFd)>,
    /// When a deleted service's release was last tried.
    last_release: Option<Instant>,
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

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    pub fn new(
        cfg: DaemonConfig,
        registry: Registry,
        dp: Datapath,
        cgroup_root: PathBuf,
        proxy: Arc<Proxy>,
        inherited_ingress: std::collections::HashMap<(String, String), std::net::TcpListener>,
    ) -> anyhow::Result<Self> {
        let hosts = HostsFile::new(cfg.hosts_file.clone(), &cfg.cgroup);
        let mut tasks = BTreeMap::new();
        for t in registry.store.tasks()? {
            if cgroup::is_populated(&t.cgroup) {
                info!(task = %t.id, "recovered a running task");
                tasks.insert(t.id.clone(), t);
            } else {
                info!(task = %t.id, "a task ended while the daemon was away; deregistering it");
                registry.remove_task(&t.id)?;
                cgroup::remove_tree(&t.cgroup);
            }
        }
        let reader = Arc::new(Reader::new(
            dp.maps.live_counters()?,
            crate::daemon::edges::EdgeBook::new(dp.maps.edge_map()?),
            dp.maps.heartbeat_handle(),
            proxy.clone(),
            registry.etcd().cloned(),
        ));
        let mut e = Self {
            cfg,
            registry,
            dp,
            hosts,
            cgroup_root,
            state: State {
                tasks,
                ..State::default()
            },
            outliers: Outliers::default(),
            reader,
            last_hosts: None,
            proxy,
            cursors: BTreeMap::new(),
            test_cursors: BTreeMap::new(),
            budgets: BTreeMap::new(),
            pools: BTreeMap::new(),
            health: BTreeMap::new(),
            ingress: IngressListeners::default(),
            stopping: Vec::new(),
            health_checks: BTreeMap::new(),
            l4_failed_seen: BTreeMap::new(),
            denials: BTreeMap::new(),
            admin: String::new(),
            egress: (String::new(), 0),
            listener_fds: Vec::new(),
            last_release: None,
            retired: false,
            retire_signal: Arc::default(),
        };
        e.ingress.inherited = inherited_ingress;
        e.load_shared()?;
        e.registry.publish_all(e.state.tasks.values());
        // Learn this host's fleet index now, so that tasks can start even
        // if etcd goes away later.
        if let Err(err) = e.registry.fleet_host() {
            warn!(error = %err, "no fleet index yet; tasks start once etcd answers");
        }
        e.sweep_unknown_cgroups();
        // Recovered tasks keep their last verdict until their next check.
        let recovered: Vec<(String, Option<HealthCheck>, Option<health::Status>)> = e
            .state
            .tasks
            .values()
            .map(|t| (t.id.clone(), e.health_spec(t), t.health))
            .collect();
        for (id, spec, status) in recovered {
            if let (Some(spec), Some(status)) = (spec, status) {
                e.health_checks
                    .insert(id, HealthState::new(spec, status, Instant::now()));
            }
        }
        // A failed listener is logged; its task keeps serving this host.
        let _ = e.sync_ingress(ingress::Prebound::new());
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
        let shared = self.registry.shared()?;
        self.state.remote = shared.remote;
        self.state.services = shared.config.services.into_values().collect();
        // `[tls] namespaces`: every entry of those namespaces' services
        // as if it had ECS's tls block.
        for s in &mut self.state.services {
            if self.cfg.tls.namespaces.contains(&s.spec.namespace) {
                for e in &mut s.spec.endpoints {
                    e.tls = true;
                }
                for a in &mut s.aliases {
                    a.spec.tls = true;
                }
            }
        }
        self.state.task_definitions = shared.config.task_definitions;
        self.state.revisions = shared.config.revisions;
        Ok(())
    }

    /// etcd's view changed: route by it.
    pub fn refresh_shared(&mut self) -> anyhow::Result<()> {
        if self.retired {
            return Ok(());
        }
        self.load_shared()?;
        let known: BTreeSet<u32> = self
            .state
            .remote
            .values()
            .flat_map(|h| h.task.ports.iter().map(|p| p.backend_id))
            .chain(
                self.state
                    .tasks
                    .values()
                    .flat_map(|t| t.ports.iter().map(|p| p.backend_id)),
            )
            .collect();
        // Endpoints that left the fleet take their passive health along.
        self.health.retain(|id, _| known.contains(id));
        self.reconcile()
    }

    /// Save one of this host's tasks: locally, and for the fleet.
    fn save_task(&self, rec: &TaskRecord) -> Result<(), RegistryError> {
        self.registry.save_task(rec)
    }

    /// Make the kernel maps, the proxy's routes and the hosts block match
    /// the registry (see [`desired::desired`]).
    pub fn reconcile(&mut self) -> anyhow::Result<()> {
        let outliers = &self.outliers;
        let d = desired::desired(&desired::Inputs {
            services: &self.state.services,
            tasks: &self.state.tasks,
            remote: &self.state.remote,
            address: self.cfg.host.address,
            eligible: |t: &TaskRecord, p: &TaskPort| eligible(outliers, t, p),
        });
        let mut routes = RouteTable::default();
        let mut l7_ids = BTreeSet::new();
        for r in &d.l7 {
            let s = &self.state.services[r.service];
            let a = &s.aliases[r.alias];
            l7_ids.insert(a.service_id);
            let route = build_route(
                s,
                a,
                &r.endpoints,
                &r.test_endpoints,
                RouteParts {
                    health: &mut self.health,
                    budget: self.budgets.entry(a.service_id).or_default().clone(),
                    cursor: self.cursors.entry(a.service_id).or_default().clone(),
                    test_cursor: self.test_cursors.entry(a.service_id).or_default().clone(),
                    pool: self.pools.entry(a.service_id).or_default().clone(),
                    outlier: &self.cfg.outlier,
                    metrics: &self.proxy.metrics,
                    local: self.cfg.host.address,
                    trust_domain: &self.cfg.tls.trust_domain,
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
        // The services this host runs: each has an identity here (mutual
        // TLS with other hosts).
        let mut identities = BTreeSet::new();
        for t in self.state.tasks.values() {
            // A task of a service not in Service Connect has no namespace:
            // the kernel refuses it every VIP.
            let Some(s) = self
                .state
                .services
                .iter()
                .find(|s| s.spec.name == t.service && s.spec.enabled)
            else {
                continue;
            };
            identities.insert((s.spec.namespace.clone(), s.spec.name.clone()));
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
        self.proxy.tls.set_wanted(identities);
        // Counted before pairs of tasks that ended leave the kernel.
        self.count_denials();
        let deny = self.denied_pairs(&sources, &task_ns);
        // The edge book learns who the tasks are before the kernel lets
        // them connect.
        self.reader.remember_sources(&sources);
        let rest = crate::datapath::reconcile::DesiredRest {
            backend_ids: d.backend_ids,
            task_ns,
            deny: deny.iter().map(|(k, (action, _))| (*k, *action)).collect(),
        };
        self.dp.maps.sync(&d.aliases, &rest)?;
        self.denials.retain(|k, _| deny.contains_key(k));
        for (k, (_, labels)) in deny {
            match self.denials.get_mut(&k) {
                Some(d) => d.0 = labels,
                None => {
                    self.denials.insert(k, (labels, 0));
                }
            }
        }
        // Aliases gone (or no longer TCP) leave no failed-connect count behind.
        let l4: BTreeSet<u32> = d
            .aliases
            .iter()
            .filter(|a| a.mode == MODE_L4)
            .map(|a| a.service_id)
            .collect();
        self.l4_failed_seen.retain(|id, _| l4.contains(id));
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
        self.publish();
        Ok(())
    }

    /// The (task, alias) pairs the kernel refuses at connect (or counts,
    /// in audit mode): every alias with `allowedClients` and every task of
    /// its namespace here whose service is not on the list; with the
    /// action and the labels its count is exported under.
    fn denied_pairs(
        &self,
        sources: &BTreeMap<u64, Arc<crate::proxy::access::Source>>,
        task_ns: &BTreeMap<u64, u32>,
    ) -> BTreeMap<EdgeKey, (u32, crate::metrics::DeniedLabels)> {
        let mut out = BTreeMap::new();
        for s in self.state.services.iter().filter(|s| !s.deleting) {
            for a in &s.aliases {
                let Some(list) = &a.spec.allowed_clients else {
                    continue;
                };
                let audit = a.spec.allowed_clients_audit;
                for (cgroup, source) in sources {
                    if task_ns.get(cgroup) != Some(&s.ns_id)
                        || list.iter().any(|c| *c == source.service)
                    {
                        continue;
                    }
                    let key = EdgeKey {
                        cgroup_id: *cgroup,
                        service_id: a.service_id,
                        _pad: 0,
                    };
                    let labels = crate::metrics::DeniedLabels {
                        namespace: s.spec.namespace.clone(),
                        service: s.spec.name.clone(),
                        target_discovery_name: a.spec.discovery_name.clone(),
                        client_service: source.service.clone(),
                        at: "connect".into(),
                        mode: if audit { "audit" } else { "enforce" }.into(),
                    };
                    out.insert(key, (if audit { DENY_AUDIT } else { DENY_ENFORCE }, labels));
                }
            }
        }
        out
    }

    /// Export what the kernel counted of refused (and audited) connects
    /// since the last look.
    pub(super) fn count_denials(&mut self) {
        for (k, e) in self.dp.maps.denials() {
            let Some((labels, seen)) = self.denials.get_mut(&k) else {
                continue;
            };
            if e.count > *seen {
                self.proxy
                    .metrics
                    .authorization_denied
                    .get_or_create(labels)
                    .inc_by(e.count - *seen);
                *seen = e.count;
            }
        }
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
        self.hosts.write_view(&self.closed_view(), &[])?;
        Ok(())
    }

    /// `<state_dir>/hosts/<namespace>`.
    fn hosts_view(&self, namespace: &str) -> PathBuf {
        self.cfg.state_dir.join("hosts").join(namespace)
    }

    /// `<state_dir>/hosts-none`: the hosts file without knit's names, for
    /// tasks of services not in Service Connect.
    fn closed_view(&self) -> PathBuf {
        self.cfg.state_dir.join("hosts-none")
    }

    fn default_namespace(&self) -> String {
        self.registry
            .default_namespace()
            .unwrap_or_else(|| self.cfg.default_namespace.clone())
    }

    /// Remove our block from the hosts file (clean shutdown).
    pub fn clear_hosts(&mut self) {
        if let Err(e) = self.hosts.write(&[]) {
            warn!(file = %self.hosts.path().display(), error = %e, "could not clean the hosts file");
        }
    }

    pub fn apply(&mut self, files: Vec<(String, String)>) -> Result<ApplySummary, EngineError> {
        let files: Vec<(String, Vec<u8>)> = files
            .into_iter()
            .map(|(n, c)| (n, c.into_bytes()))
            .collect();
        let planner = Planner::new(
            files,
            self.cfg.default_namespace.clone(),
            self.ingress_snapshot(),
        );
        let result = self.registry.apply(|state| planner.plan(state));
        self.applied(result, planner.prebound())
    }

    /// `knit delete`, here (embedded) or in etcd.
    pub fn delete(&mut self, target: &DeleteTarget) -> Result<String, EngineError> {
        let result = self
            .registry
            .mutate(|state| Ok(((), state.delete(target)?)));
        self.deleted(target, result)
    }

    /// Route by the result of a delete (made here, or in etcd without the
    /// lock): a deleted service leaves Service Connect now and its tasks
    /// here start draining. What the CLI says.
    pub fn deleted(
        &mut self,
        target: &DeleteTarget,
        result: Result<(), RegistryError>,
    ) -> Result<String, EngineError> {
        result?;
        if self.retired {
            return Ok("deleted".into());
        }
        if let Err(e) = self.load_shared() {
            return Err(EngineError::Failed(format!("{e:#}")));
        }
        if let Err(e) = self.drain_deleted().and_then(|()| self.reconcile()) {
            return Err(EngineError::Failed(format!(
                "deleted, but routing by it failed: {e:#}"
            )));
        }
        info!(?target, "deleted");
        Ok(match target {
            DeleteTarget::Service(name) => format!(
                "service/{name} deleting: out of Service Connect now; its tasks drain and stop on every host, then it is gone"
            ),
            DeleteTarget::TaskDefinition(which) => format!("task-definition/{which} deleted"),
            DeleteTarget::Namespace(ns) => format!("namespace/{ns} deleted"),
        })
    }

    /// Tasks here of deleted services drain (then stop, as any drained
    /// task); a deleted service with no task left anywhere is released
    /// (its record, VIPs and alias ids). With etcd, not before a lease's
    /// time has passed since the delete: a host cut off from etcd for less
    /// than that still sees the mark when it is back, and drains its tasks
    /// too. At most one release attempt every [`RELEASE_EVERY`].
    pub(super) fn drain_deleted(&mut self) -> anyhow::Result<()> {
        let deleting: BTreeMap<String, u64> = self
            .state
            .services
            .iter()
            .filter(|s| s.deleting)
            .map(|s| (s.spec.name.clone(), s.deleted_unix_ms))
            .collect();
        if deleting.is_empty() {
            return Ok(());
        }
        let mut changed = false;
        for t in self.state.tasks.values_mut() {
            if deleting.contains_key(&t.service) && !t.draining {
                t.draining = true;
                t.drain_started_unix_ms = now_ms();
                let rec = t.clone();
                self.registry.save_task(&rec)?;
                info!(task = %rec.id, service = %rec.service, "draining a deleted service's task");
                changed = true;
            }
        }
        let grace_ms = if self.registry.etcd().is_some() {
            self.cfg.registry.lease_ttl_s * 1000 + 5000
        } else {
            0
        };
        let due = self
            .last_release
            .is_none_or(|t| t.elapsed() >= RELEASE_EVERY);
        let gone: Vec<&String> = deleting
            .iter()
            .filter(|(name, at)| {
                due && now_ms().saturating_sub(**at) >= grace_ms
                    && !self.state.tasks.values().any(|t| &t.service == *name)
                    && !self.state.remote.values().any(|h| &h.task.service == *name)
            })
            .map(|(name, _)| name)
            .collect();
        if !gone.is_empty() {
            self.last_release = Some(Instant::now());
        }
        for name in gone {
            self.registry
                .mutate(|state| Ok(((), state.release_service(name))))?;
            info!(service = %name, "deleted service released (no task left)");
            changed = true;
        }
        if changed {
            self.load_shared()?;
            self.reconcile()?;
        }
        Ok(())
    }

    /// With etcd: what an apply needs without the engine's lock (the
    /// registry, the default namespace, this host's tasks and listeners),
    /// so that planning and the etcd transaction run outside it and
    /// nothing waits on etcd but the CLI that applies; [`Engine::applied`]
    /// then routes by the result.
    pub fn etcd_apply_handle(&self) -> Option<(Arc<Etcd>, String, IngressSnapshot)> {
        self.registry.etcd().map(|etcd| {
            (
                etcd.clone(),
                self.cfg.default_namespace.clone(),
                self.ingress_snapshot(),
            )
        })
    }

    /// Route by the result of an apply (made here, or in etcd without the
    /// lock); `prebound`: the ingress listeners it bound before it was stored.
    pub fn applied(
        &mut self,
        result: Result<Result<ApplySummary, proxy_config::ApplyErrors>, RegistryError>,
        prebound: Prebound,
    ) -> Result<ApplySummary, EngineError> {
        let summary = result??;
        if self.retired {
            // Handed over meanwhile: the new daemon routes by it (etcd's watch).
            return Ok(summary);
        }
        if let Err(e) = self.load_shared() {
            return Err(EngineError::Failed(format!("{e:#}")));
        }
        // Listeners for the entries it added, on the ports bound for them
        // (a task that started meanwhile may still miss one: logged).
        let _ = self.sync_ingress(prebound);
        if let Err(e) = self.reconcile() {
            return Err(EngineError::Failed(format!(
                "applied, but updating the datapath failed: {e:#}"
            )));
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
        Ok(summary)
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
        self.reader.retire();
        // Our copies of the listeners go: a new daemon of an older version
        // keeps only the egress socket it knows, and the group's others
        // must close with us rather than queue connects nobody accepts.
        self.listener_fds.clear();
        self.ingress.stop_all();
        self.health_checks.clear();
        self.registry.store.close();
        self.retire_signal.notify_one();
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let registry = self.registry.status_suffix();
        format!(
            "serving {} services; {} tasks here, {} on other hosts{registry}",
            self.state.services.len(),
            self.state.tasks.len(),
            self.state.remote.len()
        )
    }

    /// A new config from SIGHUP: take what can change while running.
    pub fn reload(&mut self, new: DaemonConfig) -> ReloadReport {
        let proxy_config::Reload {
            applied,
            need_restart,
            config: cfg,
        } = self
            .cfg
            .reload(&new, crate::datapath::accelerate_forced_off());
        let report = ReloadReport {
            applied,
            need_restart,
        };
        let accelerate = cfg.datapath.accelerate;
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
        self.registry.host_name(self.cfg.host.name.as_deref())
    }
}

/// One apply's planning: `proxy_config::plan` against the registry's
/// state, then the ingress ports it adds for running tasks bound before
/// anything is stored (a port that cannot be bound refuses the apply).
/// The registry may plan more than once (etcd retries on a conflict): the
/// last plan's listeners are kept.
pub struct Planner {
    files: Vec<(String, Vec<u8>)>,
    default_namespace: String,
    snapshot: IngressSnapshot,
    prebound: std::sync::Mutex<Prebound>,
}

impl Planner {
    pub fn new(
        files: Vec<(String, Vec<u8>)>,
        default_namespace: String,
        snapshot: IngressSnapshot,
    ) -> Self {
        Self {
            files,
            default_namespace,
            snapshot,
            prebound: std::sync::Mutex::default(),
        }
    }

    pub fn plan(
        &self,
        state: &ConfigState,
    ) -> Result<proxy_config::ApplyPlan, proxy_config::ApplyErrors> {
        let mut prebound = self.prebound.lock().unwrap_or_else(|e| e.into_inner());
        // Free what an earlier try bound before binding again.
        prebound.clear();
        let plan = proxy_config::plan(&self.files, &state.existing(&self.default_namespace))?;
        *prebound = ingress::prebind(&self.snapshot, state, &plan)?;
        Ok(plan)
    }

    /// The listeners the last successful plan bound.
    pub fn prebound(self) -> Prebound {
        self.prebound
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
    }
}
