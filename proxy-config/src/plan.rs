//! Building the [`ApplyPlan`]: the rules that need more than one object.
//!
//! Order inside and across files does not matter: every object is read and
//! checked on its own first, then namespaces and the default namespace are
//! settled, then each service is resolved against its task definition (from
//! this apply, else from [`Existing`]) and its names checked for uniqueness
//! in the namespace. Existing services whose task definition is
//! re-registered are re-resolved, and must still fit.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::ApplyErrors;
use crate::model::{AppProtocol, ApplyPlan, Existing, ServiceSpec, Source, TaskDefinition};
use crate::parse::{self, Loc, Object, Report};
use crate::validate::{self, LocalService, LocalTaskDefinition};

mod resolve;

use resolve::{Claims, endpoint, recheck_existing};

/// Parses and validates the files of one `knit apply` against what exists.
///
/// `files` are (name, contents) pairs; each holds one JSON object or an array
/// of objects: task definitions (`aws ecs register-task-definition` input),
/// services (`aws ecs create-service` input), clusters (`aws ecs
/// create-cluster` input, for `serviceConnectDefaults`) and namespaces (`aws
/// servicediscovery create-http-namespace` input). On any problem, every
/// problem in every file is returned and nothing else.
pub fn plan(files: &[(String, Vec<u8>)], existing: &Existing) -> Result<ApplyPlan, ApplyErrors> {
    let mut report = Report::default();
    let mut tds: Vec<LocalTaskDefinition> = Vec::new();
    let mut services: Vec<LocalService> = Vec::new();
    let mut namespaces: Vec<String> = Vec::new();
    let mut default_namespace: Option<(String, Loc)> = None;
    // Counted before anything is built: a refusal costs a scan of the
    // bytes, not a plan.
    let mut objects = 0;
    for (name, bytes) in files {
        objects += parse::count_objects(
            bytes,
            parse::MAX_OBJECTS_PER_APPLY - objects.min(parse::MAX_OBJECTS_PER_APPLY),
        );
        if objects > parse::MAX_OBJECTS_PER_APPLY {
            let loc = Loc {
                file: name.clone(),
                prefix: "$".to_owned(),
            };
            report.error(
                &loc,
                "",
                format!(
                    "this apply holds more than {} objects (task definitions, services, \
                     namespaces, clusters), the most one apply may carry",
                    parse::MAX_OBJECTS_PER_APPLY
                ),
                "split it into several applies",
            );
            return Err(ApplyErrors(report.finish()));
        }
    }
    for (name, bytes) in files {
        for doc in parse::file(name, bytes, &mut report) {
            match doc.object {
                Object::TaskDefinition(j) => {
                    tds.extend(validate::task_definition(j, doc.loc, &mut report))
                }
                Object::Service(j) => services.extend(validate::service(j, doc.loc, &mut report)),
                Object::Namespace(j) => {
                    namespaces.extend(validate::namespace(j, &doc.loc, &mut report))
                }
                Object::Cluster(j) => {
                    if let Some(ns) = validate::cluster(j, &doc.loc, &mut report) {
                        let default = &mut default_namespace;
                        cluster_default(default, &mut namespaces, ns, doc.loc, &mut report);
                    }
                }
            }
        }
    }

    let default_ns = default_namespace
        .as_ref()
        .map_or(existing.default_namespace.as_str(), |(n, _)| n.as_str());
    let mut known_ns: BTreeSet<&str> = existing.namespaces.iter().map(String::as_str).collect();
    known_ns.insert(existing.default_namespace.as_str());
    known_ns.extend(namespaces.iter().map(String::as_str));

    let new_tds = unique_families(&tds, &mut report);
    let replaced: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let mut claims = Claims::default();
    for (name, svc) in &existing.services {
        if !replaced.contains(name.as_str()) {
            claims.add_existing(svc);
        }
    }

    let mut out_services = Vec::new();
    let mut sources = BTreeMap::new();
    let mut seen_services: BTreeMap<&str, &Loc> = BTreeMap::new();
    for svc in &services {
        if let Some(first) = seen_services.insert(&svc.name, &svc.loc) {
            report.error(
                &svc.loc,
                ".serviceName",
                format!(
                    "service {:?} is defined twice in this apply (also in {} at {})",
                    svc.name, first.file, first.prefix
                ),
                "keep one definition per service",
            );
            continue;
        }
        let namespace = svc.namespace.as_deref().unwrap_or(default_ns);
        if !known_ns.contains(namespace) {
            let known: Vec<&str> = known_ns.iter().copied().collect();
            report.error(
                &svc.loc,
                ".serviceConnectConfiguration.namespace",
                format!(
                    "namespace {namespace:?} does not exist (known: {})",
                    list(&known)
                ),
                format!(
                    "{}create it in this apply with an object {{\"Name\": {namespace:?}}}, \
                        or use one of the known namespaces",
                    did_you_mean(namespace, &known)
                ),
            );
        }
        let Some(family) = &svc.family else { continue };
        // A pinned revision that is registered is what the service runs:
        // checked against it (a newer revision may differ).
        let pinned = svc.revision.and_then(|n| {
            existing
                .task_definitions
                .get(family)
                .filter(|t| t.revision == n)
                .or_else(|| existing.revisions.get(&format!("{family}:{n}")))
        });
        let td = match (pinned, new_tds.get(family.as_str())) {
            (Some(td), _) => Some((td, None)),
            (None, Some(local)) => Some((&local.td, Some(&local.udp))),
            (None, None) => existing.task_definitions.get(family).map(|td| (td, None)),
        };
        let Some((td, udp)) = td else {
            let mut known: BTreeSet<&str> = existing
                .task_definitions
                .keys()
                .map(String::as_str)
                .collect();
            known.extend(new_tds.keys().copied());
            let known_list: Vec<&str> = known.into_iter().collect();
            report.error(
                &svc.loc,
                ".taskDefinition",
                format!(
                    "task definition family {family:?} is neither registered nor in this \
                        apply (known: {})",
                    list(&known_list)
                ),
                format!(
                    "{}apply its task definition JSON together with this service (knit \
                        apply -f taskdef.json -f service.json), or name a known family",
                    did_you_mean(family, &known_list)
                ),
            );
            continue;
        };
        let mut endpoints = Vec::new();
        for entry in &svc.entries {
            if let Some(ep) = endpoint(svc, entry, td, udp, namespace, &mut report)
                && claims.take(&ep, svc, entry, namespace, &mut report)
            {
                endpoints.push(ep);
            }
        }
        ingress_ports(svc, td, &mut report);
        sources.insert(
            svc.name.clone(),
            Source {
                file: svc.loc.file.clone(),
                path: svc.loc.prefix.clone(),
            },
        );
        out_services.push(ServiceSpec {
            name: svc.name.clone(),
            task_definition: family.clone(),
            task_definition_revision: svc.revision,
            namespace: namespace.to_owned(),
            endpoints,
            access_log: svc.access_log,
            enabled: svc.enabled,
        });
    }

    recheck_existing(
        existing,
        &replaced,
        &new_tds,
        &mut out_services,
        &mut report,
    );

    if !report.is_empty() {
        return Err(ApplyErrors(report.finish()));
    }
    let mut seen_ns = BTreeSet::new();
    let new_namespaces = namespaces
        .into_iter()
        .filter(|n| !existing.namespaces.contains(n) && seen_ns.insert(n.clone()))
        .collect();
    Ok(ApplyPlan {
        namespaces: new_namespaces,
        default_namespace: default_namespace.map(|(n, _)| n),
        task_definitions: tds.into_iter().map(|t| t.td).collect(),
        services: out_services,
        not_used: report.take_not_used(),
        sources,
    })
}

/// Each services[] entry of an HTTP port mapping gets an ingress listener
/// of its own on every host that runs a task: an `ingressPortOverride`
/// can serve only one entry, and not a port the task's app listens on.
fn ingress_ports(svc: &LocalService, td: &TaskDefinition, report: &mut Report) {
    let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
    for e in &svc.entries {
        let Some(port) = e.ingress_port_override else {
            continue;
        };
        let at = format!("{}.ingressPortOverride", e.at);
        if td
            .port_mapping(&e.port_name)
            .is_none_or(|pm| pm.app_protocol == AppProtocol::Tcp)
        {
            continue;
        }
        if let Some(app) = td.port_mappings.iter().find(|pm| pm.container_port == port) {
            report.error(
                &svc.loc,
                &at,
                format!(
                    "ingressPortOverride {port} is the containerPort of port mapping {:?}, \
                        where the task's app listens",
                    app.name
                ),
                "choose another port for the ingress listener, or leave ingressPortOverride \
                    out (knit then picks a free one)",
            );
        } else if let Some(first) = seen.insert(port, &e.at) {
            report.error(
                &svc.loc,
                &at,
                format!(
                    "ingressPortOverride {port} is also the ingress port of {}; each \
                        services[] entry gets a listener of its own",
                    svc.loc.at(first)
                ),
                "give each entry its own ingressPortOverride, or leave it out (knit then \
                    picks a free port)",
            );
            seen.insert(port, first);
        }
    }
}

/// Records a cluster's `serviceConnectDefaults.namespace`; a different one
/// from a second cluster is an error.
fn cluster_default(
    default_namespace: &mut Option<(String, Loc)>,
    namespaces: &mut Vec<String>,
    ns: String,
    loc: Loc,
    report: &mut Report,
) {
    match default_namespace {
        Some((first, _)) if *first == ns => {}
        Some((first, at)) => report.error(
            &loc,
            ".serviceConnectDefaults.namespace",
            format!(
                "a second default namespace {ns:?}; {} at {} already sets {first:?}",
                at.file,
                at.at(".serviceConnectDefaults.namespace")
            ),
            "keep one serviceConnectDefaults.namespace per apply",
        ),
        None => {
            namespaces.push(ns.clone());
            *default_namespace = Some((ns, loc));
        }
    }
}

/// Task definitions of this apply by family; a family twice is an error.
fn unique_families<'a>(
    tds: &'a [LocalTaskDefinition],
    report: &mut Report,
) -> BTreeMap<&'a str, &'a LocalTaskDefinition> {
    let mut by_family: BTreeMap<&str, &LocalTaskDefinition> = BTreeMap::new();
    for td in tds {
        if let Some(first) = by_family.get(td.td.family.as_str()) {
            report.error(
                &td.loc,
                ".family",
                format!(
                    "task definition family {:?} is defined twice in this apply (also in {} at {})",
                    td.td.family, first.loc.file, first.loc.prefix
                ),
                "keep one task definition per family in one apply",
            );
        } else {
            by_family.insert(&td.td.family, td);
        }
    }
    by_family
}

/// `did you mean "x"? ` when one of `names` is a likely typo of `wrong`.
pub(crate) fn did_you_mean(wrong: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| (edit_distance(wrong, n), *n))
        .filter(|&(d, n)| d > 0 && d <= (n.chars().count() / 3).max(1))
        .min()
        .map(|(_, n)| format!("did you mean {n:?}? "))
        .unwrap_or_default()
}

/// Edit distance counting a swap of neighbours as one edit (optimal
/// string alignment), for typo hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// `"a", "b", "c"`, or `none` for an empty list; at most 20 names.
pub(crate) fn list(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let mut shown: Vec<String> = names.iter().take(20).map(|n| format!("{n:?}")).collect();
    if names.len() > 20 {
        shown.push(format!("and {} more", names.len() - 20));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests;
