//! Helpers for the unit tests: run `plan` on inline files and pick apart
//! the result, plus ECS-shaped fixtures.

use std::collections::BTreeSet;

use crate::{ApplyError, ApplyErrors, ApplyPlan, EndpointSpec, Existing, plan};

/// `plan` on `(name, json)` pairs.
pub(crate) fn run(files: &[(&str, &str)], existing: &Existing) -> Result<ApplyPlan, ApplyErrors> {
    let files: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, j)| ((*n).to_owned(), j.as_bytes().to_vec()))
        .collect();
    plan(&files, existing)
}

/// The plan; panics with the errors when there are any.
pub(crate) fn ok_with(files: &[(&str, &str)], existing: &Existing) -> ApplyPlan {
    match run(files, existing) {
        Ok(p) => p,
        Err(e) => panic!("expected a plan, got errors:\n{e}"),
    }
}

/// The plan against an empty registry.
pub(crate) fn ok(files: &[(&str, &str)]) -> ApplyPlan {
    ok_with(files, &Existing::default())
}

/// The errors; panics when there is a plan.
pub(crate) fn errs_with(files: &[(&str, &str)], existing: &Existing) -> Vec<ApplyError> {
    match run(files, existing) {
        Ok(p) => panic!("expected errors, got a plan: {p:#?}"),
        Err(e) => e.0,
    }
}

/// The errors against an empty registry.
pub(crate) fn errs(files: &[(&str, &str)]) -> Vec<ApplyError> {
    errs_with(files, &Existing::default())
}

/// The single error against an empty registry; panics unless exactly one.
pub(crate) fn one(files: &[(&str, &str)]) -> ApplyError {
    one_with(files, &Existing::default())
}

/// The single error; panics unless exactly one.
pub(crate) fn one_with(files: &[(&str, &str)], existing: &Existing) -> ApplyError {
    let mut e = errs_with(files, existing);
    assert_eq!(e.len(), 1, "expected one error, got: {e:#?}");
    e.remove(0)
}

/// Asserts the error's path, and that message and fix contain the given text.
#[track_caller]
pub(crate) fn check(e: &ApplyError, path: &str, message: &str, fix: &str) {
    assert_eq!(e.path, path, "{e}");
    assert!(
        e.message.contains(message),
        "message lacks {message:?}: {e}"
    );
    assert!(e.fix.contains(fix), "fix lacks {fix:?}: {e}");
}

/// A task definition `family` with one container and the given port mappings
/// (a JSON array).
pub(crate) fn td(family: &str, port_mappings: &str) -> String {
    format!(
        r#"{{"family": "{family}", "containerDefinitions": [
            {{"name": "app", "image": "app:1", "portMappings": {port_mappings}}}]}}"#
    )
}

/// The usual task definition: `web` with port mapping `http` 8080 (http) and
/// `db` 5432 (TCP).
pub(crate) fn web_td() -> String {
    td(
        "web",
        r#"[{"name": "http", "containerPort": 8080, "appProtocol": "http"},
            {"name": "db", "containerPort": 5432}]"#,
    )
}

/// A service `name` of family `web` with the given
/// `serviceConnectConfiguration.services` (a JSON array).
pub(crate) fn svc(name: &str, services: &str) -> String {
    format!(
        r#"{{"serviceName": "{name}", "taskDefinition": "web",
            "serviceConnectConfiguration": {{"enabled": true, "services": {services}}}}}"#
    )
}

/// The first entry of the service in `with_web`.
pub(crate) const E0: &str = "$[1].serviceConnectConfiguration.services[0]";

/// Task definition `web` plus one service `s` with the given services[].
pub(crate) fn with_web(services: &str) -> String {
    format!("[{}, {}]", web_td(), svc("s", services))
}

/// The first endpoint of the first service of the plan.
pub(crate) fn endpoint(files: &[(&str, &str)]) -> EndpointSpec {
    ok(files).services[0].endpoints[0].clone()
}

/// A registry with task definition `web` and service `old` offering `http`
/// as discoveryName `api`, alias `api.default:80`.
pub(crate) fn existing() -> Existing {
    let plan = ok(&[(
        "seed.json",
        &format!(
            "[{}, {}]",
            web_td(),
            svc(
                "old",
                r#"[{"portName": "http", "discoveryName": "api", "clientAliases": [{"port": 80, "dnsName": "api.default"}]}]"#
            )
        ),
    )]);
    let mut ex = Existing {
        namespaces: BTreeSet::from(["prod".to_owned()]),
        ..Existing::default()
    };
    for t in plan.task_definitions {
        ex.task_definitions.insert(t.family.clone(), t);
    }
    for s in plan.services {
        ex.services.insert(s.name.clone(), s);
    }
    ex
}
