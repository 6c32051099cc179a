//! The embedded registry: one redb file, `<state_dir>/registry.redb`.
//!
//! Tables map string keys to JSON values. Ids and VIPs are handed out from
//! counters in `meta` inside the same transaction that uses them.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use proxy_common::maps::MAX_SERVICES;
use proxy_config::{ApplyPlan, Existing, ServiceSpec, TaskDefinition};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};

use super::{AliasRecord, RegistryError, ServiceRecord, TaskRecord};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const TASKDEFS: TableDefinition<&str, &[u8]> = TableDefinition::new("task_definitions");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const VIPS: TableDefinition<&str, u64> = TableDefinition::new("vips");
const ALIAS_IDS: TableDefinition<&str, u64> = TableDefinition::new("alias_ids");
const NS_IDS: TableDefinition<&str, u64> = TableDefinition::new("namespace_ids");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

/// First VIP offset in 127.255.0.0/16 (127.255.0.1).
const FIRST_VIP: u64 = 1;

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
    db: Database,
}

/// What an apply changed, for the CLI's answer.
#[derive(Debug, Default, Serialize)]
pub struct ApplySummary {
    pub namespaces: Vec<String>,
    pub task_definitions: Vec<String>,
    pub services: Vec<String>,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Self, RegistryError> {
        let path = state_dir.join("registry.redb");
        let open_err = |e: redb::Error| RegistryError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        };
        let db = Database::create(&path).map_err(|e| open_err(e.into()))?;
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
        Ok(Self { db })
    }

    fn read_all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, RegistryError> {
        let r = self.db.begin_read().map_err(dberr)?;
        let t = r.open_table(table).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The default namespace a cluster document set, if any.
    pub fn default_namespace(&self) -> Result<Option<String>, RegistryError> {
        let r = self.db.begin_read().map_err(dberr)?;
        let t = r.open_table(SETTINGS).map_err(dberr)?;
        match t.get("default_namespace").map_err(dberr)? {
            Some(v) => Ok(Some(decode("default_namespace", v.value())?)),
            None => Ok(None),
        }
    }

    pub fn namespaces(&self) -> Result<BTreeSet<String>, RegistryError> {
        Ok(self.read_all::<String>(NAMESPACES)?.into_iter().collect())
    }

    pub fn task_definitions(&self) -> Result<BTreeMap<String, TaskDefinition>, RegistryError> {
        Ok(self
            .read_all::<TaskDefinition>(TASKDEFS)?
            .into_iter()
            .map(|t| (t.family.clone(), t))
            .collect())
    }

    pub fn services(&self) -> Result<Vec<ServiceRecord>, RegistryError> {
        self.read_all(SERVICES)
    }

    pub fn tasks(&self) -> Result<Vec<TaskRecord>, RegistryError> {
        self.read_all(TASKS)
    }

    /// The registry as the validator needs to see it.
    pub fn existing(&self, config_default: &str) -> Result<Existing, RegistryError> {
        let default_namespace = self
            .default_namespace()?
            .unwrap_or_else(|| config_default.to_string());
        let mut namespaces = self.namespaces()?;
        namespaces.insert(default_namespace.clone());
        namespaces.insert(config_default.to_string());
        Ok(Existing {
            default_namespace,
            namespaces,
            task_definitions: self.task_definitions()?,
            services: self
                .services()?
                .into_iter()
                .map(|s| (s.spec.name.clone(), s.spec))
                .collect(),
        })
    }

    /// Write a validated plan in one transaction: new namespaces, task
    /// definitions (next revision), and services with their aliases' VIPs and
    /// kernel ids (kept stable for an alias that already had them).
    pub fn apply(&self, plan: &ApplyPlan) -> Result<ApplySummary, RegistryError> {
        let w = self.db.begin_write().map_err(dberr)?;
        let mut summary = ApplySummary::default();
        {
            let mut ns = w.open_table(NAMESPACES).map_err(dberr)?;
            for n in plan.namespaces.iter().chain(plan.default_namespace.iter()) {
                ns.insert(n.as_str(), encode(n).as_slice()).map_err(dberr)?;
                summary.namespaces.push(n.clone());
            }
        }
        if let Some(d) = &plan.default_namespace {
            let mut s = w.open_table(SETTINGS).map_err(dberr)?;
            s.insert("default_namespace", encode(d).as_slice())
                .map_err(dberr)?;
        }
        {
            let mut t = w.open_table(TASKDEFS).map_err(dberr)?;
            for td in &plan.task_definitions {
                let prev = match t.get(td.family.as_str()).map_err(dberr)? {
                    Some(v) => decode::<TaskDefinition>(&td.family, v.value())?.revision,
                    None => 0,
                };
                let mut td = td.clone();
                td.revision = prev + 1;
                t.insert(td.family.as_str(), encode(&td).as_slice())
                    .map_err(dberr)?;
                summary
                    .task_definitions
                    .push(format!("{}:{}", td.family, td.revision));
            }
        }
        for spec in &plan.services {
            let rec = service_record(&w, spec)?;
            let mut t = w.open_table(SERVICES).map_err(dberr)?;
            t.insert(spec.name.as_str(), encode(&rec).as_slice())
                .map_err(dberr)?;
            summary.services.push(spec.name.clone());
        }
        w.commit().map_err(dberr)?;
        Ok(summary)
    }

    pub fn put_task(&self, task: &TaskRecord) -> Result<(), RegistryError> {
        let w = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = w.open_table(TASKS).map_err(dberr)?;
            t.insert(task.id.as_str(), encode(task).as_slice())
                .map_err(dberr)?;
        }
        w.commit().map_err(dberr)
    }

    pub fn remove_task(&self, id: &str) -> Result<(), RegistryError> {
        let w = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = w.open_table(TASKS).map_err(dberr)?;
            t.remove(id).map_err(dberr)?;
        }
        w.commit().map_err(dberr)
    }

    /// Reserve `n` fresh endpoint ids and a task number for `service`.
    pub fn reserve_task(
        &self,
        service: &str,
        n: usize,
    ) -> Result<(String, Vec<u32>), RegistryError> {
        let w = self.db.begin_write().map_err(dberr)?;
        let (task_no, ids) = {
            let mut m = w.open_table(META).map_err(dberr)?;
            let task_no = m
                .get("next_task")
                .map_err(dberr)?
                .map(|v| v.value())
                .unwrap_or(1);
            m.insert("next_task", task_no + 1).map_err(dberr)?;
            let first = m
                .get("next_backend_id")
                .map_err(dberr)?
                .map(|v| v.value())
                .unwrap_or(1);
            m.insert("next_backend_id", first + n as u64)
                .map_err(dberr)?;
            (task_no, (0..n).map(|i| (first + i as u64) as u32).collect())
        };
        w.commit().map_err(dberr)?;
        Ok((format!("{service}-{task_no}"), ids))
    }
}

fn service_record(
    w: &WriteTransaction,
    spec: &ServiceSpec,
) -> Result<ServiceRecord, RegistryError> {
    let mut aliases = Vec::new();
    for e in &spec.endpoints {
        let vip_key = format!("{}\0{}", spec.namespace, e.dns_name);
        let id_key = format!("{}\0{}\0{}", spec.namespace, e.dns_name, e.port);
        let vip = {
            let mut vips = w.open_table(VIPS).map_err(dberr)?;
            let found = vips
                .get(vip_key.as_str())
                .map_err(dberr)?
                .map(|v| v.value());
            match found {
                Some(v) => v,
                None => {
                    let mut meta = w.open_table(META).map_err(dberr)?;
                    let mut next = meta
                        .get("next_vip")
                        .map_err(dberr)?
                        .map(|v| v.value())
                        .unwrap_or(FIRST_VIP);
                    // Skip .0 and .255 in the last octet: some tools treat them as special.
                    while next & 0xff == 0 || next & 0xff == 0xff {
                        next += 1;
                    }
                    if next > 0xfffe {
                        return Err(RegistryError::VipsExhausted);
                    }
                    meta.insert("next_vip", next + 1).map_err(dberr)?;
                    vips.insert(vip_key.as_str(), next).map_err(dberr)?;
                    next
                }
            }
        };
        let service_id = {
            let mut ids = w.open_table(ALIAS_IDS).map_err(dberr)?;
            let found = ids.get(id_key.as_str()).map_err(dberr)?.map(|v| v.value());
            match found {
                Some(v) => v,
                None => {
                    let mut meta = w.open_table(META).map_err(dberr)?;
                    let next = meta
                        .get("next_service_id")
                        .map_err(dberr)?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    if next >= u64::from(MAX_SERVICES) {
                        return Err(RegistryError::AliasIdsExhausted(MAX_SERVICES));
                    }
                    meta.insert("next_service_id", next + 1).map_err(dberr)?;
                    ids.insert(id_key.as_str(), next).map_err(dberr)?;
                    next
                }
            }
        };
        aliases.push(AliasRecord {
            spec: e.clone(),
            service_id: service_id as u32,
            vip: Ipv4Addr::from(0x7fff_0000u32 | vip as u32),
        });
    }
    let ns_id = {
        let mut ids = w.open_table(NS_IDS).map_err(dberr)?;
        let found = ids
            .get(spec.namespace.as_str())
            .map_err(dberr)?
            .map(|v| v.value());
        match found {
            Some(v) => v,
            None => {
                let mut meta = w.open_table(META).map_err(dberr)?;
                let next = meta
                    .get("next_namespace_id")
                    .map_err(dberr)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                meta.insert("next_namespace_id", next + 1).map_err(dberr)?;
                ids.insert(spec.namespace.as_str(), next).map_err(dberr)?;
                next
            }
        }
    };
    Ok(ServiceRecord {
        spec: spec.clone(),
        ns_id: ns_id as u32,
        aliases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_config::{AppProtocol, EndpointSpec};

    fn svc(name: &str, dns: &str, port: u16) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            task_definition: name.into(),
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
            }],
        }
    }

    fn plan(services: Vec<ServiceSpec>) -> ApplyPlan {
        ApplyPlan {
            namespaces: vec![],
            default_namespace: None,
            task_definitions: vec![],
            services,
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
        let svcs = s.services()?;
        let db = svcs
            .iter()
            .find(|s| s.spec.name == "db")
            .map(|s| s.aliases[0].clone());
        let web = svcs
            .iter()
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
        let (a, ia) = s.reserve_task("db", 2)?;
        let (b, ib) = s.reserve_task("db", 1)?;
        assert_ne!(a, b);
        assert_eq!(ia.len(), 2);
        assert!(!ia.contains(&ib[0]));
        Ok(())
    }
}
