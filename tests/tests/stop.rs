//! Stopping a task is draining it, as ECS stops a task: SIGTERM to its
//! `knit run` takes its endpoints out of rotation, lets in-flight requests
//! finish, and only then gives the app SIGTERM.
use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, http_service, http_task_definition, testbin, wait_for};
use nix::{sys::signal::Signal, unistd::Pid};

/// Wait (bounded) for `child` to exit; its exit code.
fn exit_code_within(child: &mut Child, timeout: Duration) -> Result<Option<i32>> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s.code());
        }
        ensure!(
            Instant::now() < end,
            "knit run still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two tasks whose answers take 300 ms, 8 clients POSTing (a POST body is
/// never replayed to another endpoint): SIGTERM to one task's `knit run`
/// costs no request, and its app gets SIGTERM only after its last answer,
/// with nothing in flight.
#[test]
fn stopping_a_task_drains_it_before_the_app_gets_sigterm() -> Result<()> {
    let mut k = Knit::start("stop", "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &http_task_definition("web")),
        ("web.json", &http_service("web", "web", 8080)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    let tb = testbin().display().to_string();
    let on_term = k.dir.path().join("w0-term.json");
    let on_term_arg = on_term.display().to_string();
    let mut stopped = k.spawn_task(
        "web",
        &[
            &tb,
            "http",
            "--id",
            "w0",
            "--port-env",
            "KNIT_PORT_WEB",
            "--on-term",
            &on_term_arg,
        ],
        Stdio::null(),
    )?;
    k.run(
        "web",
        &[&tb, "http", "--id", "w1", "--port-env", "KNIT_PORT_WEB"],
    )?;
    k.wait_healthy("web", 2)?;
    let hosts = k.hosts.display().to_string();
    let load = k.spawn_task(
        "client",
        &[
            &tb,
            "http-client",
            "--url",
            "http://web:8080/slow/300",
            "--method",
            "POST",
            "--body-bytes",
            "512",
            "--hosts",
            &hosts,
            "--concurrency",
            "8",
            "--duration-ms",
            "6000",
        ],
        Stdio::piped(),
    )?;
    // Both tasks busy, 8 requests of 300 ms in flight all the time, and
    // each has served some (32 taken, round-robin: 16 each, 12 of them
    // ended). Counted rather than slept for: processes start slowly in
    // the VM.
    wait_for("32 requests to web taken", Duration::from_secs(20), || {
        let taken = k
            .metric_sum("knit_request_count_total", "discovery_name=\"web\"")
            .ok()?;
        (taken >= 32.0).then_some(())
    })?;
    let pid = i32::try_from(stopped.id()).context("pid")?;
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    let code = exit_code_within(&mut stopped, Duration::from_secs(30))?;
    let r = knit_tests::json_output(load)?;

    let term: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&on_term).context("the app never got SIGTERM")?,
    )?;
    eprintln!(
        "load: ok {} failed {}; the stopped app at SIGTERM: {term}",
        r["ok"], r["failed"]
    );
    ensure!(code == Some(0), "knit run exited with {code:?}");
    ensure!(
        term["requests"].as_u64().is_some_and(|n| n >= 8),
        "the stopped task served almost nothing before its stop, so this proves nothing: {term}"
    );
    ensure!(
        term["inflight"] == 0,
        "requests in flight at the app's SIGTERM: {term}"
    );
    let (at_term, last) = (
        term["sigterm_unix_ms"].as_u64().unwrap_or(0),
        term["last_answer_unix_ms"].as_u64().unwrap_or(u64::MAX),
    );
    ensure!(
        last <= at_term,
        "the app answered after its SIGTERM: {term}"
    );
    ensure!(
        r["failed"] == 0 && r["errors"].as_array().is_some_and(Vec::is_empty),
        "requests failed: {r}"
    );
    let not_ok: u64 = r["statuses"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(s, _)| !s.starts_with('2'))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    ensure!(not_ok == 0, "answers that were not 2xx: {r}");
    ensure!(r["ok"].as_u64().is_some_and(|n| n > 50), "{r}");
    Ok(())
}
