//! Task definition rules: family, port mappings (name, containerPort,
//! protocol, appProtocol), the command and the health check.

use std::collections::BTreeSet;

use super::{LocalTaskDefinition, ranged};
use crate::ecs::{ContainerJson, HealthCheckJson, Int, PortMappingJson, TaskDefinitionJson};
use crate::model::{AppProtocol, HealthCheck, PortMapping, TaskDefinition};
use crate::names;
use crate::parse::{Loc, Report};

/// Checks a task definition; `None` when it has no usable family.
pub(crate) fn task_definition(
    json: TaskDefinitionJson,
    loc: Loc,
    report: &mut Report,
) -> Option<LocalTaskDefinition> {
    let family = match json.family {
        None => {
            report.error(
                &loc,
                ".family",
                "family is null",
                "set \"family\" to the task definition's name, e.g. \"web\"",
            );
            None
        }
        Some(f) => match names::check_resource_name(&f) {
            Ok(()) => Some(f),
            Err(problem) => {
                report.error(
                    &loc,
                    ".family",
                    format!("family {f:?} {problem}"),
                    format!(
                        "rename it, e.g. {:?}",
                        names::suggest(&f, names::MAX_RESOURCE_NAME)
                    ),
                );
                None
            }
        },
    };
    let containers = json.container_definitions.unwrap_or_default();
    if containers.is_empty() {
        report.error(
            &loc,
            ".containerDefinitions",
            "containerDefinitions is empty or null; a task definition needs at least one container",
            "add a container, e.g. {\"name\": \"app\", \"image\": \"app\", \
                    \"portMappings\": [{\"name\": \"http\", \"containerPort\": 8080, \
                    \"appProtocol\": \"http\"}]}",
        );
    }
    let mut td = TaskDefinition {
        family: family.clone().unwrap_or_default(),
        revision: 0,
        port_mappings: Vec::new(),
        command: Vec::new(),
        health_check: None,
        stop_timeout_s: None,
        inactive: false,
    };
    let mut udp = BTreeSet::new();
    let mut seen: Vec<(String, String)> = Vec::new(); // (name, path of first use)
    let mut health_seen = false;
    for (ci, container) in containers.into_iter().enumerate() {
        let at = format!(".containerDefinitions[{ci}]");
        let ContainerJson {
            port_mappings,
            entry_point,
            command,
            health_check,
            stop_timeout,
        } = container;
        if let Some(v) = stop_timeout {
            let t: Option<u32> = ranged(
                v,
                2..=3600,
                "stopTimeout",
                "give the seconds between SIGTERM and SIGKILL, 2 to 3600 (ECS's default \
                 is 30; leave stopTimeout out for it)",
                &loc,
                &format!("{at}.stopTimeout"),
                report,
            );
            td.stop_timeout_s = td.stop_timeout_s.max(t);
        }
        for (pi, pm) in port_mappings.unwrap_or_default().into_iter().enumerate() {
            let at = format!("{at}.portMappings[{pi}]");
            port_mapping(pm, &loc, &at, &mut seen, &mut td, &mut udp, report);
        }
        let entry_point = entry_point.unwrap_or_default();
        let command = command.unwrap_or_default();
        if td.command.is_empty() && (!entry_point.is_empty() || !command.is_empty()) {
            td.command = entry_point.into_iter().chain(command).collect();
        }
        if let (false, Some(hc)) = (health_seen, health_check) {
            health_seen = true;
            td.health_check = health(hc, &loc, &format!("{at}.healthCheck"), report);
        }
    }
    family.map(|_| LocalTaskDefinition { loc, td, udp })
}

fn port_mapping(
    pm: PortMappingJson,
    loc: &Loc,
    at: &str,
    seen: &mut Vec<(String, String)>,
    td: &mut TaskDefinition,
    udp: &mut BTreeSet<String>,
    report: &mut Report,
) {
    let container_port = match pm.container_port {
        None => Some(0),
        Some(v) => ranged(
            v,
            0..=65535,
            "port",
            "use a port between 1 and 65535, or 0 (or no containerPort) to let \
                    knit pick a free port",
            loc,
            &format!("{at}.containerPort"),
            report,
        ),
    };
    let is_udp = match pm.protocol.as_deref() {
        None | Some("tcp") => false,
        Some("udp") => true,
        Some(other) => {
            report.error(
                loc,
                &format!("{at}.protocol"),
                format!("protocol {other:?} is not \"tcp\" or \"udp\""),
                "use \"tcp\" (Service Connect carries TCP only), or leave protocol out",
            );
            false
        }
    };
    let app_protocol = match pm.app_protocol.as_deref() {
        None => Some(AppProtocol::Tcp),
        Some(a) => AppProtocol::from_ecs(a).or_else(|| {
            let hint = AppProtocol::from_ecs(&a.to_ascii_lowercase())
                .map(|p| format!("use {:?} (lowercase)", p.as_str()))
                .unwrap_or_else(|| "use \"http\", \"http2\" or \"grpc\"".to_owned());
            report.error(
                loc,
                &format!("{at}.appProtocol"),
                format!("appProtocol {a:?} is not one of \"http\", \"http2\", \"grpc\""),
                format!("{hint}, or leave appProtocol out for plain TCP"),
            );
            None
        }),
    };
    let Some(name) = pm.name else { return };
    let name_at = format!("{at}.name");
    if let Err(problem) = names::check_port_name(&name) {
        report.error(
            loc,
            &name_at,
            format!("port mapping name {name:?} {problem}"),
            format!(
                "rename it, e.g. {:?} (and every portName that refers to it)",
                names::suggest(&name, names::MAX_PORT_NAME)
            ),
        );
        return;
    }
    if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
        report.error(
            loc,
            &name_at,
            format!(
                "port mapping name {name:?} is used twice in this task definition (first at {})",
                loc.at(first)
            ),
            "give each port mapping its own name",
        );
        return;
    }
    seen.push((name.clone(), name_at));
    if is_udp {
        udp.insert(name);
    } else if let (Some(container_port), Some(app_protocol)) = (container_port, app_protocol) {
        td.port_mappings.push(PortMapping {
            name,
            container_port,
            app_protocol,
        });
    }
}

fn health(hc: HealthCheckJson, loc: &Loc, at: &str, report: &mut Report) -> Option<HealthCheck> {
    let command = hc.command.unwrap_or_default();
    let example = "e.g. [\"CMD-SHELL\", \"curl -f http://localhost/ || exit 1\"]";
    match command.first().map(String::as_str) {
        Some("NONE") => return None,
        Some("CMD" | "CMD-SHELL") if command.len() >= 2 => {}
        Some("CMD" | "CMD-SHELL") => {
            report.error(
                loc,
                &format!("{at}.command"),
                "healthCheck.command has no command after its first element",
                format!("add the command to run, {example}"),
            );
        }
        None => {
            report.error(
                loc,
                &format!("{at}.command"),
                "healthCheck.command is missing or empty",
                format!("set it, {example}"),
            );
        }
        Some(first) => {
            report.error(
                loc,
                &format!("{at}.command[0]"),
                format!("healthCheck.command starts with {first:?}, not \"CMD\" or \"CMD-SHELL\""),
                format!("start it with \"CMD\" (exec) or \"CMD-SHELL\" (shell), {example}"),
            );
        }
    }
    let mut field =
        |v: Option<Int>, range: std::ops::RangeInclusive<i128>, name: &str, default: u32| {
            let fix = format!(
                "use {} to {} seconds, or leave it out for {default}",
                range.start(),
                range.end()
            );
            let fix = if name == "retries" {
                format!(
                    "use {} to {}, or leave it out for {default}",
                    range.start(),
                    range.end()
                )
            } else {
                fix
            };
            v.map_or(Some(default), |v| {
                ranged(v, range, name, &fix, loc, &format!("{at}.{name}"), report)
            })
        };
    let interval_s = field(
        hc.interval,
        5..=300,
        "interval",
        HealthCheck::DEFAULT_INTERVAL_S,
    );
    let timeout_s = field(
        hc.timeout,
        2..=120,
        "timeout",
        HealthCheck::DEFAULT_TIMEOUT_S,
    );
    let retries = field(hc.retries, 1..=10, "retries", HealthCheck::DEFAULT_RETRIES);
    let start_period_s = field(
        hc.start_period,
        0..=300,
        "startPeriod",
        HealthCheck::DEFAULT_START_PERIOD_S,
    );
    Some(HealthCheck {
        command,
        interval_s: interval_s?,
        timeout_s: timeout_s?,
        retries: retries?,
        start_period_s: start_period_s?,
    })
}

#[cfg(test)]
mod tests;
