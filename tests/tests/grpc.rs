//! gRPC services (appProtocol grpc) through the daemon's L7 proxy, driven by
//! real tonic servers and clients (knit-testbin grpc-server / grpc-client)
//! running as knit tasks. The client makes all its calls on one channel,
//! one HTTP/2 connection, so balancing must happen per request (per
//! stream) in the proxy, not per connection in the kernel.
use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, testbin};
use serde_json::Value;

fn tb() -> String {
    testbin().display().to_string()
}

fn grpc_task_definition(family: &str) -> String {
    format!(
        r#"{{"family": "{family}", "containerDefinitions": [{{"name": "app", "image": "unused",
            "portMappings": [{{"name": "web", "appProtocol": "grpc"}}]}}]}}"#
    )
}

fn grpc_service(name: &str, alias: &str, port: u16) -> String {
    format!(
        r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
            "serviceConnectConfiguration": {{"enabled": true,
              "services": [{{"portName": "web", "discoveryName": "{name}",
                             "clientAliases": [{{"dnsName": "{alias}", "port": {port}}}]}}]}}}}"#
    )
}

/// Apply service `web` (alias web:8080, grpc) and a client-only service,
/// then start one gRPC backend per (id, extra arguments).
fn setup(k: &mut Knit, backends: &[(&str, &[&str])]) -> Result<()> {
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &grpc_task_definition("web")),
        ("web-svc.json", &grpc_service("web", "web", 8080)),
        ("c-td.json", &ctd),
        ("c-svc.json", &csvc),
    ])?;
    let tb = tb();
    for (id, extra) in backends {
        let mut cmd = vec![
            tb.as_str(),
            "grpc-server",
            "--id",
            id,
            "--port-env",
            "KNIT_PORT_WEB",
        ];
        cmd.extend_from_slice(extra);
        k.run("web", &cmd)?;
    }
    k.wait_healthy("web", backends.len())
}

/// Run `grpc-client --url http://web:8080 --kind KIND ARGS...` as a task.
fn client(k: &Knit, kind: &str, args: &[&str]) -> Result<Value> {
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let mut cmd = vec![
        tb.as_str(),
        "grpc-client",
        "--hosts",
        hosts.as_str(),
        "--url",
        "http://web:8080",
        "--kind",
        kind,
    ];
    cmd.extend_from_slice(args);
    k.run_json("client", &cmd)
}

fn by_backend(r: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(r["by_backend"].clone()).unwrap_or_default()
}

/// Every call succeeded and every byte came back as sent.
fn all_exact(r: &Value, calls: u64) -> Result<()> {
    ensure!(
        r["ok"].as_u64() == Some(calls) && r["failed"] == 0 && r["mismatched"] == 0,
        "expected {calls} exact calls: {r}"
    );
    Ok(())
}

#[test]
fn grpc_unary_balances_per_request_and_payloads_are_exact() -> Result<()> {
    let mut k = Knit::start("grpcu", "")?;
    setup(&mut k, &[("g0", &[]), ("g1", &[]), ("g2", &[])])?;
    let r = client(
        &k,
        "unary",
        &["--count", "300", "--concurrency", "4", "--bytes", "200"],
    )?;
    all_exact(&r, 300)?;
    let c = by_backend(&r);
    assert_eq!(c.len(), 3, "{c:?}");
    for (b, n) in &c {
        assert!((85..=115).contains(n), "{b} got {n} of 300: {c:?}");
    }
    // Around the proxy's 64 KiB replay buffer (a gRPC frame is the message
    // plus 5 bytes), then 1 MiB: all byte-exact.
    for size in ["0", "65531", "65532", "1048576"] {
        let r = client(&k, "unary", &["--count", "6", "--bytes", size])?;
        all_exact(&r, 6).with_context(|| format!("{size}-byte messages"))?;
    }
    Ok(())
}

#[test]
fn grpc_streaming_calls_are_exact_through_the_proxy() -> Result<()> {
    let mut k = Knit::start("grpcs", "")?;
    setup(&mut k, &[("g0", &[]), ("g1", &[]), ("g2", &[])])?;
    // Server streaming: 50 copies of a 100 kB message per call.
    let r = client(
        &k,
        "server",
        &["--count", "6", "--messages", "50", "--bytes", "100000"],
    )?;
    all_exact(&r, 6)?;
    assert_eq!(by_backend(&r).len(), 3, "calls are balanced: {r}");
    // Client streaming: 50 messages of 0 to 100 kB, concatenated.
    let r = client(
        &k,
        "client",
        &["--count", "6", "--messages", "50", "--bytes", "100000"],
    )?;
    all_exact(&r, 6)?;
    assert_eq!(by_backend(&r).len(), 3, "calls are balanced: {r}");
    // Bidi ping-pong: each of 100 messages (0 to 100 kB) must come back
    // before the next is sent, so a proxy that held the stream would hang.
    let r = client(
        &k,
        "bidi",
        &["--count", "3", "--messages", "100", "--bytes", "100000"],
    )?;
    all_exact(&r, 3)?;
    // Several streams at once on the one connection.
    let r = client(
        &k,
        "bidi",
        &[
            "--count",
            "12",
            "--concurrency",
            "4",
            "--messages",
            "100",
            "--bytes",
            "2000",
        ],
    )?;
    all_exact(&r, 12)?;
    Ok(())
}

#[test]
fn grpc_unavailable_endpoint_is_retried_elsewhere_and_ejected() -> Result<()> {
    let mut k = Knit::start("grpcej", "")?;
    setup(
        &mut k,
        &[("g0", &[]), ("g1", &[]), ("bad", &["--unavailable"])],
    )?;
    let r = client(&k, "unary", &["--count", "300", "--bytes", "100"])?;
    assert_eq!(
        (r["ok"].as_u64(), r["failed"].as_u64()),
        (Some(300), Some(0)),
        "UNAVAILABLE must be retried on another endpoint: {r}"
    );
    assert_eq!(r["mismatched"], 0, "{r}");
    let c = by_backend(&r);
    ensure!(
        !c.contains_key("bad") && c.len() == 2,
        "only the good backends answer: {c:?}"
    );
    let eps = k.json(&["endpoints", "web"])?;
    let states: Vec<&str> = eps
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|e| e["state"].as_str())
        .collect();
    let ejected = states.iter().filter(|s| **s == "ejected").count();
    assert_eq!(ejected, 1, "the failing endpoint is ejected: {eps}");
    assert_eq!(
        states.iter().filter(|s| **s == "healthy").count(),
        2,
        "{eps}"
    );
    Ok(())
}
