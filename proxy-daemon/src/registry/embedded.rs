//! The embedded registry: one redb file, `<state_dir>/registry.redb`.
//!
//! Tables map string keys to JSON values (ids and counters to integers).
//! An apply loads the shared state into a [`ConfigState`] and writes back
//! what it changed inside one write transaction: all of it or nothing.
//! This host's tasks live here with either registry backend.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use proxy_config::ApplyPlan;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    RegistryError, TaskRecord,
    state::{ApplySummary, Change, ConfigState},
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const TASKDEFS: TableDefinition<&str, &[u8]> = TableDefinition::new("task_definitions");
/// Every revision, by `family:N`.
const REVISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("task_definition_revisions");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const VIPS: TableDefinition<&str, u64> = TableDefinition::new("vips");
const ALIAS_IDS: TableDefinition<&str, u64> = TableDefinition::new("alias_ids");
const NS_IDS: TableDefinition<&str, u64> = TableDefinition::new("namespace_ids");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

fn dberr<E: Into<redb::Error>>(e: E) -> RegistryError {
    RegistryError::Db(Box::new(e.into()))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain records cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|source| RegistryError::Decode {
        key: key.to_string(),
        source,
    })
}

pub struct Store {
    /// None once closed (handed over to a new daemon).
    db: std::sync::RwLock<Option<Database>>,
    path: PathBuf,
}

/// Is this error the disk saying it is full?
fn is_disk_full(e: &redb::Error) -> bool {
    match e {
        redb::Error::Io(io) => io.raw_os_error() == Some(libc::ENOSPC),
        _ => false,
    }
}

/// Open the file and check every page's checksum: a damaged file is
/// refused, never reset or silently rolled back. (redb recovers from an
/// unclean shutdown by itself on open; what the check finds after that was
/// changed outside redb.)
fn open_db(path: &Path) -> Result<Database, RegistryError> {
    let shown = path.display().to_string();
    let damaged = |detail: String| RegistryError::Damaged {
        path: shown.clone(),
        detail,
    };
    // Root only: the store holds every service's configuration. Created
    // 0600 (an older file is narrowed too) before redb opens it.
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)));
        if let Err(e) = made {
            return Err(RegistryError::Open {
                path: shown.clone(),
                source: Box::new(redb::Error::Io(e)),
            });
        }
    }
    let mut db = match Database::create(path) {
        Ok(db) => db,
        Err(e) => {
            let e: redb::Error = e.into();
            return Err(match &e {
                redb::Error::Corrupted(m) => damaged(m.clone()),
                redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    damaged("not a knit state store: its header is unreadable".into())
                }
                _ => RegistryError::Open {
                    path: shown.clone(),
                    source: Box::new(e),
                },
            });
        }
    };
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(path = %shown, "the state store's free-space bookkeeping was repaired");
        }
        Err(e) => {
            let e: redb::Error = e.into();
            return Err(match e {
                redb::Error::Corrupted(m) => damaged(m),
                e => RegistryError::Open {
                    path: shown,
                    source: Box::new(e),
                },
            });
        }
    }
    Ok(db)
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Self, RegistryError> {
        let path = state_dir.join("registry.redb");
        let open_err = |e: redb::Error| RegistryError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        };
        let db = open_db(&path)?;
        let w = db.begin_write().map_err(|e| open_err(e.into()))?;
        {
            w.open_table(META).map_err(dberr)?;
            for t in [NAMESPACES, TASKDEFS, SERVICES, TASKS, SETTINGS] {
                w.open_table(t).map_err(dberr)?;
            }
            w.open_table(VIPS).map_err(dberr)?;
            w.open_table(ALIAS_IDS).map_err(dberr)?;
            w.open_table(NS_IDS).map_err(dberr)?;
        }
        w.commit().map_err(dberr)?;
        Ok(Self {
            db: std::sync::RwLock::new(Some(db)),
            path,
        })
    }

    fn write(&self) -> Result<WriteTransaction, RegistryError> {
        let begun = {
            let g = self.db.read().unwrap_or_else(|e| e.into_inner());
            g.as_ref().ok_or(RegistryError::Closed)?.begin_write()
        };
        match begun.map_err(redb::Error::from) {
            Ok(w) => Ok(w),
            // A write failed on I/O (the disk was full, say): redb refuses
            // every later one until the file is opened again, which also
            // recovers its last commit.
            Err(redb::Error::PreviousIo) => {
                let mut g = self.db.write().unwrap_or_else(|e| e.into_inner());
                if g.is_none() {
                    return Err(RegistryError::Closed);
                }
                g.take();
                let db = open_db(&self.path)?;
                let w = db.begin_write().map_err(dberr);
                *g = Some(db);
                w
            }
            Err(e) => Err(RegistryError::Db(Box::new(e))),
        }
    }

    /// Commit, telling a full disk apart.
    fn commit(&self, w: WriteTransaction) -> Result<(), RegistryError> {
        w.commit().map_err(|e| {
            let e: redb::Error = e.into();
            if is_disk_full(&e) {
                RegistryError::DiskFull {
                    dir: self
                        .path
                        .parent()
                        .unwrap_or(&self.path)
                        .display()
                        .to_string(),
                }
            } else {
                RegistryError::Db(Box::new(e))
            }
        })
    }

    fn read(&self) -> Result<redb::ReadTransaction, RegistryError> {
        let g = self.db.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .ok_or(RegistryError::Closed)?
            .begin_read()
            .map_err(dberr)
    }

    /// Close the file (its lock goes with it): a new daemon takes over.
    pub fn close(&self) {
        self.db.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Everything the shared registry holds, as of one transaction.
    pub fn config(&self) -> Result<ConfigState, RegistryError> {
        let w = self.write()?;
        let state = load(&w)?;
        w.abort().map_err(dberr)?;
        Ok(state)
    }

    pub fn tasks(&self) -> Result<Vec<TaskRecord>, RegistryError> {
        let r = self.read()?;
        let t = r.open_table(TASKS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// This host's index in its fleet, once known.
    pub fn host_index(&self) -> Result<Option<u32>, RegistryError> {
        let r = self.read()?;
        let t = r.open_table(META).map_err(dberr)?;
        Ok(t.get("host_index")
            .map_err(dberr)?
            .map(|v| v.value() as u32))
    }

    pub fn set_host_index(&self, index: u32) -> Result<(), RegistryError> {
        let w = self.write()?;
        write(&w, &[Change::HostIndex(String::new(), u64::from(index))])?;
        self.commit(w)
    }

    /// Write a validated plan in one transaction.
    /// Change the shared state with `f`, all or nothing.
    pub fn mutate<T>(
        &self,
        f: impl FnOnce(&mut ConfigState) -> Result<(T, Vec<Change>), RegistryError>,
    ) -> Result<T, RegistryError> {
        let w = self.write()?;
        let mut state = load(&w)?;
        let (out, changes) = f(&mut state)?;
        write(&w, &changes)?;
        self.commit(w)?;
        Ok(out)
    }

    pub fn apply(&self, plan: &ApplyPlan) -> Result<ApplySummary, RegistryError> {
        let w = self.write()?;
        let mut state = load(&w)?;
        let (summary, changes) = state.apply(plan)?;
        write(&w, &changes)?;
        self.commit(w)?;
        Ok(summary)
    }

    pub fn put_task(&self, task: &TaskRecord) -> Result<(), RegistryError> {
        let w = self.write()?;
        {
            let mut t = w.open_table(TASKS).map_err(dberr)?;
            t.insert(task.id.as_str(), encode(task).as_slice())
                .map_err(dberr)?;
        }
        self.commit(w)
    }

    pub fn remove_task(&self, id: &str) -> Result<(), RegistryError> {
        let w = self.write()?;
        {
            let mut t = w.open_table(TASKS).map_err(dberr)?;
            t.remove(id).map_err(dberr)?;
        }
        self.commit(w)
    }

    /// Reserve `n` fresh endpoint ids and a task number for `service`.
    pub fn reserve_task(
        &self,
        service: &str,
        n: usize,
        host: Option<(&str, u32)>,
    ) -> Result<(String, Vec<u32>), RegistryError> {
        let w = self.write()?;
        let mut state = ConfigState {
            counters: load_u64(&w, META)?,
            ..ConfigState::default()
        };
        let (reserved, changes) = state.reserve_task(service, n, host);
        write(&w, &changes)?;
        self.commit(w)?;
        Ok(reserved)
    }
}

fn load_json<T: DeserializeOwned>(
    w: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<BTreeMap<String, T>, RegistryError> {
    let t = w.open_table(table).map_err(dberr)?;
    let mut out = BTreeMap::new();
    for row in t.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        out.insert(k.value().to_string(), decode(k.value(), v.value())?);
    }
    Ok(out)
}

fn load_u64(
    w: &WriteTransaction,
    table: TableDefinition<&str, u64>,
) -> Result<BTreeMap<String, u64>, RegistryError> {
    let t = w.open_table(table).map_err(dberr)?;
    let mut out = BTreeMap::new();
    for row in t.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        out.insert(k.value().to_string(), v.value());
    }
    Ok(out)
}

fn load(w: &WriteTransaction) -> Result<ConfigState, RegistryError> {
    let mut settings: BTreeMap<String, String> = load_json(w, SETTINGS)?;
    Ok(ConfigState {
        default_namespace: settings.remove("default_namespace"),
        namespaces: load_json::<String>(w, NAMESPACES)?.into_values().collect(),
        task_definitions: load_json(w, TASKDEFS)?,
        revisions: load_json(w, REVISIONS)?,
        services: load_json(w, SERVICES)?,
        vips: load_u64(w, VIPS)?,
        alias_ids: load_u64(w, ALIAS_IDS)?,
        ns_ids: load_u64(w, NS_IDS)?,
        host_indexes: BTreeMap::new(),
        counters: load_u64(w, META)?,
    })
}

fn write(w: &WriteTransaction, changes: &[Change]) -> Result<(), RegistryError> {
    let put = |table: TableDefinition<&str, &[u8]>, k: &str, v: Vec<u8>| {
        let mut t = w.open_table(table).map_err(dberr)?;
        t.insert(k, v.as_slice()).map_err(dberr)?;
        Ok::<(), RegistryError>(())
    };
    let put_u64 = |table: TableDefinition<&str, u64>, k: &str, v: u64| {
        let mut t = w.open_table(table).map_err(dberr)?;
        t.insert(k, v).map_err(dberr)?;
        Ok::<(), RegistryError>(())
    };
    for c in changes {
        match c {
            Change::Namespace(n) => put(NAMESPACES, n, encode(n))?,
            Change::DefaultNamespace(n) => put(SETTINGS, "default_namespace", encode(n))?,
            Change::TaskDefinition(td) => put(TASKDEFS, &td.family, encode(td))?,
            Change::TaskDefinitionRevision(td) => put(
                REVISIONS,
                &super::state::revision_key(&td.family, td.revision),
                encode(td),
            )?,
            Change::Service(s) => put(SERVICES, &s.spec.name, encode(s))?,
            Change::Vip(k, v) => put_u64(VIPS, k, *v)?,
            Change::AliasId(k, v) => put_u64(ALIAS_IDS, k, *v)?,
            Change::NamespaceId(k, v) => put_u64(NS_IDS, k, *v)?,
            Change::Counter(k, v) => put_u64(META, k, *v)?,
            Change::Remove(r) => {
                use super::state::Record;
                let remove = |table: TableDefinition<&str, &[u8]>, k: &str| {
                    let mut t = w.open_table(table).map_err(dberr)?;
                    t.remove(k).map_err(dberr)?;
                    Ok::<(), RegistryError>(())
                };
                let remove_u64 = |table: TableDefinition<&str, u64>, k: &str| {
                    let mut t = w.open_table(table).map_err(dberr)?;
                    t.remove(k).map_err(dberr)?;
                    Ok::<(), RegistryError>(())
                };
                match r {
                    Record::Namespace(k) => remove(NAMESPACES, k)?,
                    Record::TaskDefinition(k) => remove(TASKDEFS, k)?,
                    Record::Service(k) => remove(SERVICES, k)?,
                    Record::Vip(k) => remove_u64(VIPS, k)?,
                    Record::AliasId(k) => remove_u64(ALIAS_IDS, k)?,
                }
            }
            // Kept here as this host's own (see `host_index`).
            Change::HostIndex(_, v) => put_u64(META, "host_index", *v)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_config::{AppProtocol, EndpointSpec, ServiceSpec};
    use std::net::Ipv4Addr;

    fn svc(name: &str, dns: &str, port: u16) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            task_definition: name.into(),
            task_definition_revision: None,
            namespace: "default".into(),
            endpoints: vec![EndpointSpec {
                port_name: "tcp".into(),
                discovery_name: name.into(),
                dns_name: dns.into(),
                port,
                app_protocol: AppProtocol::Tcp,
                container_port: 0,
                ingress_port_override: None,
                idle_timeout_s: None,
                per_request_timeout_s: None,
                outlier: None,
                limits: None,
                test_traffic: None,
                tls: false,
                allowed_clients: None,
                allowed_clients_audit: false,
            }],
            access_log: None,
            enabled: true,
        }
    }

    fn plan(services: Vec<ServiceSpec>) -> ApplyPlan {
        ApplyPlan {
            namespaces: vec![],
            default_namespace: None,
            task_definitions: vec![],
            services,
            ..ApplyPlan::default()
        }
    }

    #[test]
    fn vips_and_ids_are_stable_and_survive_reopen() -> Result<(), RegistryError> {
        let dir = tempfile::tempdir().map_err(|e| RegistryError::Db(Box::new(e.into())))?;
        {
            let s = Store::open(dir.path())?;
            s.apply(&plan(vec![svc("db", "db", 6379), svc("web", "web", 80)]))?;
            s.apply(&plan(vec![svc("db", "db", 6379)]))?;
        }
        let s = Store::open(dir.path())?;
        let svcs = s.config()?.services;
        let db = svcs
            .values()
            .find(|s| s.spec.name == "db")
            .map(|s| s.aliases[0].clone());
        let web = svcs
            .values()
            .find(|s| s.spec.name == "web")
            .map(|s| s.aliases[0].clone());
        let (db, web) = (db.expect("db"), web.expect("web"));
        assert_eq!(db.vip, Ipv4Addr::new(127, 255, 0, 1));
        assert_eq!(web.vip, Ipv4Addr::new(127, 255, 0, 2));
        assert_ne!(db.service_id, web.service_id);
        Ok(())
    }

    #[test]
    fn task_ids_and_backend_ids_are_fresh() -> Result<(), RegistryError> {
        let dir = tempfile::tempdir().map_err(|e| RegistryError::Db(Box::new(e.into())))?;
        let s = Store::open(dir.path())?;
        let (a, ia) = s.reserve_task("db", 2, None)?;
        let (b, ib) = s.reserve_task("db", 1, None)?;
        assert_ne!(a, b);
        assert_eq!(ia.len(), 2);
        assert!(!ia.contains(&ib[0]));
        Ok(())
    }
}
