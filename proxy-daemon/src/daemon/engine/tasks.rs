//! Task lifecycle: start (ports, cgroup, env), running, gone (deregister,
//! stop what is left), draining, readiness.
use super::*;
use crate::daemon::error::EngineError;

impl Engine {
    /// Prepare a task of `service`, of its pinned task definition revision
    /// (the newest when it pins none), or of `task_definition` (`FAMILY:N`
    /// of the service's family, or `N`).
    pub fn task_start(
        &mut self,
        service: &str,
        task_definition: Option<&str>,
    ) -> Result<TaskPlan, EngineError> {
        let Some(svc) = self.state.services.iter().find(|s| s.spec.name == service) else {
            let known: Vec<&str> = self
                .state
                .services
                .iter()
                .map(|s| s.spec.name.as_str())
                .collect();
            return Err(EngineError::BadInput(format!(
                "no service {service:?} is registered (known: {})\n  fix: knit apply -f a service definition with \"serviceName\": {service:?}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        if svc.deleting {
            return Err(EngineError::BadInput(format!(
                "service {service:?} is being deleted: no new task starts\n  fix: apply it again once `knit services` no longer lists it"
            )));
        }
        let svc_namespace = svc.spec.namespace.clone();
        let svc_enabled = svc.spec.enabled;
        let family = svc.spec.task_definition.clone();
        let revision = match task_definition {
            None => svc.spec.task_definition_revision,
            Some(asked) => Some(revision_asked(service, &family, asked)?),
        };
        let Some(td) = self.state.task_definition(&family, revision).cloned() else {
            let known = self.state.revision_numbers(&family);
            return Err(EngineError::BadInput(match revision {
                Some(n) if !known.is_empty() => format!(
                    "service {service:?}: task definition {family}:{n} is not registered (registered revisions: {})\n  fix: name one of them",
                    known
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => format!(
                    "service {service:?} uses task definition {family:?}, which is not registered\n  fix: knit apply -f its task definition"
                ),
            }));
        };
        // Ids come from this host's own counters: a task starts also while
        // etcd is away (once this host has its fleet index).
        let host = match self.registry.fleet_host() {
            Ok(h) => h,
            Err(e) => {
                return Err(EngineError::Failed(format!(
                    "this host has no index in the fleet yet (it gets one from etcd once): {e}"
                )));
            }
        };
        let reserved = self.registry.store.reserve_task(
            service,
            td.port_mappings.len(),
            host.as_ref().map(|(n, i)| (n.as_str(), *i)),
        );
        let (task_id, ids) = match reserved {
            Ok(r) => r,
            Err(e) => return Err(EngineError::Failed(e.to_string())),
        };
        let mut ports = Vec::new();
        let mut env = BTreeMap::new();
        for (pm, backend_id) in td.port_mappings.iter().zip(ids) {
            let port = if pm.container_port != 0 {
                // A fixed port serves one task per host: a second would
                // fail to bind, and the readiness probe would see the first.
                let taken = self
                    .state
                    .tasks
                    .values()
                    .find(|t| t.ports.iter().any(|p| p.port == pm.container_port));
                if let Some(other) = taken {
                    return Err(EngineError::BadInput(format!(
                        "service {service:?}: port {} (containerPort of port mapping {:?}) is already used by task {} on this host\n  fix: omit containerPort (or set it to 0) so that knit picks a port per task",
                        pm.container_port, pm.name, other.id
                    )));
                }
                pm.container_port
            } else {
                let pending: Vec<u16> = ports.iter().map(|p: &TaskPort| p.port).collect();
                match self.alloc_port(&pending) {
                    Ok(p) => p,
                    Err(e) => return Err(EngineError::Failed(format!("finding a free port: {e}"))),
                }
            };
            env.insert(port_env_name(&pm.name), port.to_string());
            ports.push(TaskPort {
                name: pm.name.clone(),
                port,
                backend_id,
                ready: false,
                ingress_port: None,
                ingress: BTreeMap::new(),
            });
        }
        let cg = self.cgroup_root.join(service).join(&task_id);
        if let Err(e) = cgroup::ensure(&cg) {
            return Err(EngineError::Failed(e.to_string()));
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
            revision: td.revision,
        };
        if let Err(e) = self.save_task(&rec) {
            return Err(EngineError::Failed(e.to_string()));
        }
        env = self.task_env(&rec);
        self.state.tasks.insert(task_id.clone(), rec);
        // A listener that cannot be bound (its ingressPortOverride is
        // taken) fails the start, with the reason.
        let failed = self.sync_ingress(ingress::Prebound::new());
        if let Some((_, why)) = failed.iter().find(|(t, _)| *t == task_id) {
            let why = why.clone();
            if let Err(e) = self.task_gone(&task_id, "its ingress listener could not start") {
                warn!(task = %task_id, error = %format!("{e:#}"), "deregistering a task that could not start");
            }
            return Err(EngineError::Failed(format!("service {service:?}: {why}")));
        }
        // The kernel must know the task's namespace before it connects.
        if let Err(e) = self.reconcile() {
            return Err(EngineError::Failed(format!("{e:#}")));
        }
        info!(task = %task_id, service, revision = td.revision, "task starting");
        Ok(TaskPlan {
            task_id,
            cgroup: cg,
            env,
            command: td.command.clone(),
            hosts_view: if svc_enabled {
                let view = self.hosts_view(&svc_namespace);
                view.exists().then(|| (view, self.cfg.hosts_file.clone()))
            } else {
                // Not in Service Connect: no knit names at all (the kernel
                // refuses it every VIP too).
                let view = self.closed_view();
                match self.hosts.write_view(&view, &[]) {
                    Ok(()) => Some((view, self.cfg.hosts_file.clone())),
                    Err(e) => {
                        return Err(EngineError::Failed(format!(
                            "writing {}: {e}",
                            view.display()
                        )));
                    }
                }
            },
        })
    }

    pub fn task_running(&mut self, task_id: &str, pid: u32) -> Result<(), EngineError> {
        let Some(spec) = self.state.tasks.get(task_id).map(|t| self.health_spec(t)) else {
            return Err(EngineError::BadInput(format!("no task {task_id:?}")));
        };
        let Some(t) = self.state.tasks.get_mut(task_id) else {
            return Err(EngineError::BadInput(format!("no task {task_id:?}")));
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
            return Err(EngineError::Failed(e.to_string()));
        }
        info!(task = %task_id, pid, "task running");
        Ok(())
    }

    /// Deregister a task and remove its cgroup (killing what is left in it).
    pub fn task_gone(&mut self, task_id: &str, why: &str) -> anyhow::Result<()> {
        let Some(t) = self.state.tasks.remove(task_id) else {
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
        let grace = self.stop_timeout(&t);
        self.stopping
            .push((t.cgroup.clone(), Instant::now() + grace));
        self.registry.remove_task(task_id)?;
        Ok(())
    }

    /// How long a stopping task has between SIGTERM and SIGKILL: its task
    /// definition revision's `stopTimeout` (ECS's 30 s default).
    pub(super) fn stop_timeout(&self, t: &TaskRecord) -> Duration {
        let secs = self
            .task_definition_of(t)
            .map_or(TaskDefinition::DEFAULT_STOP_TIMEOUT_S, |td| {
                td.stop_timeout_s()
            });
        Duration::from_secs(u64::from(secs))
    }

    /// The task definition revision a task runs (`None`: its service or
    /// the revision is gone from the registry).
    pub(super) fn task_definition_of(&self, t: &TaskRecord) -> Option<&TaskDefinition> {
        let s = self
            .state
            .services
            .iter()
            .find(|s| s.spec.name == t.service)?;
        // A task from before revisions were recorded (0) runs the newest.
        match t.revision {
            0 => self.state.task_definition(&s.spec.task_definition, None),
            n => self.state.any_revision(&s.spec.task_definition, n),
        }
    }

    /// Finish stopping tasks: remove their cgroups once empty, SIGKILL
    /// what outlives the grace period.
    pub(super) fn reap(&mut self) {
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
    pub(super) fn sweep_unknown_cgroups(&mut self) {
        let known: BTreeSet<PathBuf> = self
            .state
            .tasks
            .values()
            .map(|t| t.cgroup.clone())
            .collect();
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

    pub fn drain(
        &mut self,
        service: Option<&str>,
        task: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let ids: Vec<String> = self
            .state
            .tasks
            .values()
            .filter(|t| service.is_none_or(|s| t.service == s) && task.is_none_or(|id| t.id == id))
            .map(|t| t.id.clone())
            .collect();
        if ids.is_empty() {
            return Err(EngineError::BadInput(format!(
                "nothing to drain: no running task matches {}",
                task.map(|t| format!("task {t:?}"))
                    .or(service.map(|s| format!("service {s:?}")))
                    .unwrap_or_default()
            )));
        }
        for id in &ids {
            if let Some(t) = self.state.tasks.get_mut(id) {
                if !t.draining {
                    t.draining = true;
                    t.drain_started_unix_ms = now_ms();
                }
                let rec = t.clone();
                if let Err(e) = self.save_task(&rec) {
                    return Err(EngineError::Failed(e.to_string()));
                }
            }
        }
        if let Err(e) = self.reconcile() {
            return Err(EngineError::Failed(e.to_string()));
        }
        Ok(ids)
    }

    /// Ports that have not accepted a connection yet: (task, port name, port).
    pub fn unready_ports(&self) -> Vec<(String, String, u16)> {
        self.state
            .tasks
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
            if let Some(t) = self.state.tasks.get_mut(task) {
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
    pub(super) fn drained(&self, t: &TaskRecord) -> bool {
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

    /// A free port for a task or an ingress listener. Ports already handed
    /// out (which their task may not have bound yet) are skipped, so that
    /// two of knit's listeners never get the same one.
    pub(super) fn alloc_port(&self, pending: &[u16]) -> std::io::Result<u16> {
        let taken: BTreeSet<u16> = self
            .state
            .tasks
            .values()
            .flat_map(|t| t.ports.iter())
            .flat_map(|p| {
                [p.port]
                    .into_iter()
                    .chain(p.ingress_port)
                    .chain(p.ingress.values().copied())
            })
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

    /// The environment of a task (and of its health checks).
    pub(super) fn task_env(&self, t: &TaskRecord) -> BTreeMap<String, String> {
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

/// A port nothing listens on now (the kernel's pick for an ephemeral bind).
pub(super) fn free_port(addr: Ipv4Addr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((addr, 0))?.local_addr()?.port())
}

/// The revision `asked` (`FAMILY:N`, or `N`) names, for a task of `service`
/// (task definition family `family`).
fn revision_asked(service: &str, family: &str, asked: &str) -> Result<u32, EngineError> {
    let (f, n) = asked.rsplit_once(':').unwrap_or((family, asked));
    let f = f.rsplit_once("task-definition/").map_or(f, |(_, f)| f);
    if f != family {
        return Err(EngineError::BadInput(format!(
            "service {service:?} runs task definition family {family:?}, not {f:?}\n  fix: --task-definition {family}:N"
        )));
    }
    match n.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(EngineError::BadInput(format!(
            "--task-definition {asked:?}: {n:?} is not a revision (a number from 1)\n  fix: --task-definition {family}:N"
        ))),
    }
}
