//! Task definition revisions: `"taskDefinition": "family:N"` pins
//! revision N (what `knit run --service` starts), the family alone means
//! the newest, and `knit run --task-definition family:N` starts another.
use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, testbin};
use serde_json::Value;

/// Revision `id` of family `web`: an HTTP port `web` and a command that
/// answers with `id` (so a request tells which revision served it).
fn web_td(id: &str) -> String {
    let tb = testbin().display().to_string();
    format!(
        r#"{{"family": "web", "containerDefinitions": [{{"name": "app", "image": "unused",
            "command": ["{tb}", "http", "--id", "{id}", "--port-env", "KNIT_PORT_WEB"],
            "portMappings": [{{"name": "web", "appProtocol": "http"}}]}}]}}"#
    )
}

fn web_service(task_definition: &str) -> String {
    web_service_with(task_definition, "")
}

/// With `rules` (`"testTrafficRules": ...` or nothing) on its alias.
fn web_service_with(task_definition: &str, rules: &str) -> String {
    let rules = if rules.is_empty() {
        String::new()
    } else {
        format!(", {rules}")
    };
    format!(
        r#"{{"serviceName": "web", "taskDefinition": "{task_definition}",
            "serviceConnectConfiguration": {{"enabled": true,
              "services": [{{"portName": "web", "clientAliases": [{{"dnsName": "web", "port": 8080{rules}}}]}}]}}}}"#
    )
}

const CANARY: &str =
    r#""testTrafficRules": {"header": {"name": "x-canary", "value": {"exact": "1"}}}"#;

/// Start a task of `web` with `extra` arguments to `knit run` (no command:
/// the revision's own); the revision its endpoint shows.
fn start_web(k: &mut Knit, extra: &[&str]) -> Result<u64> {
    let before: Vec<String> = endpoints(k)?
        .iter()
        .map(|e| e["task"].to_string())
        .collect();
    let mut args = vec!["run", "--service", "web"];
    args.extend_from_slice(extra);
    let child = k
        .cmd()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    k.tasks.push(child);
    let new = knit_tests::wait_for(
        "the new task's endpoint",
        std::time::Duration::from_secs(20),
        || {
            endpoints(k)
                .ok()?
                .into_iter()
                .find(|e| !before.contains(&e["task"].to_string()) && e["state"] == "healthy")
        },
    )?;
    new["revision"].as_u64().context("revision")
}

fn endpoints(k: &Knit) -> Result<Vec<Value>> {
    Ok(k.json(&["endpoints", "web"])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// What `knit services` says web's new tasks run.
fn web_task_definition(k: &Knit) -> Result<String> {
    let services = k.json(&["services"])?;
    services
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == "web"))
        .and_then(|s| s["task_definition"].as_str())
        .map(String::from)
        .with_context(|| format!("no web row: {services}"))
}

/// Which backends answered `n` requests to web:8080 from a client task.
fn served_by(k: &Knit, n: u32) -> Result<Value> {
    served_by_with(k, n, &[])
}

/// As [`served_by`], with `extra` arguments to the HTTP client.
fn served_by_with(k: &Knit, n: u32, extra: &[&str]) -> Result<Value> {
    let tb = testbin().display().to_string();
    let hosts = k.hosts.display().to_string();
    let count = n.to_string();
    let mut args = vec![
        tb.as_str(),
        "http-client",
        "--url",
        "http://web:8080/",
        "--hosts",
        &hosts,
        "--count",
        &count,
    ];
    args.extend_from_slice(extra);
    let r = k.run_json("client", &args)?;
    ensure!(r["ok"] == n, "{r}");
    Ok(r["by_backend"].clone())
}

#[test]
fn a_pinned_revision_is_what_tasks_run_and_a_rollback_pins_the_old_one() -> Result<()> {
    let mut k = Knit::start("revisions", "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &web_td("v1")),
        ("web.json", &web_service("web:1")),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    ensure!(start_web(&mut k, &[])? == 1);
    // Revision 2 is registered; the service still pins 1.
    let out = k.apply(&[("web-td.json", &web_td("v2"))])?;
    ensure!(
        out.contains("web:2"),
        "the apply did not register web:2: {out}"
    );
    ensure!(start_web(&mut k, &[])? == 1, "the pinned revision is 1");
    ensure!(web_task_definition(&k)? == "web:1");
    ensure!(
        served_by(&k, 20)? == serde_json::json!({"v1": 20}),
        "only revision 1 runs"
    );
    // Another revision on request.
    ensure!(start_web(&mut k, &["--task-definition", "web:2"])? == 2);
    // The family alone: the newest.
    k.apply(&[("web.json", &web_service("web"))])?;
    ensure!(start_web(&mut k, &[])? == 2);
    ensure!(web_task_definition(&k)? == "web:2");
    // Roll back: pin 1 again.
    k.apply(&[("web.json", &web_service("web:1"))])?;
    ensure!(start_web(&mut k, &[])? == 1);
    let revs: Vec<u64> = endpoints(&k)?
        .iter()
        .filter_map(|e| e["revision"].as_u64())
        .collect();
    ensure!(revs.iter().filter(|r| **r == 1).count() == 3, "{revs:?}");
    ensure!(revs.iter().filter(|r| **r == 2).count() == 2, "{revs:?}");

    // A revision never registered: refused, with what there is.
    let file = k.file("bad.json", &web_service("web:7"))?;
    let out = k
        .cmd()
        .args(["apply", "-f", &file.display().to_string()])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2), "{:?}: {err}", out.status);
    ensure!(err.contains("web:7") && err.contains("1, 2"), "{err}");
    let out = k
        .cmd()
        .args([
            "run",
            "--service",
            "web",
            "--task-definition",
            "other:1",
            "--",
            "true",
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && err.contains("family"),
        "{err}"
    );
    Ok(())
}

/// ECS blue/green test traffic: with a rule on header `x-canary: 1`,
/// requests with it go only to the revision-2 task, the others only to
/// revision 1 (pinned); after the service is applied at `web:2`, all go
/// to revision 2 and revision 1 gets none. A rule on a TCP alias is
/// refused.
#[test]
fn test_traffic_rules_send_matching_requests_to_the_new_revision() -> Result<()> {
    let mut k = Knit::start("testtraffic", "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &web_td("v1")),
        ("web.json", &web_service_with("web:1", CANARY)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    ensure!(start_web(&mut k, &[])? == 1);
    ensure!(start_web(&mut k, &[])? == 1);
    k.apply(&[("web-td.json", &web_td("v2"))])?;
    ensure!(start_web(&mut k, &["--task-definition", "web:2"])? == 2);
    let canary = ["--header", "x-canary: 1"];
    let plain = served_by(&k, 30)?;
    ensure!(
        plain == serde_json::json!({"v1": 30}),
        "without the header: {plain}"
    );
    let test = served_by_with(&k, 30, &canary)?;
    ensure!(
        test == serde_json::json!({"v2": 30}),
        "with x-canary: 1: {test}"
    );
    let other = served_by_with(&k, 10, &["--header", "x-canary: 2"])?;
    ensure!(
        other == serde_json::json!({"v1": 10}),
        "with x-canary: 2: {other}"
    );
    // The new revision goes to production.
    k.apply(&[("web.json", &web_service_with("web:2", CANARY))])?;
    let plain = served_by(&k, 30)?;
    ensure!(
        plain == serde_json::json!({"v2": 30}),
        "after web:2: {plain}"
    );
    let test = served_by_with(&k, 10, &canary)?;
    ensure!(
        test == serde_json::json!({"v2": 10}),
        "after web:2, canary: {test}"
    );

    // On a TCP alias: refused.
    let tcp_td = r#"{"family": "db", "containerDefinitions": [{"name": "app", "image": "unused",
        "portMappings": [{"name": "db", "containerPort": 6379}]}]}"#;
    let tcp_svc = format!(
        r#"{{"serviceName": "db", "taskDefinition": "db", "serviceConnectConfiguration": {{"enabled": true,
            "services": [{{"portName": "db", "clientAliases": [{{"port": 6379, {CANARY}}}]}}]}}}}"#
    );
    let (a, b) = (k.file("db-td.json", tcp_td)?, k.file("db.json", &tcp_svc)?);
    let out = k
        .cmd()
        .args([
            "apply",
            "-f",
            &a.display().to_string(),
            "-f",
            &b.display().to_string(),
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && err.contains("testTrafficRules") && err.contains("TCP"),
        "{err}"
    );
    Ok(())
}
