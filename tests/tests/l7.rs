//! L7 services (appProtocol http / http2) through the daemon's proxy,
//! driven by real HTTP servers and clients running as knit tasks.
use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, testbin};
use serde_json::Value;

fn tb() -> String {
    testbin().display().to_string()
}

fn http_task_definition(family: &str, proto: &str) -> String {
    format!(
        r#"{{"family": "{family}", "containerDefinitions": [{{"name": "app", "image": "unused",
            "portMappings": [{{"name": "web", "appProtocol": "{proto}"}}]}}]}}"#
    )
}

fn http_service(name: &str, alias: &str, port: u16, timeout: &str) -> String {
    format!(
        r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
            "serviceConnectConfiguration": {{"enabled": true,
              "services": [{{"portName": "web", "discoveryName": "{name}",
                             "clientAliases": [{{"dnsName": "{alias}", "port": {port}}}]{timeout}}}]}}}}"#
    )
}

/// Apply service `web` (alias web:8080, `proto`) and a client-only service,
/// then start HTTP backends with the given extra arguments each.
fn setup(k: &mut Knit, proto: &str, timeout: &str, backends: &[(&str, &[&str])]) -> Result<()> {
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &http_task_definition("web", proto)),
        ("web-svc.json", &http_service("web", "web", 8080, timeout)),
        ("c-td.json", &ctd),
        ("c-svc.json", &csvc),
    ])?;
    for (id, extra) in backends {
        start(k, id, extra)?;
    }
    k.wait_healthy("web", backends.len())
}

fn start(k: &mut Knit, id: &str, extra: &[&str]) -> Result<()> {
    let tb = tb();
    let mut cmd = vec![
        tb.as_str(),
        "http",
        "--id",
        id,
        "--port-env",
        "KNIT_PORT_WEB",
    ];
    cmd.extend_from_slice(extra);
    k.run("web", &cmd)
}

fn client(k: &Knit, args: &[&str]) -> Result<Value> {
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let mut cmd = vec![tb.as_str(), "http-client", "--hosts", hosts.as_str()];
    cmd.extend_from_slice(args);
    k.run_json("client", &cmd)
}

fn by_backend(r: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(r["by_backend"].clone()).unwrap_or_default()
}

fn non_2xx(r: &Value) -> u64 {
    r["statuses"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.starts_with('2'))
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn l7_http1_balances_per_request_and_bodies_are_exact() -> Result<()> {
    let mut k = Knit::start("l7h1", "")?;
    setup(&mut k, "http", "", &[("w0", &[]), ("w1", &[]), ("w2", &[])])?;
    let r = client(
        &k,
        &[
            "--url",
            "http://web:8080/",
            "--count",
            "3000",
            "--concurrency",
            "4",
        ],
    )?;
    assert_eq!(r["ok"], 3000, "{}", r["statuses"]);
    let c = by_backend(&r);
    assert_eq!(c.len(), 3, "{c:?}");
    for (b, n) in &c {
        assert!((950..=1050).contains(n), "{b} got {n} of 3000: {c:?}");
    }
    // Bodies byte-exact, small (replayable) and large (streamed).
    for size in ["1", "1024", "200000", "3000000"] {
        let r = client(
            &k,
            &[
                "--url",
                "http://web:8080/echo",
                "--method",
                "POST",
                "--body-bytes",
                size,
                "--count",
                "6",
            ],
        )?;
        assert_eq!(r["ok"], 6, "{size}: {r}");
        assert_eq!(r["mismatched"], 0, "{size}: {r}");
    }
    // An outsider dialing the VIP is refused; the ingress listener serves the app.
    let eps = k.json(&["endpoints", "web"])?;
    let ingress = eps[0]["ingress_port"].as_u64().context("an ingress port")?;
    let direct = std::process::Command::new(tb())
        .args([
            "http-client",
            "--url",
            &format!("http://127.0.0.1:{ingress}/"),
            "--count",
            "3",
        ])
        .output()?;
    let d: Value = serde_json::from_slice(&direct.stdout)?;
    assert_eq!(d["ok"], 3, "{d}");
    assert_eq!(
        by_backend(&d).len(),
        1,
        "ingress serves its own task only: {d}"
    );
    Ok(())
}

#[test]
fn l7_h2c_balances_streams_and_keeps_trailers() -> Result<()> {
    let mut k = Knit::start("l7h2", "")?;
    setup(
        &mut k,
        "http2",
        "",
        &[("w0", &[]), ("w1", &[]), ("w2", &[])],
    )?;
    let r = client(
        &k,
        &[
            "--url",
            "http://web:8080/",
            "--h2",
            "--count",
            "600",
            "--concurrency",
            "3",
        ],
    )?;
    assert_eq!(r["ok"], 600, "{r}");
    let c = by_backend(&r);
    for (b, n) in &c {
        assert!((180..=220).contains(n), "{b} got {n} of 600: {c:?}");
    }
    let r = client(
        &k,
        &["--url", "http://web:8080/trailers", "--h2", "--count", "5"],
    )?;
    assert_eq!(r["trailers"], 5, "trailers arrive: {r}");
    let r = client(
        &k,
        &[
            "--url",
            "http://web:8080/echo",
            "--h2",
            "--method",
            "POST",
            "--body-bytes",
            "500000",
            "--count",
            "4",
        ],
    )?;
    assert_eq!(
        (r["ok"].as_u64(), r["mismatched"].as_u64()),
        (Some(4), Some(0)),
        "{r}"
    );
    // HTTP/1.1 clients of an h2 service are served too.
    let r = client(&k, &["--url", "http://web:8080/", "--count", "30"])?;
    assert_eq!(r["ok"], 30, "{r}");
    Ok(())
}

#[test]
fn l7_failing_endpoint_is_ejected_and_clients_see_no_error() -> Result<()> {
    let mut k = Knit::start("l7ej", "")?;
    let count_file = k.dir.path().join("bad.count").display().to_string();
    setup(
        &mut k,
        "http",
        "",
        &[
            ("w0", &[]),
            ("w1", &[]),
            ("bad", &["--always", "503", "--count-file", &count_file]),
        ],
    )?;
    let r = client(&k, &["--url", "http://web:8080/", "--count", "1000"])?;
    assert_eq!(r["ok"], 1000, "the client saw errors: {}", r["statuses"]);
    assert!(!by_backend(&r).contains_key("bad"));
    let served: u64 = std::fs::read_to_string(&count_file)?.trim().parse()?;
    // Ejected at its 5th failure in a row (a request or two may race the ejection).
    ensure!(
        (5..=7).contains(&served),
        "the failing endpoint served {served} requests"
    );
    let eps = k.json(&["endpoints", "web"])?;
    let bad = eps
        .as_array()
        .context("rows")?
        .iter()
        .filter(|e| e["state"] == "ejected")
        .count();
    assert_eq!(bad, 1, "{eps}");
    Ok(())
}

#[test]
fn l7_slow_endpoint_gets_504_at_the_configured_timeout() -> Result<()> {
    let mut k = Knit::start("l7slow", "")?;
    setup(
        &mut k,
        "http",
        r#", "timeout": {"perRequestTimeoutSeconds": 1}"#,
        &[("w0", &[])],
    )?;
    let t = Instant::now();
    let r = client(&k, &["--url", "http://web:8080/slow/3000", "--count", "1"])?;
    let took = t.elapsed();
    assert_eq!(r["statuses"]["504"], 1, "{r}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // A fast request on the same service still works.
    let r = client(&k, &["--url", "http://web:8080/slow/10", "--count", "2"])?;
    assert_eq!(r["ok"], 2, "{r}");
    Ok(())
}

#[test]
fn l7_websocket_and_bad_requests() -> Result<()> {
    let mut k = Knit::start("l7ws", "")?;
    setup(&mut k, "http", "", &[("w0", &[])])?;
    let hosts = k.hosts.display().to_string();
    let ws = k.run_json(
        "client",
        &[
            &tb(),
            "ws-client",
            "--url",
            "ws://web:8080/ws",
            "--messages",
            "200",
            "--hosts",
            &hosts,
        ],
    )?;
    assert_eq!(
        (ws["ok"].as_u64(), ws["bad"].as_u64()),
        (Some(200), Some(0)),
        "{ws}"
    );
    // A malformed request: 400 and the connection closes; the daemon lives on.
    let raw = k.run_json(
        "client",
        &[
            &tb(),
            "raw",
            "--target",
            "web:8080",
            "--hosts",
            &hosts,
            "--send",
            "GARBAGE / HTTP/9.9\\r\\n\\r\\n",
        ],
    )?;
    assert!(
        raw["status_line"]
            .as_str()
            .is_some_and(|s| s.contains(" 400")),
        "{raw}"
    );
    assert_eq!(raw["closed"], true, "{raw}");
    let big = k.run_json(
        "client",
        &[
            &tb(),
            "raw",
            "--target",
            "web:8080",
            "--hosts",
            &hosts,
            "--send",
            "-",
            "--big-header-bytes",
            "200000",
        ],
    )?;
    assert!(
        big["status_line"]
            .as_str()
            .is_some_and(|s| s.contains(" 431")),
        "{big}"
    );
    let r = client(&k, &["--url", "http://web:8080/", "--count", "3"])?;
    assert_eq!(r["ok"], 3, "still serving: {r}");
    // Expect: 100-continue, and a chunked body, pass through.
    let send = "POST /echo HTTP/1.1\\r\\nHost: web\\r\\nExpect: 100-continue\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nhello";
    let c = k.run_json(
        "client",
        &[
            &tb(),
            "raw",
            "--target",
            "web:8080",
            "--hosts",
            &hosts,
            "--send",
            send,
        ],
    )?;
    assert!(
        c["status_lines"][0]
            .as_str()
            .is_some_and(|s| s.contains(" 100")),
        "{c}"
    );
    assert!(
        c["status_lines"][1]
            .as_str()
            .is_some_and(|s| s.contains(" 200")),
        "{c}"
    );
    assert_eq!(c["body_tail"], "hello", "{c}");
    let send = "POST /echo HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: chunked\\r\\nConnection: close\\r\\n\\r\\n3\\r\\nabc\\r\\n4\\r\\ndefg\\r\\n0\\r\\n\\r\\n";
    let c = k.run_json(
        "client",
        &[
            &tb(),
            "raw",
            "--target",
            "web:8080",
            "--hosts",
            &hosts,
            "--send",
            send,
        ],
    )?;
    assert!(
        c["status_line"]
            .as_str()
            .is_some_and(|s| s.contains(" 200")),
        "{c}"
    );
    let answer = c["answer"].as_str().unwrap_or_default();
    let body: String = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .split("\r\n")
        .skip(1)
        .step_by(2)
        .collect();
    assert_eq!(body, "abcdefg", "chunks echoed in order: {c}");
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[test]
fn l7_kill9_of_an_endpoint_under_load_loses_no_idempotent_request() -> Result<()> {
    let mut k = Knit::start("l7kill", "")?;
    let pid_dir = k.dir.path().to_path_buf();
    setup(&mut k, "http", "", &[("w0", &[]), ("w1", &[]), ("w2", &[])])?;
    let hosts = k.hosts.display().to_string();
    let load = k.spawn_task(
        "client",
        &[
            &tb(),
            "http-client",
            "--hosts",
            &hosts,
            "--url",
            "http://web:8080/slow/5",
            "--duration-ms",
            "4000",
            "--concurrency",
            "4",
        ],
        Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    // The endpoint's process: the only one in its task's cgroup.
    let eps = k.json(&["endpoints", "web"])?;
    let task = eps[1]["task"].as_str().context("task")?.to_string();
    let procs = std::fs::read_to_string(k.cgroup.join("web").join(&task).join("cgroup.procs"))?;
    let pid: i32 = procs.lines().next().context("a pid")?.trim().parse()?;
    let killed_at = now_ms();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let _ = pid_dir;
    let r = knit_tests::json_output(load)?;
    assert_eq!(r["failed"], 0, "{}", r["errors"]);
    assert_eq!(
        non_2xx(&r),
        0,
        "GETs are retried elsewhere: {}",
        r["statuses"]
    );
    let after = r["timeline"]
        .as_array()
        .context("timeline")?
        .iter()
        .filter(|e| e[0].as_u64().unwrap_or(0) > killed_at + 500)
        .count();
    ensure!(after > 100, "load went on after the kill: {after}");
    Ok(())
}

#[test]
fn l7_rolling_restart_under_load_has_no_errors() -> Result<()> {
    let mut k = Knit::start("l7roll", "")?;
    setup(&mut k, "http", "", &[("a0", &[]), ("a1", &[]), ("a2", &[])])?;
    let hosts = k.hosts.display().to_string();
    // The load runs until every old task is replaced (a stop file; 60 s at
    // most): under TCG the three rounds take longer than a fixed window.
    let stop = k.dir.path().join("stop-load");
    let stop_arg = stop.display().to_string();
    let load = k.spawn_task(
        "client",
        &[
            &tb(),
            "http-client",
            "--hosts",
            &hosts,
            "--url",
            "http://web:8080/slow/2",
            "--duration-ms",
            "60000",
            "--stop-file",
            &stop_arg,
            "--concurrency",
            "4",
        ],
        Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let old: Vec<String> = k
        .json(&["endpoints", "web"])?
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|e| e["task"].as_str().map(String::from))
        .collect();
    for (i, task) in old.iter().enumerate() {
        start(&mut k, &format!("b{i}"), &[])?;
        k.wait_healthy("web", 4)?;
        k.ok(&["drain", "--task", task])?;
        knit_tests::wait_for("the old task to leave", Duration::from_secs(10), || {
            let eps = k.json(&["endpoints", "web"]).ok()?;
            (!eps.as_array()?.iter().any(|e| e["task"] == task.as_str())).then_some(())
        })?;
    }
    // The last new task serves a while (each request takes 2 s).
    std::thread::sleep(Duration::from_millis(3000));
    std::fs::write(&stop, "")?;
    let r = knit_tests::json_output(load)?;
    assert_eq!(r["failed"], 0, "{}", r["errors"]);
    assert_eq!(non_2xx(&r), 0, "{}", r["statuses"]);
    let c = by_backend(&r);
    ensure!(
        c.keys().any(|b| b.starts_with('a'))
            && c.keys().filter(|b| b.starts_with('b')).count() == 3,
        "{c:?}"
    );
    Ok(())
}

#[test]
fn l7_idle_connections_are_closed_at_the_idle_timeout() -> Result<()> {
    let mut k = Knit::start("l7idle", "")?;
    setup(
        &mut k,
        "http",
        r#", "timeout": {"idleTimeoutSeconds": 1}"#,
        &[("w0", &[])],
    )?;
    let hosts = k.hosts.display().to_string();
    let t = Instant::now();
    // Connect and say nothing: the proxy closes the connection.
    let raw = k.run_json(
        "client",
        &[
            &tb(),
            "raw",
            "--target",
            "web:8080",
            "--hosts",
            &hosts,
            "--send",
            "",
        ],
    )?;
    let took = t.elapsed();
    assert_eq!(raw["closed"], true, "{raw}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Busy connections are not idle: requests spaced under the timeout go on.
    let r = client(&k, &["--url", "http://web:8080/slow/300", "--count", "8"])?;
    assert_eq!(r["ok"], 8, "{r}");
    Ok(())
}

#[test]
fn l7_outlier_detection_is_settable_per_service() -> Result<()> {
    let mut k = Knit::start("l7od", "")?;
    let count_file = k.dir.path().join("bad.count").display().to_string();
    let od = r#", "outlierDetection": {"consecutiveFailures": 2, "baseEjectionSeconds": 1, "maxEjectionPercent": 50}"#;
    setup(
        &mut k,
        "http",
        od,
        &[
            ("w0", &[]),
            ("bad", &["--always", "503", "--count-file", &count_file]),
        ],
    )?;
    let r = client(&k, &["--url", "http://web:8080/", "--count", "100"])?;
    assert_eq!(r["ok"], 100, "{}", r["statuses"]);
    let served: u64 = std::fs::read_to_string(&count_file)?.trim().parse()?;
    // Each ejection lets through its 2 failures (and at most 2 requests
    // already on their way); a slow machine's run can outlast the 1 s
    // ejection, and the endpoint is then ejected again.
    let ejections: u64 = k
        .json(&["endpoints", "web"])?
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|e| e["ejections"].as_u64())
        .sum();
    ensure!(
        ejections >= 1 && (2..=4 * ejections).contains(&served),
        "ejected after 2 failures, served {served} in {ejections} ejections; daemon log:\n{}",
        k.daemon_log()
    );
    // Back after a second, failing again: ejected again, for twice as long.
    knit_tests::wait_for("the endpoint's return", Duration::from_secs(5), || {
        (k.endpoints_in("web", "ejected").ok()? == 0).then_some(())
    })?;
    let r = client(&k, &["--url", "http://web:8080/", "--count", "50"])?;
    assert_eq!(r["ok"], 50, "{}", r["statuses"]);
    let eps = k.json(&["endpoints", "web"])?;
    let ej: u64 = eps
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|e| e["ejections"].as_u64())
        .sum();
    // Twice at least (more on a slow machine, where the run outlasts the
    // second ejection).
    assert!(ej >= 2, "{eps}");
    Ok(())
}

#[test]
fn l7_fails_open_to_direct_l4_while_the_daemon_is_down() -> Result<()> {
    let mut k = Knit::start("l7open", "")?;
    setup(&mut k, "http", "", &[("w0", &[]), ("w1", &[])])?;
    let hosts = k.hosts.display().to_string();
    let load = k.spawn_task(
        "client",
        &[
            &tb(),
            "http-client",
            "--hosts",
            &hosts,
            "--url",
            "http://web:8080/",
            "--duration-ms",
            "6000",
            "--concurrency",
            "2",
        ],
        Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    k.kill_daemon()?;
    let killed_at = now_ms();
    let r = knit_tests::json_output(load)?;
    let timeline = r["timeline"].as_array().context("timeline")?;
    let late: Vec<&Value> = timeline
        .iter()
        .filter(|e| e[0].as_u64().unwrap_or(0) > killed_at + 2000)
        .collect();
    ensure!(
        late.len() > 100,
        "requests went on with the daemon dead: {}",
        late.len()
    );
    ensure!(
        late.iter().all(|e| e[1] == 200),
        "failures after the heartbeat window: {}",
        r["errors"]
    );
    // Only what was in flight at the kill fails: the kernel drops the dead
    // daemon's listener from KNIT_LISTEN, and the next connect goes
    // straight to an endpoint (not after the 1.5 s heartbeat window).
    let failed: Vec<u64> = timeline
        .iter()
        .filter(|e| e[1] != 200)
        .map(|e| e[0].as_u64().unwrap_or(0))
        .collect();
    eprintln!(
        "kill -9 under load: {} requests, {} failed, at {:?} ms after the kill",
        timeline.len(),
        failed.len(),
        failed
            .iter()
            .map(|t| *t as i64 - killed_at as i64)
            .collect::<Vec<_>>()
    );
    ensure!(
        failed.len() <= 4 && failed.iter().all(|t| *t < killed_at + 500),
        "more than the requests in flight failed: {failed:?} (killed at {killed_at})"
    );
    let backends: std::collections::BTreeSet<&str> =
        late.iter().filter_map(|e| e[2].as_str()).collect();
    assert_eq!(
        backends.len(),
        2,
        "still balanced, connection by connection: {backends:?}"
    );
    // The daemon comes back and takes L7 over again.
    k.start_daemon()?;
    let r = client(&k, &["--url", "http://web:8080/", "--count", "40"])?;
    assert_eq!(r["ok"], 40, "{r}");
    assert_eq!(by_backend(&r).len(), 2, "{r}");
    Ok(())
}

/// Each data-plane thread's run time so far, in ns (`/proc/<pid>/task/<tid>/schedstat`),
/// by thread name `knit-proxy-<i>`.
fn proxy_threads(pid: u32) -> Result<BTreeMap<String, u64>> {
    let mut threads = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = t?.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("knit-proxy-") {
            continue;
        }
        let ran: u64 = std::fs::read_to_string(dir.join("schedstat"))?
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .context("schedstat")?;
        threads.insert(name.to_string(), ran);
    }
    Ok(threads)
}

#[test]
fn l7_data_plane_threads_share_the_connections() -> Result<()> {
    let mut k = Knit::start("l7threads", "[proxy]\nthreads = 3\n")?;
    setup(&mut k, "http", "", &[("w0", &[]), ("w1", &[])])?;
    let pid = k.daemon_pid().context("the daemon's pid")?;
    let before = proxy_threads(pid)?;
    ensure!(
        before
            .keys()
            .eq(["knit-proxy-0", "knit-proxy-1", "knit-proxy-2"]),
        "`[proxy] threads = 3` started these data-plane threads: {before:?}"
    );
    // The egress listener is a group of three sockets (SO_REUSEPORT).
    let status = k.json(&["status"])?;
    ensure!(
        status["proxy"]["threads"] == 3 && status["proxy"]["egress_sockets"] == 3,
        "`knit status` says {}",
        status["proxy"]
    );
    let egress = status["proxy"]["egress"]
        .as_str()
        .context("the egress address in `knit status`")?
        .to_string();
    let port = egress.rsplit(':').next().unwrap_or_default();
    let port_hex = format!(":{:04X}", port.parse::<u16>()?);
    let listening = std::fs::read_to_string("/proc/net/tcp")?
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|a| a.ends_with(&port_hex)) && f.get(3) == Some(&"0A")
        })
        .count();
    ensure!(listening == 3, "{listening} sockets listen on {egress}");
    // 300 requests, each on a new connection: the kernel spreads them over
    // the group, and every thread serves some.
    let r = client(
        &k,
        &[
            "--url",
            "http://web:8080/",
            "--count",
            "300",
            "--concurrency",
            "4",
            "--reconnect",
        ],
    )?;
    ensure!(r["ok"] == 300 && non_2xx(&r) == 0, "{r}");
    let after = proxy_threads(pid)?;
    for (name, ran) in &after {
        let was = before.get(name).copied().unwrap_or(0);
        ensure!(
            *ran > was,
            "{name} did not run while 300 connections came: {before:?} -> {after:?}"
        );
    }
    Ok(())
}
