//! Health checks from the task definition: no traffic before the first
//! passing check, out of rotation once unhealthy, back when it passes.
use std::time::Duration;

use anyhow::{Context, Result};
use knit_tests::{Knit, client_service, tcp_service, testbin, wait_for};
use serde_json::Value;

fn state_of(k: &Knit, task: &str) -> Option<String> {
    let eps = k.json(&["endpoints", "db"]).ok()?;
    eps.as_array()?
        .iter()
        .find(|e| e["task"] == task)
        .and_then(|e| e["state"].as_str().map(String::from))
}

#[test]
fn health_checks_gate_and_remove_traffic() -> Result<()> {
    let mut k = Knit::start("health", "")?;
    let marks = k.dir.path().join("marks");
    std::fs::create_dir_all(&marks)?;
    let check = format!("test -e {}/ok-$KNIT_TASK_ID", marks.display());
    let td = format!(
        r#"{{"family": "db", "containerDefinitions": [{{"name": "db",
            "portMappings": [{{"name": "tcp"}}],
            "healthCheck": {{"command": ["CMD-SHELL", "{check}"], "interval": 5, "timeout": 2, "retries": 1,
                            "startPeriod": 60}}}}]}}"#
    );
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("td.json", &td),
        ("svc.json", &tcp_service("db", "db", 7100)),
        ("c.json", &ctd),
        ("cs.json", &csvc),
    ])?;
    let tb = testbin().display().to_string();
    for id in ["h1", "h2"] {
        k.run(
            "db",
            &[&tb, "echo", "--id", id, "--port-env", "KNIT_PORT_TCP"],
        )?;
    }
    let tasks: Vec<String> = wait_for("two tasks", Duration::from_secs(10), || {
        let eps = k.json(&["endpoints", "db"]).ok()?;
        let t: Vec<String> = eps
            .as_array()?
            .iter()
            .filter_map(|e| e["task"].as_str().map(String::from))
            .collect();
        (t.len() == 2).then_some(t)
    })?;
    // Listening, but no check has passed (failures in the start period do
    // not count): no traffic at all.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state_of(&k, &tasks[0]).as_deref(), Some("starting"));
    let hosts = k.hosts.display().to_string();
    let r = k.run_json(
        "client",
        &[
            &tb, "client", "--target", "db:7100", "--hosts", &hosts, "--count", "3",
        ],
    )?;
    assert_eq!(r["failed"], 3, "{r}");
    // The first task passes: all traffic goes there.
    std::fs::write(marks.join(format!("ok-{}", tasks[0])), "")?;
    wait_for(
        "the first task to be healthy",
        Duration::from_secs(5),
        || (state_of(&k, &tasks[0])? == "healthy").then_some(()),
    )?;
    let r = k.run_json(
        "client",
        &[
            &tb, "client", "--target", "db:7100", "--hosts", &hosts, "--count", "10",
        ],
    )?;
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["by_backend"].as_object().map(|m| m.len()), Some(1), "{r}");
    std::fs::write(marks.join(format!("ok-{}", tasks[1])), "")?;
    k.wait_healthy("db", 2)?;
    // The first fails its check: out of rotation at its next check.
    std::fs::remove_file(marks.join(format!("ok-{}", tasks[0])))?;
    wait_for(
        "the first task to be unhealthy",
        Duration::from_secs(10),
        || (state_of(&k, &tasks[0])? == "unhealthy").then_some(()),
    )?;
    let r = k.run_json(
        "client",
        &[
            &tb, "client", "--target", "db:7100", "--hosts", &hosts, "--count", "10",
        ],
    )?;
    assert_eq!(r["failed"], 0, "{r}");
    let only: Vec<&String> = r["by_backend"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(only.len(), 1, "{r}");
    // The verdict survives a daemon restart.
    k.kill_daemon()?;
    k.start_daemon()?;
    assert_eq!(state_of(&k, &tasks[0]).as_deref(), Some("unhealthy"));
    assert_eq!(state_of(&k, &tasks[1]).as_deref(), Some("healthy"));
    let v: Value = k.json(&["services"])?;
    let db = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["dns_name"] == "db"))
        .context("db")?;
    assert_eq!(db["healthy"], 1, "{db}");
    Ok(())
}
