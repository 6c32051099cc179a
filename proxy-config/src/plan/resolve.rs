//! Resolving one service entry against its task definition and namespace,
//! claiming its names in the namespace, and re-checking existing services
//! against re-registered task definitions.

use std::collections::{BTreeMap, BTreeSet};

use super::{did_you_mean, list};
use crate::model::{EndpointSpec, Existing, ServiceSpec, TaskDefinition};
use crate::names;
use crate::parse::Report;
use crate::validate::{LocalEntry, LocalService, LocalTaskDefinition};

/// Resolves one entry against the task definition; `None` after reporting.
pub(super) fn endpoint(
    svc: &LocalService,
    e: &LocalEntry,
    td: &TaskDefinition,
    udp: Option<&BTreeSet<String>>,
    namespace: &str,
    report: &mut Report,
) -> Option<EndpointSpec> {
    let loc = &svc.loc;
    let Some(pm) = td.port_mapping(&e.port_name) else {
        let names: Vec<&str> = td.port_mappings.iter().map(|p| p.name.as_str()).collect();
        let (message, fix) = if udp.is_some_and(|u| u.contains(&e.port_name)) {
            (
                format!(
                    "portName {:?} is a udp port mapping of task definition {:?}; Service \
                            Connect carries TCP only",
                    e.port_name, td.family
                ),
                "use a tcp port mapping".to_owned(),
            )
        } else if names.is_empty() {
            (
                format!(
                    "portName {:?} is not a port mapping of task definition {:?} (it has \
                            no named port mappings)",
                    e.port_name, td.family
                ),
                format!(
                    "add \"name\": {:?} to a portMappings entry of {:?}",
                    e.port_name, td.family
                ),
            )
        } else {
            (
                format!(
                    "portName {:?} is not a port mapping of task definition {:?} (it has: {})",
                    e.port_name,
                    td.family,
                    list(&names)
                ),
                format!(
                    "{}set portName to one of those, or add a port mapping named {:?}",
                    did_you_mean(&e.port_name, &names),
                    e.port_name
                ),
            )
        };
        report.error(loc, &format!("{}.portName", e.at), message, fix);
        return None;
    };
    let mut ok = true;
    if e.per_request_timeout_s.is_some() && !pm.app_protocol.is_l7() {
        report.error(
            loc,
            &format!("{}.timeout.perRequestTimeoutSeconds", e.at),
            format!(
                "perRequestTimeoutSeconds needs an HTTP port mapping, but {:?} in {:?} \
                    is TCP (no appProtocol); ECS rejects it too",
                pm.name, td.family
            ),
            "remove perRequestTimeoutSeconds, or set \"appProtocol\" (http, http2 \
                    or grpc) on the port mapping",
        );
        ok = false;
    }
    if e.limits.is_some() && !pm.app_protocol.is_l7() {
        report.error(
            loc,
            &format!("{}.limits", e.at),
            format!(
                "limits apply to HTTP services, but port mapping {:?} in {:?} is TCP \
                    (no appProtocol): its connections never pass through the proxy",
                pm.name, td.family
            ),
            "remove limits, or set \"appProtocol\" (http, http2 or grpc) on the port \
                    mapping",
        );
        ok = false;
    }
    let discovery_name = e
        .discovery_name
        .clone()
        .unwrap_or_else(|| e.port_name.clone());
    if e.discovery_name.is_none()
        && let Err(problem) = names::check_port_name(&discovery_name)
    {
        report.error(
            loc,
            &format!("{}.portName", e.at),
            format!("the discoveryName defaults to portName {discovery_name:?}, which {problem}"),
            format!(
                "add \"discoveryName\": {:?}",
                names::suggest(&discovery_name, names::MAX_PORT_NAME)
            ),
        );
        ok = false;
    }
    let alias = e.alias.as_ref().ok()?;
    let dns_name = match alias.as_ref().and_then(|a| a.dns_name.clone()) {
        Some(d) => d,
        None => {
            let d = format!("{discovery_name}.{namespace}");
            if let Err(problem) = names::check_derived_dns_name(&d) {
                report.error(
                    loc,
                    &e.at,
                    format!("the default client name {d:?} (discoveryName.namespace) {problem}"),
                    "set clientAliases[0].dnsName, e.g. \"web.internal\"",
                );
                ok = false;
            }
            d
        }
    };
    let port = match alias {
        Some(a) => a.port,
        None if pm.container_port == 0 => {
            report.error(
                loc,
                &e.at,
                format!(
                    "no clientAliases port, and port mapping {:?} has no containerPort to \
                    default to (knit picks that one per task)",
                    pm.name
                ),
                "add \"clientAliases\": [{\"port\": 80}] with the port clients should \
                    connect to",
            );
            return None;
        }
        None => pm.container_port,
    };
    let test_traffic = alias.as_ref().and_then(|a| a.test_traffic.clone());
    if test_traffic.is_some() && !pm.app_protocol.is_l7() {
        report.error(
            loc,
            &format!("{}.clientAliases[0].testTrafficRules", e.at),
            format!(
                "testTrafficRules route requests by HTTP header, but port mapping {:?} in \
                    {:?} is TCP (no appProtocol): its connections carry no headers knit reads",
                pm.name, td.family
            ),
            "remove testTrafficRules, or set \"appProtocol\" (http, http2 or grpc) on the \
                    port mapping",
        );
        ok = false;
    }
    if e.ingress_port_override.is_some() && !pm.app_protocol.is_l7() && !e.tls {
        // TCP goes host to host in the kernel: there is no ingress listener
        // to move, and the app's port is always reachable directly. (With
        // tls other hosts come through an ingress listener.)
        report.not_used(loc, &format!("{}.ingressPortOverride", e.at));
    }
    ok.then(|| EndpointSpec {
        port_name: e.port_name.clone(),
        discovery_name,
        dns_name,
        port,
        app_protocol: pm.app_protocol,
        container_port: pm.container_port,
        ingress_port_override: e.ingress_port_override,
        idle_timeout_s: e.idle_timeout_s,
        per_request_timeout_s: e.per_request_timeout_s,
        outlier: e.outlier.clone(),
        limits: e.limits,
        test_traffic,
        tls: e.tls,
        allowed_clients: e.allowed_clients.clone(),
        allowed_clients_audit: e.allowed_clients_audit,
    })
}

/// Who holds each discovery name and client alias, per namespace.
#[derive(Default)]
pub(super) struct Claims {
    /// (namespace, discoveryName) -> holder.
    discovery: BTreeMap<(String, String), String>,
    /// (namespace, dnsName, port) -> holder.
    alias: BTreeMap<(String, String, u16), String>,
}

impl Claims {
    pub(super) fn add_existing(&mut self, svc: &ServiceSpec) {
        for ep in &svc.endpoints {
            let holder = format!("service {:?}", svc.name);
            self.discovery.insert(
                (svc.namespace.clone(), ep.discovery_name.clone()),
                holder.clone(),
            );
            self.alias.insert(
                (svc.namespace.clone(), ep.dns_name.clone(), ep.port),
                holder,
            );
        }
    }

    /// Claims `ep`'s names for `svc`; false (after reporting) when taken.
    pub(super) fn take(
        &mut self,
        ep: &EndpointSpec,
        svc: &LocalService,
        e: &LocalEntry,
        namespace: &str,
        report: &mut Report,
    ) -> bool {
        let holder = format!(
            "service {:?} ({} at {}{})",
            svc.name, svc.loc.file, svc.loc.prefix, e.at
        );
        let dkey = (namespace.to_owned(), ep.discovery_name.clone());
        if let Some(other) = self.discovery.get(&dkey) {
            let at = if e.discovery_name.is_some() {
                ".discoveryName"
            } else {
                ".portName"
            };
            report.error(
                &svc.loc,
                &format!("{}{at}", e.at),
                format!(
                    "discoveryName {:?} is already used in namespace {namespace:?} by {other}",
                    ep.discovery_name
                ),
                "set a discoveryName that is unique in the namespace, e.g. \"SERVICE-PORTNAME\"",
            );
            return false;
        }
        let akey = (namespace.to_owned(), ep.dns_name.clone(), ep.port);
        if let Some(other) = self.alias.get(&akey) {
            report.error(
                &svc.loc,
                &format!("{}.clientAliases", e.at),
                format!(
                    "client alias {}:{} is already used in namespace {namespace:?} by {other}",
                    ep.dns_name, ep.port
                ),
                "choose another clientAliases dnsName or port",
            );
            return false;
        }
        self.discovery.insert(dkey, holder.clone());
        self.alias.insert(akey, holder);
        true
    }
}

/// Existing services (not replaced here) whose task definition this apply
/// re-registers: each endpoint must still resolve; changed ones are planned.
pub(super) fn recheck_existing(
    existing: &Existing,
    replaced: &BTreeSet<&str>,
    new_tds: &BTreeMap<&str, &LocalTaskDefinition>,
    out: &mut Vec<ServiceSpec>,
    report: &mut Report,
) {
    for (name, svc) in &existing.services {
        let Some(local) = new_tds.get(svc.task_definition.as_str()) else {
            continue;
        };
        // Pinned to a revision: a new one changes nothing it runs.
        if svc.task_definition_revision.is_some() {
            continue;
        }
        if replaced.contains(name.as_str()) {
            continue;
        }
        let mut updated = svc.clone();
        for ep in &mut updated.endpoints {
            let Some(pm) = local.td.port_mapping(&ep.port_name) else {
                report.error(
                    &local.loc,
                    "",
                    format!(
                        "task definition {:?} no longer has port mapping {:?}, which service \
                        {name:?} uses (portName)",
                        local.td.family, ep.port_name
                    ),
                    format!(
                        "keep a port mapping named {:?}, or apply service {name:?} again in \
                        this apply without it",
                        ep.port_name
                    ),
                );
                continue;
            };
            if ep.per_request_timeout_s.is_some() && !pm.app_protocol.is_l7() {
                report.error(
                    &local.loc,
                    "",
                    format!(
                        "port mapping {:?} of {:?} becomes TCP, but service {name:?} sets \
                        perRequestTimeoutSeconds on it",
                        pm.name, local.td.family
                    ),
                    format!(
                        "keep its appProtocol, or apply service {name:?} again without \
                        timeout.perRequestTimeoutSeconds"
                    ),
                );
            }
            if ep.limits.is_some() && !pm.app_protocol.is_l7() {
                report.error(
                    &local.loc,
                    "",
                    format!(
                        "port mapping {:?} of {:?} becomes TCP, but service {name:?} sets \
                        limits on it",
                        pm.name, local.td.family
                    ),
                    format!("keep its appProtocol, or apply service {name:?} again without limits"),
                );
            }
            ep.app_protocol = pm.app_protocol;
            ep.container_port = pm.container_port;
        }
        if updated != *svc {
            out.push(updated);
        }
    }
}

#[cfg(test)]
mod tests;
