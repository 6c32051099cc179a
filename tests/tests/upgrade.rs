//! Zero-downtime upgrades: `knit daemon --takeover` five times under
//! steady HTTP load; no request fails and every old daemon drains and
//! exits. (TCP connections never pass through the daemon; `daemon.rs`
//! shows one surviving kill -9 of it.)
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use knit_tests::{
    Knit, client_service, http_service, http_task_definition, tcp_service, tcp_task_definition,
    testbin,
};
use serde_json::Value;

#[test]
fn five_takeovers_under_load_lose_no_request() -> Result<()> {
    let mut k = Knit::start("upgrade", "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &http_task_definition("web")),
        ("web.json", &http_service("web", "web", 8080)),
        ("db-td.json", &tcp_task_definition("db")),
        ("db.json", &tcp_service("db", "db", 7100)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    let tb = testbin().display().to_string();
    for id in ["w0", "w1"] {
        k.run(
            "web",
            &[&tb, "http", "--id", id, "--port-env", "KNIT_PORT_WEB"],
        )?;
    }
    k.run(
        "db",
        &[&tb, "echo", "--id", "d0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.wait_healthy("web", 2)?;
    k.wait_healthy("db", 1)?;
    let hosts = k.hosts.display().to_string();
    // The load runs across all five takeovers (a stop file; 90 s at most):
    // under TCG a takeover takes seconds, longer than a fixed window allows.
    let stop = k.dir.path().join("stop-load");
    let stop_arg = stop.display().to_string();
    let load = k.spawn_task(
        "client",
        &[
            &tb,
            "http-client",
            "--url",
            "http://web:8080/",
            "--hosts",
            &hosts,
            "--duration-ms",
            "90000",
            "--stop-file",
            &stop_arg,
            "--concurrency",
            "4",
            "--interval-ms",
            "2",
        ],
        std::process::Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(800));
    let first_pid = k.daemon_pid();
    for round in 1..=5 {
        let old = k.take_over()?;
        ensure!(
            old.success(),
            "round {round}: the old daemon exited with {old}"
        );
        std::thread::sleep(Duration::from_millis(800));
    }
    ensure!(k.daemon_pid() != first_pid);
    std::fs::write(&stop, "")?;
    let out = knit_tests::wait_output(load, "load", knit_tests::TASK_TIMEOUT)?;
    let r: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    eprintln!(
        "5 takeovers under load: {} ok, {} failed, statuses {}",
        r["ok"], r["failed"], r["statuses"]
    );
    ensure!(r["failed"] == 0, "requests failed across takeovers: {r}");
    ensure!(
        r["statuses"]
            .as_object()
            .is_some_and(|s| s.keys().all(|k| k == "200")),
        "{r}"
    );
    ensure!(
        r["ok"].as_u64().unwrap_or(0) > 500,
        "too little traffic: {r}"
    );
    let log = k.daemon_log();
    ensure!(
        log.matches("handing over to a new daemon").count() == 5,
        "{log}"
    );
    ensure!(
        log.matches("took over the running daemon").count() == 5,
        "{log}"
    );
    // Still routing after all that.
    let r = k.run_json(
        "client",
        &[
            &tb,
            "http-client",
            "--url",
            "http://web:8080/",
            "--hosts",
            &hosts,
            "--count",
            "20",
        ],
    )?;
    ensure!(r["ok"] == 20, "{r}");
    Ok(())
}
