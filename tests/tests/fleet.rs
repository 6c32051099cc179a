//! Several hosts sharing namespaces through etcd: each host is a network
//! namespace with a daemon of its own; tasks run on some hosts and are
//! reached from others, through the kernel (TCP) and the proxies (HTTP).
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use knit_tests::{
    Knit, client_service, fleet::Fleet, http_service, http_task_definition, tcp_service,
    tcp_task_definition, testbin, wait_for,
};
use serde_json::Value;

fn tb() -> String {
    testbin().display().to_string()
}

fn http_docs() -> (String, String) {
    (
        http_task_definition("web"),
        http_service("web", "web", 8080),
    )
}

/// Apply web (HTTP), db (TCP) and a client-only service through `k`.
fn apply_all(k: &Knit) -> Result<()> {
    let (wtd, wsvc) = http_docs();
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &wtd),
        ("web-svc.json", &wsvc),
        ("db-td.json", &tcp_task_definition("db")),
        ("db-svc.json", &tcp_service("db", "db", 7100)),
        ("c-td.json", &ctd),
        ("c-svc.json", &csvc),
    ])?;
    Ok(())
}

fn run_web(k: &mut Knit, id: &str) -> Result<()> {
    let tb = tb();
    k.run(
        "web",
        &[&tb, "http", "--id", id, "--port-env", "KNIT_PORT_WEB"],
    )
}

fn run_db(k: &mut Knit, id: &str) -> Result<()> {
    let tb = tb();
    k.run(
        "db",
        &[&tb, "echo", "--id", id, "--port-env", "KNIT_PORT_TCP"],
    )
}

fn http_client(k: &Knit, extra: &[&str]) -> Result<Value> {
    let tb = tb();
    let hosts = k.hosts.display().to_string();
    let mut args = vec![
        tb.as_str(),
        "http-client",
        "--url",
        "http://web:8080/",
        "--hosts",
        &hosts,
    ];
    args.extend_from_slice(extra);
    k.run_json("client", &args)
}

fn backends(r: &Value) -> Vec<String> {
    r["by_backend"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn status(k: &Knit) -> Result<Value> {
    k.json(&["status"])
}

#[test]
fn a_client_reaches_tasks_on_other_hosts_and_survives_a_dead_host() -> Result<()> {
    let mut f = Fleet::start("bal", 3, "")?;
    // Applied on host 1; the other hosts learn it from etcd.
    apply_all(&f.hosts[0])?;
    for (i, id) in [(1, "b"), (2, "c")] {
        wait_for(
            "the services on every host",
            Duration::from_secs(10),
            || (f.hosts[i].json(&["services"]).ok()?.as_array()?.len() >= 3).then_some(()),
        )?;
        run_web(&mut f.hosts[i], id)?;
        run_db(&mut f.hosts[i], id)?;
    }
    // Host 1 runs no task of web or db, yet routes to both hosts'.
    f.hosts[0].wait_healthy("web", 2)?;
    f.hosts[0].wait_healthy("db", 2)?;
    let eps = f.hosts[0].json(&["endpoints", "web"])?;
    let hosts: Vec<&str> = eps
        .as_array()
        .context("endpoints")?
        .iter()
        .filter_map(|e| e["host"].as_str())
        .collect();
    ensure!(hosts.contains(&"h2") && hosts.contains(&"h3"), "{eps}");

    let r = http_client(&f.hosts[0], &["--count", "40"])?;
    ensure!(r["failed"] == 0 && r["ok"] == 40, "{r}");
    let mut seen = backends(&r);
    seen.sort();
    ensure!(seen == ["b", "c"], "HTTP not balanced across hosts: {r}");

    // TCP goes host to host in the kernel: the connect lands on the task.
    let tb = tb();
    let hosts_file = f.hosts[0].hosts.display().to_string();
    let r = f.hosts[0].run_json(
        "client",
        &[
            &tb,
            "client",
            "--target",
            "db:7100",
            "--hosts",
            &hosts_file,
            "--count",
            "20",
        ],
    )?;
    ensure!(r["failed"] == 0, "{r}");
    let mut seen = backends(&r);
    seen.sort();
    ensure!(seen == ["b", "c"], "TCP not balanced across hosts: {r}");

    // Host 3 dies (daemon and tasks) under steady traffic from host 1.
    let load = f.hosts[0]
        .cmd()
        .args(["run", "--service", "client", "--"])
        .args([
            &tb,
            "http-client",
            "--url",
            "http://web:8080/",
            "--hosts",
            &hosts_file,
            "--duration-ms",
            "9000",
            "--concurrency",
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    let dead = f.hosts.remove(2);
    let died = Instant::now();
    drop(dead);
    // Its endpoints expire with its lease (3 s) on every host.
    wait_for(
        "host 3's endpoints to expire",
        Duration::from_secs(8),
        || {
            (f.hosts[0]
                .json(&["endpoints", "web"])
                .ok()?
                .as_array()?
                .len()
                == 1)
                .then_some(())
        },
    )?;
    let expired = died.elapsed();
    ensure!(
        f.etcd.keys("/knit/hosts/h3/")?.is_empty(),
        "host 3's keys are still in etcd"
    );
    wait_for("host 2 to drop host 3 too", Duration::from_secs(5), || {
        (f.hosts[1]
            .json(&["endpoints", "db"])
            .ok()?
            .as_array()?
            .len()
            == 1)
            .then_some(())
    })?;
    let out = knit_tests::wait_output(load, "load", knit_tests::TASK_TIMEOUT)?;
    let r: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    eprintln!(
        "host 3 expired after {expired:?}; during it the client saw {} ok, {} failed, statuses {}",
        r["ok"], r["failed"], r["statuses"]
    );
    ensure!(r["failed"] == 0, "a request failed while host 3 died: {r}");
    ensure!(
        r["statuses"]
            .as_object()
            .is_some_and(|s| s.keys().all(|k| k == "200")),
        "a request was answered with an error while host 3 died: {r}"
    );
    ensure!(
        r["ok"].as_u64().unwrap_or(0) > 100,
        "too little traffic: {r}"
    );
    Ok(())
}

#[test]
fn every_host_keeps_serving_while_etcd_is_down_and_resyncs_after() -> Result<()> {
    let mut f = Fleet::start("outage", 2, "")?;
    apply_all(&f.hosts[0])?;
    wait_for("the services on host 2", Duration::from_secs(10), || {
        (f.hosts[1].json(&["services"]).ok()?.as_array()?.len() >= 3).then_some(())
    })?;
    run_web(&mut f.hosts[1], "b1")?;
    f.hosts[0].wait_healthy("web", 1)?;

    f.etcd.stop()?;
    for k in &f.hosts {
        wait_for(
            "the daemon to notice etcd is gone",
            Duration::from_secs(15),
            || {
                status(k).ok()?["registry"]
                    .as_str()?
                    .contains("unreachable")
                    .then_some(())
            },
        )?;
    }
    // The last known view keeps routing.
    let r = http_client(&f.hosts[0], &["--count", "30"])?;
    ensure!(r["failed"] == 0 && r["ok"] == 30, "{r}");
    ensure!(backends(&r) == ["b1"], "{r}");
    // A change cannot be made, and says why.
    let (wtd, _) = http_docs();
    let file = f.hosts[0].file("again.json", &wtd)?;
    let out = f.hosts[0].cli(&["apply", "-f", &file.display().to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "apply without etcd: {out:?}");
    ensure!(err.contains("etcd"), "apply without etcd says: {err}");

    // etcd is back: both resync without a restart, and a task started now
    // on host 2 reaches host 1.
    f.etcd.start()?;
    for k in &f.hosts {
        wait_for("the daemon to reconnect", Duration::from_secs(15), || {
            status(k).ok()?["registry"]
                .as_str()?
                .contains("connected")
                .then_some(())
        })?;
    }
    run_web(&mut f.hosts[1], "b2")?;
    f.hosts[0].wait_healthy("web", 2)?;
    let r = http_client(&f.hosts[0], &["--count", "30"])?;
    ensure!(r["failed"] == 0, "{r}");
    let mut seen = backends(&r);
    seen.sort();
    ensure!(seen == ["b1", "b2"], "{r}");
    Ok(())
}

#[test]
fn health_checks_gate_and_remove_traffic_on_every_host() -> Result<()> {
    let mut f = Fleet::start("health", 2, "")?;
    let marks = f.hosts[1].dir.path().join("marks");
    std::fs::create_dir_all(&marks)?;
    let check = format!("test -e {}/ok-$KNIT_TASK_ID", marks.display());
    let td = format!(
        r#"{{"family": "db", "containerDefinitions": [{{"name": "db",
            "portMappings": [{{"name": "tcp"}}],
            "healthCheck": {{"command": ["CMD-SHELL", "{check}"], "interval": 5, "timeout": 2, "retries": 1,
                            "startPeriod": 60}}}}]}}"#
    );
    let (ctd, csvc) = client_service("client");
    f.hosts[0].apply(&[
        ("td.json", &td),
        ("svc.json", &tcp_service("db", "db", 7100)),
        ("c.json", &ctd),
        ("cs.json", &csvc),
    ])?;
    wait_for("the services on host 2", Duration::from_secs(10), || {
        (f.hosts[1].json(&["services"]).ok()?.as_array()?.len() >= 2).then_some(())
    })?;
    run_db(&mut f.hosts[1], "b")?;
    let task = wait_for("host 1 to see the task", Duration::from_secs(10), || {
        let eps = f.hosts[0].json(&["endpoints", "db"]).ok()?;
        eps.as_array()?.first()?["task"].as_str().map(String::from)
    })?;
    let state = |k: &Knit| -> Option<String> {
        k.json(&["endpoints", "db"]).ok()?.as_array()?.first()?["state"]
            .as_str()
            .map(String::from)
    };
    let tb = tb();
    let hosts_file = f.hosts[0].hosts.display().to_string();
    let client = |n: &str| {
        f.hosts[0].run_json(
            "client",
            &[
                &tb,
                "client",
                "--target",
                "db:7100",
                "--hosts",
                &hosts_file,
                "--count",
                n,
            ],
        )
    };
    // Listening but not yet checked: no host sends it anything.
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(state(&f.hosts[0]).as_deref() == Some("starting"));
    let r = client("3")?;
    ensure!(
        r["failed"] == 3,
        "a request reached a task before its first passing check: {r}"
    );
    // Its first passing check puts it in rotation on host 1 too.
    std::fs::write(marks.join(format!("ok-{task}")), "")?;
    wait_for("healthy on host 1", Duration::from_secs(10), || {
        (state(&f.hosts[0])? == "healthy").then_some(())
    })?;
    let r = client("10")?;
    ensure!(r["failed"] == 0, "{r}");
    // A failing check takes it out on host 1 too.
    std::fs::remove_file(marks.join(format!("ok-{task}")))?;
    wait_for("unhealthy on host 1", Duration::from_secs(12), || {
        (state(&f.hosts[0])? == "unhealthy").then_some(())
    })?;
    let r = client("3")?;
    ensure!(r["failed"] == 3, "an unhealthy task still got traffic: {r}");
    Ok(())
}

/// The sum of `knit_request_count_total` for discovery name `web`.
fn web_requests_counted(k: &Knit) -> Result<f64> {
    k.metric_sum("knit_request_count_total", "discovery_name=\"web\"")
}

/// A stalled etcd (SIGSTOP: connections open, nothing answers) while an
/// apply waits on it must not stall traffic or reads: the kernel's
/// heartbeat is written by a task of its own, so the connect hook keeps
/// sending L7 connects to the proxy (a stale heartbeat would send them
/// straight to the endpoints, around retries, limits and metrics), and the
/// apply waits on etcd outside the engine's lock, so `/metrics`, the admin
/// API and the CLI answer meanwhile. Every request the client makes, each
/// on a new connection, is counted by the proxy. (Whether the apply itself
/// succeeds depends on how long etcd's client keeps a silent connection.)
#[test]
fn traffic_and_reads_go_on_while_an_apply_waits_on_a_stalled_etcd() -> Result<()> {
    let mut f = Fleet::start("stall", 1, "")?;
    apply_all(&f.hosts[0])?;
    run_web(&mut f.hosts[0], "w1")?;
    f.hosts[0].wait_healthy("web", 1)?;
    let before = web_requests_counted(&f.hosts[0])?;

    let hosts = f.hosts[0].hosts.display().to_string();
    let tb = tb();
    let load = f.hosts[0].spawn_task(
        "client",
        &[
            &tb,
            "http-client",
            "--url",
            "http://web:8080/",
            "--hosts",
            &hosts,
            "--duration-ms",
            "8000",
            "--reconnect",
            "--interval-ms",
            "5",
        ],
        Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    f.etcd.pause()?;
    // An apply waits on etcd (the daemon holds its engine's lock meanwhile).
    let (wtd, _) = http_docs();
    let file = f.hosts[0].file("again.json", &wtd)?;
    let t0 = Instant::now();
    let apply = f.hosts[0]
        .cmd()
        .args(["apply", "-f", &file.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Meanwhile the admin API and /metrics answer at once: they do not
    // wait for the apply (which plans and commits outside the engine's lock).
    std::thread::sleep(Duration::from_millis(500));
    let mut admin = Vec::new();
    for path in [
        "/metrics",
        "/api/v1/services",
        "/api/v1/endpoints",
        "/api/v1/status",
        "/api/v1/stats",
    ] {
        admin.push((path, f.hosts[0].admin_requests(path, 3)?));
    }
    let services = f.hosts[0].json(&["services"]);
    let stalled_for = t0.elapsed();
    // Twice the heartbeat's 1.5 s: long enough for a stale one to show.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stalled_for));
    f.etcd.resume()?;
    let applied = knit_tests::wait_output(apply, "knit apply", Duration::from_secs(30))?;
    let waited = t0.elapsed();
    let r = knit_tests::json_output(load)?;

    ensure!(
        waited >= Duration::from_millis(2500),
        "the apply did not wait for the stalled etcd ({waited:?}: {applied:?}), so this test proves nothing"
    );
    for (path, a) in &admin {
        ensure!(
            a["statuses"]["200"] == 3 && a["p99_us"].as_u64().is_some_and(|us| us < 50_000),
            "{path} while the apply waited on etcd: {a}"
        );
    }
    ensure!(
        services.is_ok(),
        "knit services while the apply waited on etcd: {services:?}"
    );
    ensure!(r["failed"] == 0, "requests failed while etcd stalled: {r}");
    let ok = r["ok"].as_f64().context("ok")?;
    ensure!(ok > 100.0, "too little traffic to tell: {r}");
    let counted = wait_for(
        "the proxy's count to settle",
        Duration::from_secs(5),
        || {
            let n = web_requests_counted(&f.hosts[0]).ok()? - before;
            (n >= ok).then_some(n)
        },
    )
    .unwrap_or_else(|_| web_requests_counted(&f.hosts[0]).unwrap_or(before) - before);
    ensure!(
        counted == ok,
        "the client made {ok} requests, the proxy counted {counted}: the rest went around it"
    );
    Ok(())
}
