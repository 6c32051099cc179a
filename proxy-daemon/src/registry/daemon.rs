//! The registry as the daemon uses it: one type whether the shared state
//! lives in the embedded store (one host) or in etcd (a fleet, with the
//! store keeping only this host's tasks and its fleet index). The engine
//! asks it for the shared state, saves and removes its tasks through it and
//! applies through it, and never matches on which backend it is.
use std::{collections::BTreeMap, sync::Arc};

use proxy_config::{ApplyErrors, ApplyPlan};

use super::{
    ConfigState, HostedTask, RegistryError, Store, TaskRecord,
    etcd::Etcd,
    state::{ApplySummary, Change},
};

/// The shared state: namespaces, task definitions, services, and (with
/// etcd) the tasks of other hosts.
pub struct SharedState {
    pub config: ConfigState,
    /// Other hosts' tasks by id (empty on one host).
    pub remote: BTreeMap<String, Arc<HostedTask>>,
}

pub struct Registry {
    /// This host's tasks and counters (and, embedded, the shared state).
    pub store: Store,
    etcd: Option<Arc<Etcd>>,
}

impl Registry {
    /// One host: everything in the store.
    pub fn embedded(store: Store) -> Self {
        Self { store, etcd: None }
    }

    /// A fleet: the shared state in etcd.
    pub fn fleet(store: Store, etcd: Arc<Etcd>) -> Self {
        Self {
            store,
            etcd: Some(etcd),
        }
    }

    /// etcd's session, for the tasks that keep it (watch, leases).
    pub fn etcd(&self) -> Option<&Arc<Etcd>> {
        self.etcd.as_ref()
    }

    /// The shared state now (etcd: the last view its watch brought).
    pub fn shared(&self) -> Result<SharedState, RegistryError> {
        match &self.etcd {
            None => Ok(SharedState {
                config: self.store.config()?,
                remote: BTreeMap::new(),
            }),
            Some(etcd) => {
                let v = etcd.view();
                Ok(SharedState {
                    config: v.config.clone(),
                    remote: v.remote.clone(),
                })
            }
        }
    }

    /// The namespace applied as the default (a cluster's
    /// `serviceConnectDefaults`), if one was.
    pub fn default_namespace(&self) -> Option<String> {
        match &self.etcd {
            Some(etcd) => etcd.view().config.default_namespace.clone(),
            None => self.store.config().ok().and_then(|c| c.default_namespace),
        }
    }

    /// Validate with `plan` against the shared state and apply, all or
    /// nothing. With etcd this waits on etcd (up to its timeout): call it
    /// without holding anything the data plane needs.
    pub fn apply(
        &self,
        plan: impl Fn(&ConfigState) -> Result<ApplyPlan, ApplyErrors>,
    ) -> Result<Result<ApplySummary, ApplyErrors>, RegistryError> {
        match &self.etcd {
            Some(etcd) => etcd.apply(plan),
            None => match plan(&self.store.config()?) {
                Ok(p) => self.store.apply(&p).map(Ok),
                Err(errs) => Ok(Err(errs)),
            },
        }
    }

    /// Change the shared state with `f`, all or nothing (with etcd: one
    /// compare-and-swap, `f` run again on a conflict; this waits on etcd).
    pub fn mutate<T>(
        &self,
        f: impl Fn(&mut ConfigState) -> Result<(T, Vec<Change>), RegistryError>,
    ) -> Result<T, RegistryError> {
        match &self.etcd {
            Some(etcd) => etcd.mutate(f),
            None => self.store.mutate(f),
        }
    }

    /// Save one of this host's tasks: in the store, and for the fleet
    /// (published now or as soon as etcd answers).
    pub fn save_task(&self, rec: &TaskRecord) -> Result<(), RegistryError> {
        self.store.put_task(rec)?;
        if let Some(etcd) = &self.etcd {
            etcd.publish(rec);
        }
        Ok(())
    }

    /// Forget one of this host's tasks, here and in the fleet.
    pub fn remove_task(&self, id: &str) -> Result<(), RegistryError> {
        self.store.remove_task(id)?;
        if let Some(etcd) = &self.etcd {
            etcd.withdraw(id);
        }
        Ok(())
    }

    /// Publish every task of this host again (a restarted daemon).
    pub fn publish_all<'a>(&self, tasks: impl IntoIterator<Item = &'a TaskRecord>) {
        if let Some(etcd) = &self.etcd {
            for t in tasks {
                etcd.publish(t);
            }
        }
    }

    /// This host's name and index in the fleet, learned from etcd once and
    /// kept in the store (so tasks start while etcd is away); None on one
    /// host, where ids need no host part.
    pub fn fleet_host(&self) -> Result<Option<(String, u32)>, RegistryError> {
        let Some(etcd) = &self.etcd else {
            return Ok(None);
        };
        let index = match self.store.host_index()? {
            Some(i) => i,
            None => {
                let i = etcd.host_index()?;
                self.store.set_host_index(i)?;
                i
            }
        };
        Ok(Some((etcd.host().to_string(), index)))
    }

    /// This host's name in the registry (`fallback` on one host).
    pub fn host_name(&self, fallback: Option<&str>) -> String {
        match &self.etcd {
            Some(etcd) => etcd.host().to_string(),
            None => fallback.unwrap_or_default().to_string(),
        }
    }

    /// What systemd's STATUS= line says of the registry ("" on one host).
    pub fn status_suffix(&self) -> &'static str {
        match &self.etcd {
            None => "",
            Some(etcd) if etcd.view().connected => "; etcd connected",
            Some(_) => "; etcd unreachable, serving the last known view",
        }
    }
}

/// `embedded` (no etcd), or etcd with this host's name, the session's state
/// and the revision of its view: what `knit status` says of the registry.
pub fn describe(etcd: Option<&Etcd>) -> String {
    match etcd {
        None => "embedded".into(),
        Some(etcd) => {
            let v = etcd.view();
            let connected = v.connected;
            let revision = v.revision;
            drop(v);
            format!(
                "etcd as host {:?}: {} (revision {})",
                etcd.host(),
                if connected {
                    format!("connected to {}", etcd.member())
                } else {
                    "unreachable, serving the last known view".to_string()
                },
                revision
            )
        }
    }
}
