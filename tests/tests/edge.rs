//! The HTTP edge a hostile task meets (issue 14): raw requests from a task
//! through an `http` alias to a backend that records what reached it
//! (`knit-testbin http --record`, asked from outside knit's cgroup), the
//! egress listener under a burst of connects, oversized applies, the CLI
//! on a closed pipe and the state files' modes.
use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, http_get, json_output, testbin};
use serde_json::Value;

fn tb() -> String {
    testbin().display().to_string()
}

/// Service `web` (appProtocol `http`, alias web:8080) with `extra` in its
/// `services[]` entry, a recording backend, and a client-only service.
fn setup(test: &str, extra: &str) -> Result<Knit> {
    let mut k = Knit::start(test, "")?;
    let (ctd, csvc) = client_service("client");
    let td = r#"{"family": "web", "containerDefinitions": [{"name": "app", "image": "unused",
        "portMappings": [{"name": "web", "appProtocol": "http"}]}]}"#;
    let svc = format!(
        r#"{{"serviceName": "web", "taskDefinition": "web",
            "serviceConnectConfiguration": {{"enabled": true,
              "services": [{{"portName": "web", "discoveryName": "web",
                             "clientAliases": [{{"dnsName": "web", "port": 8080}}]{extra}}}]}}}}"#
    );
    k.apply(&[
        ("td.json", td),
        ("svc.json", &svc),
        ("c-td.json", &ctd),
        ("c-svc.json", &csvc),
    ])?;
    let tb = tb();
    k.run(
        "web",
        &[
            &tb,
            "http",
            "--id",
            "b0",
            "--port-env",
            "KNIT_PORT_WEB",
            "--record",
        ],
    )?;
    k.wait_healthy("web", 1)?;
    Ok(k)
}

/// `knit-testbin raw` from a task of the client service: `send` (with
/// `\\r\\n` for CRLF) as is, then `extra` options.
fn raw(k: &Knit, send: &str, extra: &[&str]) -> Result<Value> {
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let mut cmd = vec![
        tb.as_str(),
        "raw",
        "--target",
        "web:8080",
        "--hosts",
        hosts.as_str(),
        "--send",
        send,
    ];
    cmd.extend_from_slice(extra);
    k.run_json("client", &cmd)
}

/// Every request the backend recorded, in order.
fn seen(k: &Knit) -> Result<Vec<Value>> {
    let eps = k.json(&["endpoints", "web"])?;
    let addr = eps[0]["address"].as_str().context("an endpoint address")?;
    let v: Value = serde_json::from_str(&http_get(&format!("http://{addr}/seen"))?)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// The requests the backend recorded for `path`.
fn seen_at(k: &Knit, path: &str) -> Result<Vec<Value>> {
    Ok(seen(k)?.into_iter().filter(|r| r["path"] == path).collect())
}

/// A recorded request's fields named `name` (lower case).
fn fields(r: &Value, name: &str) -> Vec<String> {
    r["headers"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|f| f[0] == name)
                .filter_map(|f| f[1].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn status(r: &Value) -> &str {
    r["status_line"].as_str().unwrap_or_default()
}

/// Items 1 and 2: an upgrade request meets the same checks as any other;
/// only WebSocket is tunnelled, h2c is served as HTTP/1.1, other tokens are
/// refused; nothing refused reaches the backend.
#[test]
fn edge_upgrades_pass_every_check_and_h2c_is_never_tunnelled() -> Result<()> {
    let k = setup("edge-upgrade", r#", "limits": {"maxRequestBytes": 1024}"#)?;
    let ten_mib = (10u64 << 20).to_string();
    // An unknown upgrade token: 403, whatever its body.
    let head = format!(
        "POST /foo HTTP/1.1\\r\\nHost: web\\r\\nConnection: Upgrade\\r\\nUpgrade: foo\\r\\nContent-Length: {ten_mib}\\r\\n\\r\\n"
    );
    let r = raw(&k, &head, &["--body-bytes", &ten_mib])?;
    assert!(status(&r).contains(" 403"), "{r}");
    // WebSocket with a declared body past maxRequestBytes: 413.
    let head = format!(
        "POST /ws HTTP/1.1\\r\\nHost: web\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\nContent-Length: {ten_mib}\\r\\n\\r\\n"
    );
    let r = raw(&k, &head, &["--body-bytes", &ten_mib])?;
    assert!(status(&r).contains(" 413"), "{r}");
    // ... or chunked: 413 once it passes the limit (read before anything
    // is sent) or 400 (an upgrade carries no body).
    let head = "POST /ws HTTP/1.1\\r\\nHost: web\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n";
    let r = raw(&k, head, &["--body-bytes", &ten_mib, "--chunked"])?;
    assert!(
        status(&r).contains(" 400") || status(&r).contains(" 413"),
        "{r}"
    );
    // A Host that is no authority: 400, upgrade or not.
    let head = "GET /ws HTTP/1.1\\r\\nHost: a b/c\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n";
    let r = raw(&k, head, &[])?;
    assert!(status(&r).contains(" 400"), "{r}");
    assert_eq!(
        seen(&k)?,
        Vec::<Value>::new(),
        "nothing refused reached the backend"
    );

    // A WebSocket handshake goes through with its hop-by-hop fields
    // stripped (those its Connection names too).
    let head = "GET /ws HTTP/1.1\\r\\nHost: web\\r\\nConnection: Upgrade, X-Hop\\r\\nX-Hop: secret\\r\\nKeep-Alive: timeout=5\\r\\nProxy-Connection: keep-alive\\r\\nUpgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n";
    let r = raw(&k, head, &["--read-ms", "500"])?;
    assert!(status(&r).contains(" 101"), "{r}");
    let ws = seen_at(&k, "/ws")?;
    assert_eq!(ws.len(), 1, "{ws:?}");
    for hop in ["x-hop", "keep-alive", "proxy-connection"] {
        assert_eq!(fields(&ws[0], hop), Vec::<String>::new(), "{hop}: {ws:?}");
    }
    assert_eq!(fields(&ws[0], "upgrade"), vec!["websocket"], "{ws:?}");

    // h2c: served as the HTTP/1.1 request it also is; the backend gets one
    // plain request, no upgrade, no HTTP2-Settings.
    let head = "GET /h2c HTTP/1.1\\r\\nHost: web\\r\\nConnection: Upgrade, HTTP2-Settings\\r\\nUpgrade: h2c\\r\\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\\r\\n\\r\\n";
    let r = raw(&k, head, &["--read-ms", "1000"])?;
    assert_eq!(
        r["status_lines"],
        serde_json::json!(["HTTP/1.1 200 OK"]),
        "{r}"
    );
    let h2c = seen_at(&k, "/h2c")?;
    assert_eq!(h2c.len(), 1, "{h2c:?}");
    assert_eq!(h2c[0]["version"], "HTTP/1.1", "{h2c:?}");
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(fields(&h2c[0], hop), Vec::<String>::new(), "{hop}: {h2c:?}");
    }
    // The refusals were counted as any request's.
    let metrics = k.metrics()?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("knit_limit_overflow_total{")
                && l.contains("reason=\"request_bytes\"")
                && !l.ends_with(" 0")),
        "a 413 counted: {metrics}"
    );
    Ok(())
}

/// Items 4 and 6: a body reaches the backend with its framing whatever the
/// method; bad chunked framing is the client's 400 and no request reaches
/// the backend.
#[test]
fn edge_bodies_keep_their_framing_and_bad_framing_is_a_400() -> Result<()> {
    let k = setup("edge-bodies", "")?;
    for method in ["GET", "HEAD"] {
        let head = format!(
            "{method} /small-{method} HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: chunked\\r\\nConnection: close\\r\\n\\r\\n5\\r\\nhello\\r\\n0\\r\\n\\r\\n"
        );
        let r = raw(&k, &head, &[])?;
        assert!(status(&r).contains(" 200"), "{r}");
        let got = seen_at(&k, &format!("/small-{method}"))?;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["body_bytes"], 5, "{method}: {got:?}");
        // A body larger than what the proxy reads ahead is streamed, chunked.
        let head = format!(
            "{method} /big-{method} HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: chunked\\r\\nConnection: close\\r\\n\\r\\n"
        );
        let r = raw(&k, &head, &["--body-bytes", "300000", "--chunked"])?;
        assert!(status(&r).contains(" 200"), "{r}");
        let got = seen_at(&k, &format!("/big-{method}"))?;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["body_bytes"], 300000, "{method}: {got:?}");
        assert_eq!(fields(&got[0], "transfer-encoding"), vec!["chunked"]);
    }
    // An invalid chunk size: 400, and the backend never sees the request.
    let head = "POST /bad HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\nzz\\r\\nhello\\r\\n0\\r\\n\\r\\n";
    let r = raw(&k, head, &[])?;
    assert!(status(&r).contains(" 400"), "{r}");
    assert_eq!(r["closed"], true, "{r}");
    assert_eq!(seen_at(&k, "/bad")?, Vec::<Value>::new());
    // Bad framing after 300 KB already went: still the client's 400; the
    // backend got no whole request (its body broke off).
    let head = "POST /bad-late HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n";
    let r = raw(
        &k,
        head,
        &["--body-bytes", "300000", "--chunked", "--after", "zz\\r\\n"],
    )?;
    assert!(status(&r).contains(" 400"), "{r}");
    let late = seen_at(&k, "/bad-late")?;
    assert!(
        late.iter().all(|r| !r["body_error"].is_null()),
        "no whole request: {late:?}"
    );
    Ok(())
}

/// Item 5: two Host fields, or an HTTP/2 Host that differs from its
/// :authority, are a 400 that never reaches the backend.
#[test]
fn edge_duplicate_host_and_authority_mismatch_are_refused() -> Result<()> {
    let k = setup("edge-host", "")?;
    let head =
        "GET /two-hosts HTTP/1.1\\r\\nHost: web\\r\\nHost: evil\\r\\nConnection: close\\r\\n\\r\\n";
    let r = raw(&k, head, &[])?;
    assert!(status(&r).contains(" 400"), "{r}");
    // HTTP/2 with a Host beside a different :authority.
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let h2 = k.run_json(
        "client",
        &[
            &tb,
            "http-client",
            "--hosts",
            &hosts,
            "--url",
            "http://web:8080/mismatch",
            "--h2",
            "--host-header",
            "evil",
            "--count",
            "1",
        ],
    )?;
    assert_eq!(h2["statuses"], serde_json::json!({"400": 1}), "{h2}");
    assert_eq!(
        seen(&k)?,
        Vec::<Value>::new(),
        "nothing reached the backend"
    );
    let ok = raw(
        &k,
        "GET /one-host HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n",
        &[],
    )?;
    assert!(status(&ok).contains(" 200"), "{ok}");
    Ok(())
}

/// Item 3: with maxConnections 3 and a 3 s idle timeout, a task opening
/// three idle WebSockets gets its share (one: half of 3) and 503 for the
/// rest; another task is served meanwhile; the tunnel closes at the idle
/// timeout.
#[test]
fn edge_tunnels_obey_the_idle_timeout_and_a_client_share() -> Result<()> {
    let k = setup(
        "edge-tunnels",
        r#", "limits": {"maxConnections": 3}, "timeout": {"idleTimeoutSeconds": 3}"#,
    )?;
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let idle = k.spawn_task(
        "client",
        &[
            &tb,
            "ws-idle",
            "--hosts",
            &hosts,
            "--url",
            "ws://web:8080/ws",
            "--sockets",
            "3",
            "--idle-ms",
            "10000",
        ],
        Stdio::piped(),
    )?;
    // Once the tunnel is up, a second task is served.
    knit_tests::wait_for("a tunnel", Duration::from_secs(10), || {
        (seen_at(&k, "/ws").ok()?.len() == 1).then_some(())
    })?;
    let other = k.run_json(
        "client",
        &[
            &tb,
            "http-client",
            "--hosts",
            &hosts,
            "--url",
            "http://web:8080/other",
            "--count",
            "5",
        ],
    )?;
    assert_eq!(other["ok"], 5, "{other}");
    let r = json_output(idle)?;
    assert_eq!(r["opened"], 1, "{r}");
    assert_eq!(r["refused"], serde_json::json!([503, 503]), "{r}");
    let closed = r["closed_after_ms"][0]
        .as_u64()
        .context("closed by the proxy")?;
    assert!((2500..6000).contains(&closed), "{r}");
    Ok(())
}

/// Item 7: 6,000 connects at once from one task to an L7 alias (the
/// egress listener) are all established within a second.
#[test]
fn edge_a_burst_of_connects_is_not_dropped_by_the_backlog() -> Result<()> {
    let k = setup("edge-burst", "")?;
    let drops_before = listen_drops()?;
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let r = k.run_json(
        "client",
        &[
            &tb,
            "burst",
            "--hosts",
            &hosts,
            "--target",
            "web:8080",
            "--connections",
            "6000",
        ],
    )?;
    assert_eq!(r["connected"], 6000, "{r}");
    let ms = r["ms"].as_u64().unwrap_or(u64::MAX);
    let dropped = listen_drops()? - drops_before;
    eprintln!("6000 connects: {ms} ms, {dropped} SYNs dropped by full accept queues");
    // A full accept queue drops SYNs (retried after 1 s, 3 s, ...): none was.
    assert_eq!(dropped, 0, "{r}");
    // The time goal is for real hardware; under the VM's TCG emulation
    // the burst itself is tens of times slower.
    if std::env::var_os("KNIT_IN_VM").is_none() {
        assert!(ms < 1000, "{r}");
    }
    Ok(())
}

/// SYNs dropped by full listen queues in this network namespace
/// (`TcpExt: ListenDrops` in /proc/net/netstat).
fn listen_drops() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat")?;
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        anyhow::bail!("no TcpExt lines in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenDrops")
        .and_then(|(_, v)| v.parse().ok())
        .context("ListenDrops in /proc/net/netstat")
}

/// The daemon's resident memory, in KiB.
fn rss_kib(k: &Knit) -> Result<u64> {
    let pid = k.daemon_pid().context("a daemon")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// Item 8: an apply of 100,000 services is refused while it is read, ten
/// times, and the daemon's memory stays where it was; one past the
/// request size limit gets the daemon's refusal, not a broken pipe.
#[test]
fn edge_oversized_applies_are_refused_cheaply() -> Result<()> {
    let k = Knit::start("edge-apply", "")?;
    let one = |i: usize| {
        format!(
            r#"{{"serviceName": "s{i}", "taskDefinition": "web",
  "serviceConnectConfiguration": {{"enabled": true, "services": [{{"portName": "web",
  "clientAliases": [{{"dnsName": "s{i}", "port": 8080}}]}}]}}}}"#
        )
    };
    let many: Vec<String> = (0..100_000).map(one).collect();
    let text = format!("[{}]", many.join(",\n"));
    eprintln!("apply of {} bytes", text.len());
    let file = k.file("many.json", &text)?;
    drop((many, text));
    let file = file.display().to_string();
    let before = rss_kib(&k)?;
    for _ in 0..10 {
        let out = k.cli(&["apply", "-f", &file])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("more than 20000 objects"), "{err}");
        eprintln!("daemon RSS after a refused apply: {} KiB", rss_kib(&k)?);
    }
    let after = rss_kib(&k)?;
    eprintln!("daemon RSS: {before} KiB before, {after} KiB after 10 refused applies");
    assert!(
        after < before + 20 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // Past the request limit (64 MiB): the daemon's refusal is printed.
    let huge = k.dir.path().join("huge.json");
    let pad = "x".repeat(100 << 20);
    std::fs::write(&huge, format!(r#"{{"family": "{pad}"}}"#))?;
    drop(pad);
    let out = k.cli(&["apply", "-f", &huge.display().to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("request too large"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    let after_huge = rss_kib(&k)?;
    eprintln!("daemon RSS after a 100 MiB apply: {after_huge} KiB");
    assert!(after_huge < before + 20 * 1024, "RSS {after_huge} KiB");
    Ok(())
}

/// Item 9: `knit services --json | head` (a reader that closes early)
/// ends quietly.
#[test]
fn edge_cli_output_to_a_closed_pipe_exits_quietly() -> Result<()> {
    let k = setup("edge-pipe", "")?;
    let mut child = k
        .cmd()
        .args(["services", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The reader goes away before anything is written.
    drop(child.stdout.take());
    let out = knit_tests::wait_output(child, "knit services --json", Duration::from_secs(30))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}

/// Item 10: the state directory is root only, the store 0600.
#[test]
fn edge_state_files_are_root_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let k = setup("edge-modes", "")?;
    let state = k.dir.path().join("state");
    let mode = |p: &std::path::Path| -> Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(&state)?, 0o700);
    assert_eq!(mode(&state.join("registry.redb"))?, 0o600);
    // A task running as nobody cannot read it.
    let store = state.join("registry.redb").display().to_string();
    let out = k
        .cmd()
        .args([
            "run",
            "--service",
            "client",
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "cat",
            &store,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    assert!(!out.status.success(), "nobody read the store");
    Ok(())
}
