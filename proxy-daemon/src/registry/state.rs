//! The shared registry's contents as one value, and the one place that
//! changes them. Both backends load what they need into a [`ConfigState`],
//! let it compute an apply or a task reservation, and write back the
//! [`Change`]s it lists, in one transaction (redb) or one compare-and-swap
//! (etcd). So VIPs, alias ids, namespace ids, task numbers and endpoint ids
//! are handed out by the same code whichever store holds them.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use proxy_common::maps::MAX_SERVICES;
use proxy_config::{ApplyPlan, Existing, ServiceSpec, TaskDefinition};
use serde::Serialize;

use super::{AliasRecord, RegistryError, ServiceRecord};

/// First VIP offset in 127.255.0.0/16 (127.255.0.1).
const FIRST_VIP: u64 = 1;
/// Counter names. VIPs and alias ids are the lowest free ones (a deleted
/// service's come back); their counters are kept above every one in use,
/// for daemons of earlier versions that allocate from them.
pub const NEXT_VIP: &str = "next_vip";
pub const NEXT_SERVICE_ID: &str = "next_service_id";
pub const NEXT_NAMESPACE_ID: &str = "next_namespace_id";
pub const NEXT_TASK: &str = "next_task";
pub const NEXT_BACKEND_ID: &str = "next_backend_id";
pub const NEXT_HOST_INDEX: &str = "next_host_index";

/// Endpoint ids of a fleet: the host's index in the upper bits, the host's
/// own counter in these lower ones. So a host hands out ids by itself (also
/// while etcd is away) and they never collide with another host's.
pub const HOST_ID_SHIFT: u32 = 20;
/// Hosts of one fleet (index 1 and up; 0 is a lone host's).
pub const MAX_HOSTS: u64 = (1 << (32 - HOST_ID_SHIFT)) - 1;

/// Namespaces, task definitions, services and the ids handed out so far.
#[derive(Debug, Default, Clone)]
pub struct ConfigState {
    pub default_namespace: Option<String>,
    pub namespaces: BTreeSet<String>,
    /// Each family's newest revision.
    pub task_definitions: BTreeMap<String, TaskDefinition>,
    /// Every revision registered, by `family:N` (a store from before
    /// revisions were kept has only each family's newest, above).
    pub revisions: BTreeMap<String, TaskDefinition>,
    pub services: BTreeMap<String, ServiceRecord>,
    /// `<namespace>/<dnsName>` -> VIP offset in 127.255.0.0/16.
    pub vips: BTreeMap<String, u64>,
    /// `<namespace>/<dnsName>/<port>` -> alias id.
    pub alias_ids: BTreeMap<String, u64>,
    /// namespace -> namespace id.
    pub ns_ids: BTreeMap<String, u64>,
    /// host name -> host index (etcd).
    pub host_indexes: BTreeMap<String, u64>,
    pub counters: BTreeMap<String, u64>,
}

/// One record an apply or a reservation wrote.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Namespace(String),
    DefaultNamespace(String),
    /// A family's newest revision.
    TaskDefinition(TaskDefinition),
    /// One revision, kept for services that pin it.
    TaskDefinitionRevision(TaskDefinition),
    Service(ServiceRecord),
    Vip(String, u64),
    AliasId(String, u64),
    NamespaceId(String, u64),
    HostIndex(String, u64),
    Counter(&'static str, u64),
    /// A record deleted.
    Remove(Record),
}

/// Which record a [`Change::Remove`] deletes (the key it was written under).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Namespace(String),
    /// A family's newest-revision entry.
    TaskDefinition(String),
    Service(String),
    Vip(String),
    AliasId(String),
}

/// What `knit delete` removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum DeleteTarget {
    /// A service: out of Service Connect at once, its tasks drained and
    /// stopped on every host, then gone (its VIPs and ids free again).
    Service(String),
    /// One revision, `FAMILY:N`.
    TaskDefinition(String),
    /// A namespace without services.
    Namespace(String),
}

/// What an apply did to each thing it named, for the CLI's answer.
#[derive(Debug, Default, Serialize)]
pub struct ApplySummary {
    pub items: Vec<Applied>,
    /// Fields accepted and not used, per file (a CLI before this field
    /// ignores it).
    pub not_used: Vec<proxy_config::NotUsed>,
}

#[derive(Debug, Serialize)]
pub struct Applied {
    /// `namespace`, `task-definition` or `service`.
    pub kind: &'static str,
    /// The name (a task definition's with its revision).
    pub name: String,
    /// `created`, `updated` (a service) or `registered` (a task
    /// definition's new revision), or `unchanged` (nothing written).
    pub action: &'static str,
}

impl ApplySummary {
    fn push(&mut self, kind: &'static str, name: String, action: &'static str) {
        self.items.push(Applied { kind, name, action });
    }
}

/// "1, 2, 3", or "none".
fn list_or_none(v: &[u32]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// The key of one revision: `family:N`.
pub fn revision_key(family: &str, revision: u32) -> String {
    format!("{family}:{revision}")
}

impl ConfigState {
    /// Active revision `revision` of `family` (`None`: the newest).
    pub fn task_definition(&self, family: &str, revision: Option<u32>) -> Option<&TaskDefinition> {
        let newest = self.task_definitions.get(family);
        match revision {
            None => newest,
            Some(n) => newest
                .filter(|t| t.revision == n)
                .or_else(|| self.revisions.get(&revision_key(family, n)))
                .filter(|t| !t.inactive),
        }
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

    /// The registry as the validator needs to see it.
    pub fn existing(&self, config_default: &str) -> Existing {
        let default_namespace = self
            .default_namespace
            .clone()
            .unwrap_or_else(|| config_default.to_string());
        let mut namespaces = self.namespaces.clone();
        namespaces.insert(default_namespace.clone());
        namespaces.insert(config_default.to_string());
        Existing {
            default_namespace,
            namespaces,
            task_definitions: self.task_definitions.clone(),
            revisions: self
                .revisions
                .iter()
                .filter(|(_, t)| !t.inactive)
                .map(|(k, t)| (k.clone(), t.clone()))
                .collect(),
            services: self
                .services
                .values()
                .map(|s| (s.spec.name.clone(), s.spec.clone()))
                .collect(),
        }
    }

    fn counter(&self, name: &str, default: u64) -> u64 {
        self.counters.get(name).copied().unwrap_or(default)
    }

    /// Move a counter; one change per counter, however often it moves.
    fn set_counter(&mut self, name: &'static str, v: u64, out: &mut Vec<Change>) {
        self.counters.insert(name.to_string(), v);
        match out
            .iter_mut()
            .find(|c| matches!(c, Change::Counter(n, _) if *n == name))
        {
            Some(c) => *c = Change::Counter(name, v),
            None => out.push(Change::Counter(name, v)),
        }
    }

    /// Apply a validated plan as a diff against what is there: new
    /// namespaces, task definitions (the next revision, when they differ
    /// from the current one), and services with their aliases' VIPs and
    /// kernel ids (kept for an alias that already had them). What is equal
    /// is not written at all.
    pub fn apply(
        &mut self,
        plan: &ApplyPlan,
    ) -> Result<(ApplySummary, Vec<Change>), RegistryError> {
        let mut out = Vec::new();
        let mut summary = ApplySummary {
            not_used: plan.not_used.clone(),
            ..ApplySummary::default()
        };
        for n in plan.namespaces.iter().chain(plan.default_namespace.iter()) {
            if self.namespaces.insert(n.clone()) {
                out.push(Change::Namespace(n.clone()));
                summary.push("namespace", n.clone(), "created");
            } else {
                summary.push("namespace", n.clone(), "unchanged");
            }
        }
        if let Some(d) = &plan.default_namespace
            && self.default_namespace.as_ref() != Some(d)
        {
            self.default_namespace = Some(d.clone());
            out.push(Change::DefaultNamespace(d.clone()));
        }
        for td in &plan.task_definitions {
            let current = self.task_definitions.get(&td.family);
            // Numbers are never given twice (a deleted revision keeps its).
            let prev = self
                .revisions
                .values()
                .filter(|t| t.family == td.family)
                .map(|t| t.revision)
                .chain(current.map(|t| t.revision))
                .max()
                .unwrap_or(0);
            let current_rev = current.map_or(0, |t| t.revision);
            if let Some(cur) = current
                && (TaskDefinition {
                    revision: td.revision,
                    ..cur.clone()
                }) == *td
            {
                summary.push(
                    "task-definition",
                    format!("{}:{}", td.family, current_rev),
                    "unchanged",
                );
                continue;
            }
            let mut td = td.clone();
            td.revision = prev + 1;
            summary.push(
                "task-definition",
                format!("{}:{}", td.family, td.revision),
                "registered",
            );
            self.task_definitions.insert(td.family.clone(), td.clone());
            self.revisions
                .insert(revision_key(&td.family, td.revision), td.clone());
            out.push(Change::TaskDefinitionRevision(td.clone()));
            out.push(Change::TaskDefinition(td));
        }
        for spec in &plan.services {
            if let Some(n) = spec.task_definition_revision
                && self
                    .task_definition(&spec.task_definition, Some(n))
                    .is_none()
            {
                let known = self.revision_numbers(&spec.task_definition);
                return Err(RegistryError::BadInput(format!(
                    "service {:?}: task definition {}:{n} is not registered (registered \
                     revisions: {})\n  fix: name one of them, or leave the revision out \
                     (\"taskDefinition\": {:?}) for the newest",
                    spec.name,
                    spec.task_definition,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    spec.task_definition
                )));
            }
        }
        for spec in &plan.services {
            if self.services.get(&spec.name).is_some_and(|s| s.deleting) {
                return Err(RegistryError::BadInput(format!(
                    "service {:?} is being deleted: its tasks are draining\n  fix: apply it again once `knit services` no longer lists it",
                    spec.name
                )));
            }
            let action = match self.services.get(&spec.name) {
                Some(cur) if cur.spec == *spec => {
                    summary.push("service", spec.name.clone(), "unchanged");
                    continue;
                }
                Some(_) => "updated",
                None => "created",
            };
            let rec = self.service_record(spec, &mut out)?;
            self.services.insert(spec.name.clone(), rec.clone());
            out.push(Change::Service(rec));
            summary.push("service", spec.name.clone(), action);
        }
        Ok((summary, out))
    }

    fn service_record(
        &mut self,
        spec: &ServiceSpec,
        out: &mut Vec<Change>,
    ) -> Result<ServiceRecord, RegistryError> {
        let mut aliases = Vec::new();
        for e in &spec.endpoints {
            let vip_key = format!("{}/{}", spec.namespace, e.dns_name);
            let id_key = format!("{}/{}/{}", spec.namespace, e.dns_name, e.port);
            let vip = match self.vips.get(&vip_key) {
                Some(v) => *v,
                None => {
                    // The lowest free one: a deleted service's come back.
                    let used: BTreeSet<u64> = self.vips.values().copied().collect();
                    let next = (FIRST_VIP..=0xfffe)
                        // Skip .0 and .255 in the last octet: some tools
                        // treat them as special.
                        .filter(|v| v & 0xff != 0 && v & 0xff != 0xff)
                        .find(|v| !used.contains(v))
                        .ok_or(RegistryError::VipsExhausted)?;
                    self.vips.insert(vip_key.clone(), next);
                    out.push(Change::Vip(vip_key, next));
                    if self.counter(NEXT_VIP, FIRST_VIP) <= next {
                        self.set_counter(NEXT_VIP, next + 1, out);
                    }
                    next
                }
            };
            let service_id = match self.alias_ids.get(&id_key) {
                Some(v) => *v,
                None => {
                    let used: BTreeSet<u64> = self.alias_ids.values().copied().collect();
                    let next = (0..u64::from(MAX_SERVICES))
                        .find(|v| !used.contains(v))
                        .ok_or(RegistryError::AliasIdsExhausted(MAX_SERVICES))?;
                    self.alias_ids.insert(id_key.clone(), next);
                    out.push(Change::AliasId(id_key, next));
                    if self.counter(NEXT_SERVICE_ID, 0) <= next {
                        self.set_counter(NEXT_SERVICE_ID, next + 1, out);
                    }
                    next
                }
            };
            aliases.push(AliasRecord {
                spec: e.clone(),
                service_id: service_id as u32,
                vip: Ipv4Addr::from(0x7fff_0000u32 | vip as u32),
            });
        }
        let ns_id = match self.ns_ids.get(&spec.namespace) {
            Some(v) => *v,
            None => {
                let next = self.counter(NEXT_NAMESPACE_ID, 1);
                self.set_counter(NEXT_NAMESPACE_ID, next + 1, out);
                self.ns_ids.insert(spec.namespace.clone(), next);
                out.push(Change::NamespaceId(spec.namespace.clone(), next));
                next
            }
        };
        Ok(ServiceRecord {
            spec: spec.clone(),
            ns_id: ns_id as u32,
            aliases,
            deleting: false,
            deleted_unix_ms: 0,
        })
    }

    /// Start deleting: a service is marked (its tasks drain everywhere;
    /// [`ConfigState::release_service`] removes it once none is left); a
    /// revision or an empty namespace goes at once. ECS's rules: a
    /// namespace with services, the default namespace and a revision a
    /// service pins cannot be deleted.
    pub fn delete(&mut self, target: &DeleteTarget) -> Result<Vec<Change>, RegistryError> {
        match target {
            DeleteTarget::Service(name) => {
                let Some(s) = self.services.get_mut(name) else {
                    return Err(RegistryError::BadInput(format!(
                        "no service {name:?} is registered\n  fix: knit services lists them"
                    )));
                };
                if s.deleting {
                    return Ok(Vec::new());
                }
                s.deleting = true;
                s.deleted_unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                Ok(vec![Change::Service(s.clone())])
            }
            DeleteTarget::Namespace(ns) => {
                if !self.namespaces.contains(ns) {
                    return Err(RegistryError::BadInput(format!(
                        "no namespace {ns:?} was created"
                    )));
                }
                if self.default_namespace.as_ref() == Some(ns) {
                    return Err(RegistryError::BadInput(format!(
                        "namespace {ns:?} is the default namespace (a cluster's serviceConnectDefaults)\n  fix: apply a cluster with another default first"
                    )));
                }
                let users: Vec<&str> = self
                    .services
                    .values()
                    .filter(|s| &s.spec.namespace == ns)
                    .map(|s| s.spec.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(RegistryError::BadInput(format!(
                        "namespace {ns:?} has services: {}\n  fix: knit delete service each of them first (and wait until they are gone)",
                        users.join(", ")
                    )));
                }
                self.namespaces.remove(ns);
                Ok(vec![Change::Remove(Record::Namespace(ns.clone()))])
            }
            DeleteTarget::TaskDefinition(which) => {
                let Some((family, n)) = which
                    .rsplit_once(':')
                    .and_then(|(f, n)| Some((f, n.parse::<u32>().ok()?)))
                else {
                    return Err(RegistryError::BadInput(format!(
                        "{which:?} is not FAMILY:REVISION\n  fix: knit delete task-definition web:3"
                    )));
                };
                if self.task_definition(family, Some(n)).is_none() {
                    return Err(RegistryError::BadInput(format!(
                        "task definition {family}:{n} is not registered (registered revisions: {})",
                        list_or_none(&self.revision_numbers(family))
                    )));
                }
                let newest = self.task_definitions.get(family).map(|t| t.revision);
                let left: Vec<u32> = self
                    .revision_numbers(family)
                    .into_iter()
                    .filter(|r| *r != n)
                    .collect();
                let users: Vec<&str> = self
                    .services
                    .values()
                    .filter(|s| s.spec.task_definition == family)
                    .filter(|s| match s.spec.task_definition_revision {
                        Some(p) => p == n,
                        // The newest, with nothing left to be the newest.
                        None => newest == Some(n) && left.is_empty(),
                    })
                    .map(|s| s.spec.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(RegistryError::BadInput(format!(
                        "task definition {family}:{n} is what service(s) {} run\n  fix: apply them with another revision, or delete them first",
                        users.join(", ")
                    )));
                }
                // Kept, inactive: its number is never reused, and tasks
                // that run it keep their health check and stopTimeout.
                let key = revision_key(family, n);
                let Some(mut gone) = self.task_definition(family, Some(n)).cloned() else {
                    return Err(RegistryError::BadInput(format!(
                        "task definition {family}:{n} is not registered"
                    )));
                };
                gone.inactive = true;
                self.revisions.insert(key, gone.clone());
                let mut out = vec![Change::TaskDefinitionRevision(gone)];
                if newest == Some(n) {
                    match left
                        .last()
                        .and_then(|r| self.revisions.get(&revision_key(family, *r)))
                    {
                        Some(prev) => {
                            let prev = prev.clone();
                            self.task_definitions
                                .insert(family.to_string(), prev.clone());
                            out.push(Change::TaskDefinition(prev));
                        }
                        None => {
                            self.task_definitions.remove(family);
                            out.push(Change::Remove(Record::TaskDefinition(family.to_string())));
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// A deleted service whose tasks are all gone: remove it, and give its
    /// VIPs and alias ids back (those no other service's alias uses).
    pub fn release_service(&mut self, name: &str) -> Vec<Change> {
        if !self.services.get(name).is_some_and(|s| s.deleting) {
            return Vec::new();
        }
        let Some(gone) = self.services.remove(name) else {
            return Vec::new();
        };
        let mut out = vec![Change::Remove(Record::Service(name.to_string()))];
        let ns = &gone.spec.namespace;
        for a in &gone.aliases {
            let vip_key = format!("{ns}/{}", a.spec.dns_name);
            let id_key = format!("{ns}/{}/{}", a.spec.dns_name, a.spec.port);
            let still = |dns: &str, port: Option<u16>| {
                self.services.values().any(|s| {
                    &s.spec.namespace == ns
                        && s.aliases.iter().any(|b| {
                            b.spec.dns_name == dns && port.is_none_or(|p| b.spec.port == p)
                        })
                })
            };
            if !still(&a.spec.dns_name, Some(a.spec.port))
                && self.alias_ids.remove(&id_key).is_some()
            {
                out.push(Change::Remove(Record::AliasId(id_key)));
            }
            if !still(&a.spec.dns_name, None) && self.vips.remove(&vip_key).is_some() {
                out.push(Change::Remove(Record::Vip(vip_key)));
            }
        }
        out
    }

    /// A task id and `n` fresh endpoint ids for a task of `service`, from
    /// this host's counters. In a fleet (`host`: name and index) the id
    /// carries the host's name and the endpoint ids its index.
    pub fn reserve_task(
        &mut self,
        service: &str,
        n: usize,
        host: Option<(&str, u32)>,
    ) -> ((String, Vec<u32>), Vec<Change>) {
        let mut out = Vec::new();
        let task_no = self.counter(NEXT_TASK, 1);
        self.set_counter(NEXT_TASK, task_no + 1, &mut out);
        let first = self.counter(NEXT_BACKEND_ID, 1);
        self.set_counter(NEXT_BACKEND_ID, first + n as u64, &mut out);
        match host {
            None => {
                let ids = (0..n).map(|i| (first + i as u64) as u32).collect();
                ((format!("{service}-{task_no}"), ids), out)
            }
            Some((name, index)) => {
                let low = (1u64 << HOST_ID_SHIFT) - 1;
                // The low bits wrap after a million endpoints; 0 is skipped.
                let ids = (0..n as u64)
                    .map(|i| {
                        let local = (first + i) % low + 1;
                        ((u64::from(index) << HOST_ID_SHIFT) | local) as u32
                    })
                    .collect();
                ((format!("{service}-{name}-{task_no}"), ids), out)
            }
        }
    }

    /// This host's index in the fleet, handed out on first use.
    pub fn host_index(&mut self, host: &str) -> Result<(u32, Vec<Change>), RegistryError> {
        let mut out = Vec::new();
        if let Some(i) = self.host_indexes.get(host) {
            return Ok((*i as u32, out));
        }
        let next = self.counter(NEXT_HOST_INDEX, 1);
        if next > MAX_HOSTS {
            return Err(RegistryError::HostsExhausted(MAX_HOSTS));
        }
        self.set_counter(NEXT_HOST_INDEX, next + 1, &mut out);
        self.host_indexes.insert(host.to_string(), next);
        out.push(Change::HostIndex(host.to_string(), next));
        Ok((next as u32, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_config::{AppProtocol, EndpointSpec};

    #[test]
    fn each_counter_is_written_once_per_apply() -> Result<(), RegistryError> {
        let svc = |n: &str| ServiceSpec {
            name: n.into(),
            task_definition: n.into(),
            task_definition_revision: None,
            enabled: true,
            namespace: "default".into(),
            endpoints: vec![EndpointSpec {
                port_name: "tcp".into(),
                discovery_name: n.into(),
                dns_name: n.into(),
                port: 80,
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
        };
        let plan = ApplyPlan {
            namespaces: vec![],
            default_namespace: None,
            task_definitions: vec![],
            services: vec![svc("a"), svc("b"), svc("c")],
            ..ApplyPlan::default()
        };
        let mut state = ConfigState::default();
        let (_, changes) = state.apply(&plan)?;
        let mut counters: Vec<&str> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Counter(n, _) => Some(*n),
                _ => None,
            })
            .collect();
        let all = counters.len();
        counters.dedup();
        assert_eq!(counters.len(), all, "{changes:?}");
        let mut vips: Vec<u64> = state.vips.values().copied().collect();
        vips.sort();
        assert_eq!(vips, [1, 2, 3]);
        Ok(())
    }

    #[test]
    fn a_deleted_service_gives_its_vip_and_id_back_once_released() -> Result<(), RegistryError> {
        let svc = |n: &str| ServiceSpec {
            name: n.into(),
            task_definition: "td".into(),
            task_definition_revision: None,
            enabled: true,
            namespace: "default".into(),
            endpoints: vec![EndpointSpec {
                port_name: "tcp".into(),
                discovery_name: n.into(),
                dns_name: n.into(),
                port: 80,
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
        };
        let plan = |s: Vec<ServiceSpec>| ApplyPlan {
            namespaces: vec!["other".into()],
            default_namespace: None,
            task_definitions: vec![],
            services: s,
            ..ApplyPlan::default()
        };
        let mut state = ConfigState::default();
        state.apply(&plan(vec![svc("a"), svc("b")]))?;
        let a = state.services["a"].aliases[0].clone();
        state.delete(&DeleteTarget::Service("a".into()))?;
        assert!(state.services["a"].deleting);
        // Not released yet: a new service gets a new VIP.
        state.apply(&plan(vec![svc("c")]))?;
        assert_ne!(state.services["c"].aliases[0].vip, a.vip);
        let changes = state.release_service("a");
        assert!(changes.contains(&Change::Remove(Record::Service("a".into()))));
        state.apply(&plan(vec![svc("d")]))?;
        let d = &state.services["d"].aliases[0];
        assert_eq!((d.vip, d.service_id), (a.vip, a.service_id));
        // Namespaces: only an empty one, never the default.
        assert!(
            state
                .delete(&DeleteTarget::Namespace("other".into()))
                .is_ok()
        );
        assert!(matches!(
            state.delete(&DeleteTarget::Namespace("nope".into())),
            Err(RegistryError::BadInput(_))
        ));
        Ok(())
    }

    #[test]
    fn every_revision_is_kept_and_a_pin_must_name_one() -> Result<(), RegistryError> {
        let td = |cmd: &str| TaskDefinition {
            family: "web".into(),
            revision: 0,
            port_mappings: vec![],
            command: vec![cmd.into()],
            health_check: None,
            stop_timeout_s: None,
            inactive: false,
        };
        let svc = |rev: Option<u32>| ServiceSpec {
            name: "web".into(),
            task_definition: "web".into(),
            task_definition_revision: rev,
            enabled: true,
            namespace: "default".into(),
            endpoints: vec![],
            access_log: None,
        };
        let plan = |tds: Vec<TaskDefinition>, svcs: Vec<ServiceSpec>| ApplyPlan {
            namespaces: vec![],
            default_namespace: None,
            task_definitions: tds,
            services: svcs,
            ..ApplyPlan::default()
        };
        let mut state = ConfigState::default();
        state.apply(&plan(vec![td("one")], vec![svc(Some(1))]))?;
        state.apply(&plan(vec![td("two")], vec![]))?;
        // The same content again is no new revision.
        let (summary, changes) = state.apply(&plan(vec![td("two")], vec![]))?;
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(summary.items[0].action, "unchanged");
        assert_eq!(state.revision_numbers("web"), vec![1, 2]);
        let cmd = |rev| {
            state
                .task_definition("web", rev)
                .map(|t| t.command[0].clone())
        };
        assert_eq!(cmd(Some(1)).as_deref(), Some("one"));
        assert_eq!(cmd(Some(2)).as_deref(), Some("two"));
        assert_eq!(cmd(None).as_deref(), Some("two"));
        // A deleted revision's number is never given again.
        state.apply(&plan(vec![td("three")], vec![]))?;
        state.delete(&DeleteTarget::TaskDefinition("web:3".into()))?;
        assert_eq!(state.revision_numbers("web"), vec![1, 2]);
        assert!(state.task_definition("web", Some(3)).is_none());
        state.apply(&plan(vec![td("four")], vec![]))?;
        assert_eq!(state.revision_numbers("web"), vec![1, 2, 4]);
        let err = state.apply(&plan(vec![], vec![svc(Some(3))]));
        assert!(
            matches!(&err, Err(RegistryError::BadInput(m)) if m.contains("web:3") && m.contains("1, 2, 4")),
            "{err:?}"
        );
        Ok(())
    }
}
