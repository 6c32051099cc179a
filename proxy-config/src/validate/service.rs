//! Service rules (serviceName, taskDefinition, serviceConnectConfiguration
//! and its services[] entries), and the cluster and namespace objects.

use super::{Alias, LocalEntry, LocalService, PORT_FIX, ranged};
use crate::ecs::{
    ClientAliasJson, ClusterJson, NamespaceJson, ServiceConnectServiceJson, ServiceJson,
};
use crate::names;
use crate::parse::{Loc, Report};

/// Checks a service; `None` when it has no usable name.
pub(crate) fn service(json: ServiceJson, loc: Loc, report: &mut Report) -> Option<LocalService> {
    let name = match json.service_name {
        None => {
            report.error(
                &loc,
                ".serviceName",
                "serviceName is null",
                "set \"serviceName\", e.g. \"web\"",
            );
            None
        }
        Some(n) => match names::check_resource_name(&n) {
            Ok(()) => Some(n),
            Err(problem) => {
                report.error(
                    &loc,
                    ".serviceName",
                    format!("serviceName {n:?} {problem}"),
                    format!(
                        "rename it, e.g. {:?}",
                        names::suggest(&n, names::MAX_RESOURCE_NAME)
                    ),
                );
                None
            }
        },
    };
    let (family, revision) = match json.task_definition {
        None => {
            report.error(
                &loc,
                ".taskDefinition",
                "taskDefinition is missing; knit needs to know what the service runs",
                "add \"taskDefinition\": \"FAMILY\" naming a task definition family",
            );
            (None, None)
        }
        Some(t) => match family_of(&t) {
            Ok((f, r)) => (Some(f), r),
            Err(problem) => {
                report.error(
                    &loc,
                    ".taskDefinition",
                    format!("taskDefinition {t:?} {problem}"),
                    "use \"family\", \"family:REVISION\" or a task definition ARN",
                );
                (None, None)
            }
        },
    };
    let mut namespace = None;
    let mut entries = Vec::new();
    let mut access_log = None;
    let mut enabled = true;
    if let Some(sc) = json.service_connect_configuration {
        let at = ".serviceConnectConfiguration";
        if sc.enabled.is_none() {
            report.error(
                &loc,
                &format!("{at}.enabled"),
                "serviceConnectConfiguration.enabled is missing (ECS requires it)",
                "add \"enabled\": true (or false to turn Service Connect off for this service)",
            );
        }
        if let Some(ns) = sc.namespace {
            match names::check_namespace(&ns) {
                Ok(()) => namespace = Some(ns),
                Err(problem) => report.error(
                    &loc,
                    &format!("{at}.namespace"),
                    format!("namespace {ns:?} {problem}"),
                    "use the namespace's name, e.g. \"service-connect\", or leave it out \
                        for the default namespace",
                ),
            }
        }
        if sc.enabled == Some(false) {
            // Not in Service Connect: what would configure it changes nothing.
            enabled = false;
            if sc.services.as_ref().is_some_and(|s| !s.is_empty()) {
                report.not_used(&loc, &format!("{at}.services"));
            }
            if sc.access_log_configuration.is_some() {
                report.not_used(&loc, &format!("{at}.accessLogConfiguration"));
            }
        } else {
            if let Some(al) = sc.access_log_configuration {
                access_log =
                    access_log_spec(al, &loc, &format!("{at}.accessLogConfiguration"), report);
            }
            for (i, entry) in sc.services.unwrap_or_default().into_iter().enumerate() {
                let at = format!("{at}.services[{i}]");
                entries.extend(sc_entry(entry, &loc, at, report));
            }
        }
    }
    Some(LocalService {
        loc,
        name: name?,
        family,
        revision,
        namespace,
        entries,
        access_log,
        enabled,
    })
}

/// `accessLogConfiguration`: `format` TEXT or JSON (required),
/// `includeQueryParameters` DISABLED (default) or ENABLED.
fn access_log_spec(
    json: crate::ecs::AccessLogJson,
    loc: &Loc,
    at: &str,
    report: &mut Report,
) -> Option<crate::model::AccessLogSpec> {
    use crate::model::{AccessLogFormat, AccessLogSpec};
    let format = match json.format.as_deref() {
        Some("TEXT") => Some(AccessLogFormat::Text),
        Some("JSON") => Some(AccessLogFormat::Json),
        other => {
            report.error(
                loc,
                &format!("{at}.format"),
                match other {
                    None => "format is missing".to_string(),
                    Some(f) => format!("format {f:?} is not TEXT or JSON"),
                },
                "set \"format\": \"TEXT\" or \"JSON\"",
            );
            None
        }
    };
    let include_query = match json.include_query_parameters.as_deref() {
        None | Some("DISABLED") => Some(false),
        Some("ENABLED") => Some(true),
        Some(v) => {
            report.error(
                loc,
                &format!("{at}.includeQueryParameters"),
                format!("includeQueryParameters {v:?} is not ENABLED or DISABLED"),
                "set it to \"ENABLED\" or \"DISABLED\" (the default), or leave it out",
            );
            None
        }
    };
    Some(AccessLogSpec {
        format: format?,
        include_query: include_query?,
    })
}

/// The family and revision in `family`, `family:3` or
/// `arn:...:task-definition/family:3`.
fn family_of(value: &str) -> Result<(String, Option<u32>), String> {
    let rest = if value.starts_with("arn:") {
        value
            .split_once(":task-definition/")
            .map(|(_, r)| r)
            .ok_or(
                "is an ARN but not of a task definition (arn:...:task-definition/FAMILY:REVISION)",
            )?
    } else {
        value
    };
    let (family, revision) = match rest.split_once(':') {
        Some((family, revision)) => match revision.parse::<u32>() {
            Ok(r) if r > 0 => (family, Some(r)),
            _ => {
                return Err(format!(
                    "has revision {revision:?}; a revision is a number from 1"
                ));
            }
        },
        None => (rest, None),
    };
    names::check_resource_name(family).map_err(|p| format!("has family {family:?}, which {p}"))?;
    Ok((family.to_owned(), revision))
}

fn sc_entry(
    entry: ServiceConnectServiceJson,
    loc: &Loc,
    at: String,
    report: &mut Report,
) -> Option<LocalEntry> {
    let discovery_name = entry
        .discovery_name
        .and_then(|d| match names::check_port_name(&d) {
            Ok(()) => Some(d),
            Err(problem) => {
                report.error(
                    loc,
                    &format!("{at}.discoveryName"),
                    format!("discoveryName {d:?} {problem}"),
                    format!(
                        "rename it, e.g. {:?}, or leave it out to use the portName",
                        names::suggest(&d, names::MAX_PORT_NAME)
                    ),
                );
                None
            }
        });
    let aliases = entry.client_aliases.unwrap_or_default();
    let alias = if aliases.len() > 1 {
        report.error(
            loc,
            &format!("{at}.clientAliases"),
            format!(
                "clientAliases has {} entries; ECS allows at most 1",
                aliases.len()
            ),
            "keep one alias (add another services[] entry with its own \
                discoveryName for a second name)",
        );
        Err(())
    } else {
        aliases
            .into_iter()
            .next()
            .map(|a| client_alias(a, loc, &format!("{at}.clientAliases[0]"), report))
            .transpose()
    };
    let ingress_port_override = entry.ingress_port_override.and_then(|v| {
        ranged::<u16>(
            v,
            0..=65535,
            "port",
            PORT_FIX,
            loc,
            &format!("{at}.ingressPortOverride"),
            report,
        )
        .filter(|&p| p != 0)
    });
    let (mut idle_timeout_s, mut per_request_timeout_s) = (None, None);
    if let Some(t) = entry.timeout {
        let fix = "use 0 (no timeout) to 2147483647 seconds";
        let max = i128::from(i32::MAX);
        idle_timeout_s = t.idle_timeout_seconds.and_then(|v| {
            ranged(
                v,
                0..=max,
                "idleTimeoutSeconds",
                fix,
                loc,
                &format!("{at}.timeout.idleTimeoutSeconds"),
                report,
            )
        });
        per_request_timeout_s = t.per_request_timeout_seconds.and_then(|v| {
            ranged(
                v,
                0..=max,
                "perRequestTimeoutSeconds",
                fix,
                loc,
                &format!("{at}.timeout.perRequestTimeoutSeconds"),
                report,
            )
        });
    }
    let outlier = entry.outlier_detection.map(|o| {
        let mut field = |v: Option<crate::ecs::Int>,
                         name: &str,
                         range: std::ops::RangeInclusive<i128>,
                         fix: &str| {
            v.and_then(|v| {
                ranged::<u32>(
                    v,
                    range,
                    name,
                    fix,
                    loc,
                    &format!("{at}.outlierDetection.{name}"),
                    report,
                )
            })
        };
        let spec = crate::model::OutlierSpec {
            consecutive_failures: field(
                o.consecutive_failures,
                "consecutiveFailures",
                1..=1000,
                "use 1 to 1000",
            ),
            base_ejection_s: field(
                o.base_ejection_seconds,
                "baseEjectionSeconds",
                1..=86400,
                "use 1 to 86400 seconds",
            ),
            max_ejection_s: field(
                o.max_ejection_seconds,
                "maxEjectionSeconds",
                1..=86400,
                "use 1 to 86400 seconds",
            ),
            max_ejection_percent: field(
                o.max_ejection_percent,
                "maxEjectionPercent",
                0..=100,
                "use 0 to 100",
            ),
        };
        if let (Some(b), Some(m)) = (spec.base_ejection_s, spec.max_ejection_s)
            && m < b
        {
            report.error(
                loc,
                &format!("{at}.outlierDetection.maxEjectionSeconds"),
                format!("maxEjectionSeconds {m} is below baseEjectionSeconds {b}"),
                "make maxEjectionSeconds at least baseEjectionSeconds",
            );
        }
        spec
    });
    let limits = entry
        .limits
        .map(|l| limits_spec(l, loc, &format!("{at}.limits"), report));
    let tls = match entry.tls {
        None | Some(serde_json::Value::Null) => false,
        Some(t) => tls_block(&t, loc, &format!("{at}.tls"), report),
    };
    let allowed_clients = match entry.allowed_clients {
        None => None,
        Some(list) => {
            let mut ok = Vec::new();
            for (i, name) in list.into_iter().enumerate() {
                match names::check_resource_name(&name) {
                    Ok(()) => ok.push(name),
                    Err(problem) => report.error(
                        loc,
                        &format!("{at}.allowedClients[{i}]"),
                        format!("{name:?} {problem}"),
                        "name a service (its serviceName) of this namespace",
                    ),
                }
            }
            ok.sort();
            ok.dedup();
            if !tls {
                report.error(
                    loc,
                    &format!("{at}.allowedClients"),
                    "allowedClients without tls: callers on other hosts could not be told apart \
                     (they are identified by their certificates)",
                    "add ECS's tls block to this services[] entry, or remove allowedClients",
                );
            }
            Some(ok)
        }
    };
    let allowed_clients_audit = match entry.allowed_clients_mode.as_deref() {
        None | Some("ENFORCE") => false,
        Some("AUDIT") => true,
        Some(other) => {
            report.error(
                loc,
                &format!("{at}.allowedClientsMode"),
                format!("{other:?} is not a mode"),
                "use \"ENFORCE\" (refuse other callers; the default) or \"AUDIT\" (count them, refuse nothing)",
            );
            false
        }
    };
    if allowed_clients_audit && allowed_clients.is_none() {
        report.not_used(loc, &format!("{at}.allowedClientsMode"));
    }
    let Some(port_name) = entry.port_name else {
        report.error(
            loc,
            &at,
            "portName is missing",
            "add \"portName\" naming one of the task definition's portMappings[].name",
        );
        return None;
    };
    Some(LocalEntry {
        at,
        port_name,
        discovery_name,
        alias,
        ingress_port_override,
        idle_timeout_s,
        per_request_timeout_s,
        outlier,
        limits,
        tls,
        allowed_clients,
        allowed_clients_audit,
    })
}

/// ECS's `tls` block: `{"issuerCertificateAuthority": {"awsPcaAuthorityArn":
/// ARN}, "kmsKey": ..., "roleArn": ...}`. Here it turns on mutual TLS for
/// the entry between hosts, with certificates from `knit signer` (the CA
/// the operator gives it stands for the AWS Private CA the ARN names):
/// `kmsKey` and `roleArn` change nothing and are reported as not used.
/// True when the block is well formed.
fn tls_block(t: &serde_json::Value, loc: &Loc, at: &str, report: &mut Report) -> bool {
    const FIX: &str = "use \"tls\": {\"issuerCertificateAuthority\": {\"awsPcaAuthorityArn\":         \"<any ARN: knit's signer is the CA>\"}} (kmsKey and roleArn are optional and not used)";
    let Some(obj) = t.as_object() else {
        report.error(loc, at, "tls is not an object", FIX);
        return false;
    };
    let mut ok = true;
    match obj.get("issuerCertificateAuthority") {
        Some(serde_json::Value::Object(ca)) => {
            match ca.get("awsPcaAuthorityArn") {
                Some(serde_json::Value::String(arn)) if !arn.is_empty() => {}
                _ => {
                    report.error(
                        loc,
                        &format!("{at}.issuerCertificateAuthority.awsPcaAuthorityArn"),
                        "awsPcaAuthorityArn is missing or not a non-empty string",
                        FIX,
                    );
                    ok = false;
                }
            }
            for k in ca.keys().filter(|k| *k != "awsPcaAuthorityArn") {
                report.not_used(loc, &format!("{at}.issuerCertificateAuthority.{k}"));
            }
        }
        _ => {
            report.error(
                loc,
                &format!("{at}.issuerCertificateAuthority"),
                "issuerCertificateAuthority is missing or not an object",
                FIX,
            );
            ok = false;
        }
    }
    for k in obj.keys().filter(|k| *k != "issuerCertificateAuthority") {
        match obj.get(k) {
            Some(serde_json::Value::String(_)) if k == "kmsKey" || k == "roleArn" => {
                report.not_used(loc, &format!("{at}.{k}"));
            }
            _ if k == "kmsKey" || k == "roleArn" => {
                report.error(
                    loc,
                    &format!("{at}.{k}"),
                    format!("{k} is not a string"),
                    FIX,
                );
                ok = false;
            }
            _ => {
                report.error(
                    loc,
                    &format!("{at}.{k}"),
                    format!("tls has no field {k:?}"),
                    FIX,
                );
                ok = false;
            }
        }
    }
    ok
}

/// `limits` (knit's extension): every key optional, each in its range.
fn limits_spec(
    json: crate::ecs::LimitsJson,
    loc: &Loc,
    at: &str,
    report: &mut Report,
) -> crate::model::LimitsSpec {
    use crate::model::LimitsSpec as L;
    fn field<T: TryFrom<i128>>(
        v: Option<crate::ecs::Int>,
        name: &str,
        range: std::ops::RangeInclusive<i128>,
        fix: &str,
        (loc, at, report): (&Loc, &str, &mut Report),
    ) -> Option<T> {
        v.and_then(|v| ranged(v, range, name, fix, loc, &format!("{at}.{name}"), report))
    }
    let count = i128::from(L::MAX_COUNT);
    L {
        max_connections: field(
            json.max_connections,
            "maxConnections",
            1..=count,
            "use 1 to 100000 (requests in flight at once; default 1024), or leave it out",
            (loc, at, report),
        ),
        max_pending_requests: field(
            json.max_pending_requests,
            "maxPendingRequests",
            0..=count,
            "use 0 (never wait) to 100000 (default 1024), or leave it out",
            (loc, at, report),
        ),
        max_request_bytes: field(
            json.max_request_bytes,
            "maxRequestBytes",
            0..=i128::from(L::MAX_REQUEST_BYTES),
            "use 0 to 9007199254740991 bytes, or leave it out for no limit",
            (loc, at, report),
        ),
        max_header_bytes: field(
            json.max_header_bytes,
            "maxHeaderBytes",
            i128::from(L::MIN_MAX_HEADER_BYTES)..=i128::from(L::DEFAULT_MAX_HEADER_BYTES),
            "use 1024 to 65536 bytes (65536, the default, is the most the proxy reads)",
            (loc, at, report),
        ),
    }
}

fn client_alias(
    alias: ClientAliasJson,
    loc: &Loc,
    at: &str,
    report: &mut Report,
) -> Result<Alias, ()> {
    let port = match alias.port {
        None => {
            report.error(
                loc,
                &format!("{at}.port"),
                "clientAliases[0].port is missing",
                "add \"port\": the port clients connect to, e.g. 80",
            );
            None
        }
        Some(v) => ranged(
            v,
            1..=65535,
            "port",
            PORT_FIX,
            loc,
            &format!("{at}.port"),
            report,
        ),
    };
    let dns_name = match alias.dns_name {
        // ECS reads an empty dnsName as none given: DISCOVERYNAME.NAMESPACE.
        None => Ok(None),
        Some(d) if d.is_empty() => Ok(None),
        Some(d) => names::check_dns_name(&d)
            .map(|()| Some(d.clone()))
            .map_err(|problem| {
                report.error(
                    loc,
                    &format!("{at}.dnsName"),
                    format!("dnsName {d:?} {problem}"),
                    format!(
                        "use e.g. {:?}, or leave dnsName out for DISCOVERYNAME.NAMESPACE",
                        d.to_ascii_lowercase()
                            .replace(
                                |c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)),
                                "-"
                            )
                            .trim_start_matches('-')
                    ),
                );
            }),
    };
    let test_traffic = match alias.test_traffic_rules {
        None => None,
        Some(rules) => test_traffic(rules, loc, &format!("{at}.testTrafficRules"), report),
    };
    Ok(Alias {
        port: port.ok_or(())?,
        dns_name: dns_name?,
        test_traffic,
    })
}

/// Checks a cluster; returns its `serviceConnectDefaults.namespace`, if valid.
pub(crate) fn cluster(json: ClusterJson, loc: &Loc, report: &mut Report) -> Option<String> {
    if let Some(n) = json.cluster_name
        && let Err(problem) = names::check_resource_name(&n)
    {
        report.error(
            loc,
            ".clusterName",
            format!("clusterName {n:?} {problem}"),
            format!(
                "rename it, e.g. {:?}",
                names::suggest(&n, names::MAX_RESOURCE_NAME)
            ),
        );
    }
    let defaults = json.service_connect_defaults?;
    let Some(ns) = defaults.namespace else {
        report.error(
            loc,
            ".serviceConnectDefaults.namespace",
            "serviceConnectDefaults.namespace is missing",
            "add \"namespace\": \"NAME\" (it is created if new)",
        );
        return None;
    };
    check_namespace_at(ns, loc, ".serviceConnectDefaults.namespace", report)
}

/// Checks a namespace object; returns its name, if valid.
pub(crate) fn namespace(json: NamespaceJson, loc: &Loc, report: &mut Report) -> Option<String> {
    let Some(ns) = json.name else {
        report.error(
            loc,
            ".Name",
            "Name is null",
            "set \"Name\" to the namespace's name, e.g. \"service-connect\"",
        );
        return None;
    };
    check_namespace_at(ns, loc, ".Name", report)
}

fn check_namespace_at(ns: String, loc: &Loc, at: &str, report: &mut Report) -> Option<String> {
    match names::check_namespace(&ns) {
        Ok(()) => Some(ns),
        Err(problem) => {
            report.error(
                loc,
                at,
                format!("namespace {ns:?} {problem}"),
                "use a name such as \"service-connect\"",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;

/// `testTrafficRules`: `{"header": {"name": N, "value": {"exact": V}}}`.
fn test_traffic(
    rules: crate::ecs::TestTrafficRulesJson,
    loc: &Loc,
    at: &str,
    report: &mut Report,
) -> Option<crate::model::TestTrafficRule> {
    let example = "use {\"header\": {\"name\": \"x-canary\", \"value\": {\"exact\": \"1\"}}}";
    let Some(header) = rules.header else {
        report.error(
            loc,
            &format!("{at}.header"),
            "testTrafficRules has no header rule (the only kind ECS has)",
            example,
        );
        return None;
    };
    let name = match header.name {
        Some(n)
            if !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) =>
        {
            Some(n.to_ascii_lowercase())
        }
        Some(n) => {
            report.error(
                loc,
                &format!("{at}.header.name"),
                format!("header name {n:?} is not an HTTP header name"),
                "use letters, digits and - (e.g. \"x-canary\")",
            );
            None
        }
        None => {
            report.error(
                loc,
                &format!("{at}.header.name"),
                "header.name is missing",
                example,
            );
            None
        }
    };
    let value = match header.value.and_then(|v| v.exact) {
        Some(v) if v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) => Some(v),
        Some(v) => {
            report.error(
                loc,
                &format!("{at}.header.value.exact"),
                format!("header value {v:?} has characters an HTTP header cannot carry"),
                "use visible ASCII characters and spaces",
            );
            None
        }
        None => {
            report.error(
                loc,
                &format!("{at}.header.value.exact"),
                "header.value.exact is missing (the only match ECS has)",
                example,
            );
            None
        }
    };
    Some(crate::model::TestTrafficRule {
        name: name?,
        value: value?,
    })
}
