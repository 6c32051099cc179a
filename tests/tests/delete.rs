//! `knit delete`: a service leaves Service Connect at once, its tasks
//! drain (nothing in flight is cut) and stop on every host, then it is gone
//! and its VIP comes back for the next service; revisions and namespaces go
//! by ECS's rules.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use knit_tests::{
    Knit, client_service, fleet::Fleet, http_service, http_task_definition, testbin, wait_for,
};
use serde_json::Value;

fn tb() -> String {
    testbin().display().to_string()
}

/// Start a web task whose app writes what it had in flight at SIGTERM.
fn run_web(k: &mut Knit, id: &str) -> Result<std::path::PathBuf> {
    let file = k.dir.path().join(format!("{id}-term.json"));
    let f = file.display().to_string();
    let tb = tb();
    k.run(
        "web",
        &[
            &tb,
            "http",
            "--id",
            id,
            "--port-env",
            "KNIT_PORT_WEB",
            "--on-term",
            &f,
        ],
    )?;
    Ok(file)
}

/// Steady 300-ms requests to web from a client task (new connection each).
fn load(k: &Knit) -> Result<std::process::Child> {
    let tb = tb();
    let hosts = k.hosts.display().to_string();
    k.spawn_task(
        "client",
        &[
            &tb,
            "http-client",
            "--url",
            "http://web:8080/slow/300",
            "--hosts",
            &hosts,
            "--concurrency",
            "4",
            "--duration-ms",
            "5000",
            "--reconnect",
        ],
        Stdio::piped(),
    )
}

/// Wait until the proxy on `k` has taken `n` requests to web (counted as
/// they start: with 4 in flight, n - 4 have ended; a fixed
/// sleep is too short where processes start slowly, as in the VM).
fn served(k: &Knit, n: u32) -> Result<()> {
    wait_for(
        &format!("{n} requests to web taken"),
        Duration::from_secs(20),
        || {
            let answered = k
                .metric_sum("knit_request_count_total", "discovery_name=\"web\"")
                .ok()?;
            (answered >= f64::from(n)).then_some(())
        },
    )
}

fn row<'a>(services: &'a Value, name: &str) -> Option<&'a Value> {
    services.as_array()?.iter().find(|s| s["service"] == name)
}

/// The app at its SIGTERM had nothing in flight, and had served something.
fn drained(term_file: &std::path::Path) -> Result<()> {
    let term: Value = serde_json::from_str(
        &std::fs::read_to_string(term_file)
            .with_context(|| format!("{}: the app never got SIGTERM", term_file.display()))?,
    )?;
    ensure!(
        term["inflight"] == 0,
        "requests in flight at SIGTERM: {term}"
    );
    ensure!(
        term["requests"].as_u64().is_some_and(|n| n > 0),
        "the task served nothing before the delete: {term}"
    );
    Ok(())
}

/// Every request that ended before `deleted_ms` succeeded, and none of the
/// later ones hung or was cut mid-answer: those after the delete either
/// succeeded (in flight at the delete) or failed to connect at once.
fn no_request_cut(r: &Value, deleted_ms: u64) -> Result<()> {
    let timeline = r["timeline"].as_array().context("timeline")?;
    let before: Vec<&Value> = timeline
        .iter()
        .filter(|e| e[0].as_u64().is_some_and(|t| t < deleted_ms))
        .collect();
    ensure!(
        before.len() > 8,
        "too little traffic before the delete: {r}"
    );
    ensure!(
        before.iter().all(|e| e[1] == 200),
        "a request failed before the delete: {r}"
    );
    // After: 200s (in flight at the delete, finished by the draining
    // task), then refusals; never a 5xx from a task cut mid-request.
    let after_5xx = timeline
        .iter()
        .filter(|e| e[0].as_u64().is_some_and(|t| t >= deleted_ms))
        .filter(|e| e[1].as_u64().is_some_and(|s| s >= 500))
        .count();
    ensure!(after_5xx == 0, "answers of 5xx after the delete: {r}");
    Ok(())
}

#[test]
fn deleting_a_service_drains_it_then_frees_its_vip() -> Result<()> {
    let mut k = Knit::start("delete", "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &http_task_definition("web")),
        ("web.json", &http_service("web", "web", 8080)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    let terms = [run_web(&mut k, "w0")?, run_web(&mut k, "w1")?];
    k.wait_healthy("web", 2)?;
    let vip = row(&k.json(&["services"])?, "web").context("web")?["vip"].clone();
    let load = load(&k)?;
    served(&k, 16)?;
    let deleted_ms = knit_tests::now_ms();
    let said = k.ok(&["delete", "service", "web"])?;
    ensure!(said.contains("deleting"), "{said}");
    // Out of Service Connect at once: the name is gone from the hosts file.
    let hosts = std::fs::read_to_string(&k.hosts)?;
    ensure!(
        !hosts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("web")),
        "web still resolves:\n{hosts}"
    );
    // No new task of it while it is being deleted.
    let out = k
        .cmd()
        .args(["run", "--service", "web", "--", "true"])
        .output()?;
    ensure!(out.status.code() == Some(2), "{out:?}");
    // Its tasks drain and stop; then it is gone.
    wait_for("web gone", Duration::from_secs(40), || {
        row(&k.json(&["services"]).ok()?, "web")
            .is_none()
            .then_some(())
    })?;
    for t in &terms {
        drained(t)?;
    }
    let r = knit_tests::json_output(load)?;
    no_request_cut(&r, deleted_ms)?;

    // A service created afterwards reuses its VIP (and reaches only itself).
    k.apply(&[
        ("api-td.json", &http_task_definition("api")),
        ("api.json", &http_service("api", "api", 8080)),
    ])?;
    let api = row(&k.json(&["services"])?, "api").context("api")?.clone();
    ensure!(
        api["vip"] == vip,
        "api got {} where web had {vip}",
        api["vip"]
    );
    let tb = tb();
    k.run(
        "api",
        &[&tb, "http", "--id", "a0", "--port-env", "KNIT_PORT_WEB"],
    )?;
    k.wait_healthy("api", 1)?;
    let hosts_file = k.hosts.display().to_string();
    let r = k.run_json(
        "client",
        &[
            &tb,
            "http-client",
            "--url",
            "http://api:8080/",
            "--hosts",
            &hosts_file,
            "--count",
            "10",
        ],
    )?;
    ensure!(r["by_backend"] == serde_json::json!({"a0": 10}), "{r}");
    Ok(())
}

#[test]
fn namespaces_and_revisions_go_by_ecs_rules() -> Result<()> {
    let k = Knit::start("delete-rules", "")?;
    let svc = r#"{"serviceName": "web", "taskDefinition": "web:1", "serviceConnectConfiguration":
        {"enabled": true, "namespace": "shop", "services": [{"portName": "web",
         "clientAliases": [{"dnsName": "web", "port": 8080}]}]}}"#;
    k.apply(&[
        ("ns.json", r#"{"Name": "shop"}"#),
        ("empty.json", r#"{"Name": "spare"}"#),
        ("web-td.json", &http_task_definition("web")),
        ("web.json", svc),
    ])?;
    // A second revision.
    let td2 =
        http_task_definition("web").replace("\"unused\"", "\"unused\", \"command\": [\"two\"]");
    let out = k.apply(&[("web-td.json", &td2)])?;
    ensure!(out.contains("web:2"), "{out}");
    let refused = |args: &[&str], want: &str| -> Result<()> {
        let out = k.cmd().args(args).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2) && err.contains(want),
            "knit {args:?}: {:?} {err}",
            out.status
        );
        Ok(())
    };
    refused(&["delete", "namespace", "shop"], "has services: web")?;
    refused(&["delete", "task-definition", "web:1"], "web")?;
    refused(&["delete", "task-definition", "web:9"], "1, 2")?;
    refused(&["delete", "service", "nope"], "no service")?;
    ensure!(k.ok(&["delete", "namespace", "spare"])?.contains("deleted"));
    ensure!(
        k.ok(&["delete", "task-definition", "web:2"])?
            .contains("deleted")
    );
    // web:2 is gone: pinning it is refused.
    let file = k.file("web2.json", &svc.replace("web:1", "web:2"))?;
    refused(&["apply", "-f", &file.display().to_string()], "web:2")?;
    // The service goes (no task), then its namespace can.
    k.ok(&["delete", "service", "web"])?;
    wait_for("web gone", Duration::from_secs(20), || {
        row(&k.json(&["services"]).ok()?, "web")
            .is_none()
            .then_some(())
    })?;
    ensure!(k.ok(&["delete", "namespace", "shop"])?.contains("deleted"));
    Ok(())
}

/// Through etcd: the service is deleted on host 2 while host 1 runs its
/// tasks and a client on host 1 sends steady traffic; host 1 drains them.
#[test]
fn fleet_a_service_deleted_on_another_host_drains_everywhere() -> Result<()> {
    let mut f = Fleet::start("del", 2, "")?;
    let (ctd, csvc) = client_service("client");
    f.hosts[0].apply(&[
        ("web-td.json", &http_task_definition("web")),
        ("web.json", &http_service("web", "web", 8080)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    let terms = [
        run_web(&mut f.hosts[0], "w0")?,
        run_web(&mut f.hosts[0], "w1")?,
    ];
    f.hosts[0].wait_healthy("web", 2)?;
    let load = load(&f.hosts[0])?;
    served(&f.hosts[0], 16)?;
    let deleted_ms = knit_tests::now_ms();
    let t0 = Instant::now();
    f.hosts[1].ok(&["delete", "service", "web"])?;
    for h in &f.hosts {
        wait_for("web gone on every host", Duration::from_secs(40), || {
            row(&h.json(&["services"]).ok()?, "web")
                .is_none()
                .then_some(())
        })?;
    }
    eprintln!(
        "deleted on host 2, gone everywhere after {:?}",
        t0.elapsed()
    );
    for t in &terms {
        drained(t)?;
    }
    let r = knit_tests::json_output(load)?;
    no_request_cut(&r, deleted_ms)?;
    Ok(())
}
