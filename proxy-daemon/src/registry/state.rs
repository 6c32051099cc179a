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
/// Counter names.
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
    pub task_definitions: BTreeMap<String, TaskDefinition>,
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
    TaskDefinition(TaskDefinition),
    Service(ServiceRecord),
    Vip(String, u64),
    AliasId(String, u64),
    NamespaceId(String, u64),
    HostIndex(String, u64),
    Counter(&'static str, u64),
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

impl ConfigState {
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
            let prev = current.map_or(0, |t| t.revision);
            if let Some(cur) = current
                && (TaskDefinition {
                    revision: td.revision,
                    ..cur.clone()
                }) == *td
            {
                summary.push(
                    "task-definition",
                    format!("{}:{}", td.family, prev),
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
            out.push(Change::TaskDefinition(td));
        }
        for spec in &plan.services {
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
                    let mut next = self.counter(NEXT_VIP, FIRST_VIP);
                    // Skip .0 and .255 in the last octet: some tools treat them as special.
                    while next & 0xff == 0 || next & 0xff == 0xff {
                        next += 1;
                    }
                    if next > 0xfffe {
                        return Err(RegistryError::VipsExhausted);
                    }
                    self.set_counter(NEXT_VIP, next + 1, out);
                    self.vips.insert(vip_key.clone(), next);
                    out.push(Change::Vip(vip_key, next));
                    next
                }
            };
            let service_id = match self.alias_ids.get(&id_key) {
                Some(v) => *v,
                None => {
                    let next = self.counter(NEXT_SERVICE_ID, 0);
                    if next >= u64::from(MAX_SERVICES) {
                        return Err(RegistryError::AliasIdsExhausted(MAX_SERVICES));
                    }
                    self.set_counter(NEXT_SERVICE_ID, next + 1, out);
                    self.alias_ids.insert(id_key.clone(), next);
                    out.push(Change::AliasId(id_key, next));
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
        })
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
            }],
            access_log: None,
            enabled: true,
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
        let vip_counters: Vec<&Change> = changes
            .iter()
            .filter(|c| matches!(c, Change::Counter(NEXT_VIP, _)))
            .collect();
        assert_eq!(vip_counters, vec![&Change::Counter(NEXT_VIP, 4)]);
        assert_eq!(state.vips.len(), 3);
        Ok(())
    }
}
