//! Per-service limits (`services[].limits`) as a client meets them: real
//! HTTP backends and clients running as knit tasks, requests through the
//! VIP, exact counts of what was served and what was refused.
use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, http_get, testbin};
use serde_json::Value;

fn tb() -> String {
    testbin().display().to_string()
}

fn task_definition(family: &str, proto: &str) -> String {
    format!(
        r#"{{"family": "{family}", "containerDefinitions": [{{"name": "app", "image": "unused",
            "portMappings": [{{"name": "web", "appProtocol": "{proto}"}}]}}]}}"#
    )
}

/// Service `name` (alias `name:8080`), with `"limits": LIMITS` when given.
fn service(name: &str, limits: Option<&str>) -> String {
    let limits = limits
        .map(|l| format!(r#", "limits": {l}"#))
        .unwrap_or_default();
    format!(
        r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
            "serviceConnectConfiguration": {{"enabled": true,
              "services": [{{"portName": "web", "discoveryName": "{name}",
                             "clientAliases": [{{"dnsName": "{name}", "port": 8080}}]{limits}}}]}}}}"#
    )
}

/// A daemon with service `name` (`proto`, `limits`), one backend (the
/// testbin's HTTP server, or its gRPC server for `grpc`) and a client-only
/// service.
fn setup(test: &str, name: &str, proto: &str, limits: &str) -> Result<Knit> {
    let mut k = Knit::start(test, "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("td.json", &task_definition(name, proto)),
        ("svc.json", &service(name, Some(limits))),
        ("c-td.json", &ctd),
        ("c-svc.json", &csvc),
    ])?;
    let tb = tb();
    let server = if proto == "grpc" {
        "grpc-server"
    } else {
        "http"
    };
    k.run(
        name,
        &[&tb, server, "--id", "b0", "--port-env", "KNIT_PORT_WEB"],
    )?;
    k.wait_healthy(name, 1)?;
    Ok(k)
}

/// `knit-testbin http-client` as a task of the client service.
fn client(k: &Knit, args: &[&str]) -> Result<Value> {
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let mut cmd = vec![tb.as_str(), "http-client", "--hosts", hosts.as_str()];
    cmd.extend_from_slice(args);
    k.run_json("client", &cmd)
}

/// `knit-testbin raw` (one request written as is) as a task of the client.
fn raw(k: &Knit, target: &str, args: &[&str]) -> Result<Value> {
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let mut cmd = vec![
        tb.as_str(),
        "raw",
        "--target",
        target,
        "--hosts",
        hosts.as_str(),
    ];
    cmd.extend_from_slice(args);
    k.run_json("client", &cmd)
}

/// `n` requests to `url` at once, one connection each.
fn burst(k: &Knit, url: &str, n: &str, h2: bool) -> Result<Value> {
    let mut args = vec!["--url", url, "--count", n, "--concurrency", n];
    if h2 {
        args.push("--h2");
    }
    client(k, &args)
}

fn statuses(r: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(r["statuses"].clone()).unwrap_or_default()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

/// The backend's own account (asked directly, from outside knit's cgroup):
/// requests, connections that carried one, and the most at once.
fn backend_stats(k: &Knit, service: &str) -> Result<Value> {
    let eps = k.json(&["endpoints", service])?;
    let addr = eps[0]["address"].as_str().context("an endpoint address")?;
    Ok(serde_json::from_str(&http_get(&format!(
        "http://{addr}/stats"
    ))?)?)
}

/// `knit_limit_overflow_total` of `service` for `reason`.
fn overflow_metric(k: &Knit, service: &str, reason: &str) -> Result<f64> {
    let text = k.metrics()?;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("knit_limit_overflow_total{")
                && l.contains(&format!("target_discovery_name=\"{service}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .collect();
    ensure!(series.len() == 1, "one series, got {series:?}");
    Ok(series[0]
        .rsplit_once(' ')
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(f64::NAN))
}

/// Six slow requests at once against 2 lanes and room for 1 waiting:
/// 2 go, 1 waits and goes, 3 are refused at once with 503; then a
/// re-apply changes the limits of the running service.
#[test]
fn limits_connections_and_pending_http1() -> Result<()> {
    let k = setup(
        "limits-h1",
        "web",
        "http",
        r#"{"maxConnections": 2, "maxPendingRequests": 1}"#,
    )?;
    let t0 = std::time::Instant::now();
    let r = burst(&k, "http://web:8080/slow/2000", "6", false)?;
    assert_eq!(statuses(&r), counts(&[("200", 3), ("503", 3)]), "{r}");
    assert_eq!(r["overflow"], serde_json::json!({"pending": 3}), "{r}");
    // The waiting one went after a first one finished.
    assert!(t0.elapsed().as_millis() >= 4000, "{:?}", t0.elapsed());
    // The backend saw 2 connections (the waiting request reused one) and
    // never more than 2 requests at once.
    let s = backend_stats(&k, "web")?;
    assert_eq!(
        (s["connections"].as_u64(), s["max_inflight"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert_eq!(overflow_metric(&k, "web", "pending")?, 3.0);
    assert_eq!(overflow_metric(&k, "web", "request_bytes")?, 0.0);

    // Re-applied: 4 lanes, nobody waits.
    k.apply(&[(
        "svc.json",
        &service(
            "web",
            Some(r#"{"maxConnections": 4, "maxPendingRequests": 0}"#),
        ),
    )])?;
    let r = burst(&k, "http://web:8080/slow/1500", "6", false)?;
    assert_eq!(statuses(&r), counts(&[("200", 4), ("503", 2)]), "{r}");
    assert_eq!(backend_stats(&k, "web")?["max_inflight"], 4);
    assert_eq!(overflow_metric(&k, "web", "pending")?, 5.0);

    // Limits removed: the defaults (1024 lanes) take all six.
    k.apply(&[("svc.json", &service("web", None))])?;
    let r = burst(&k, "http://web:8080/slow/1000", "6", false)?;
    assert_eq!(statuses(&r), counts(&[("200", 6)]), "{r}");
    assert_eq!(backend_stats(&k, "web")?["max_inflight"], 6);
    assert_eq!(overflow_metric(&k, "web", "pending")?, 5.0);
    Ok(())
}

/// The same over HTTP/2, where a lane is a stream.
#[test]
fn limits_streams_and_pending_h2() -> Result<()> {
    let k = setup(
        "limits-h2",
        "grid",
        "http2",
        r#"{"maxConnections": 2, "maxPendingRequests": 1}"#,
    )?;
    let r = burst(&k, "http://grid:8080/slow/2000", "6", true)?;
    assert_eq!(statuses(&r), counts(&[("200", 3), ("503", 3)]), "{r}");
    assert_eq!(r["overflow"], serde_json::json!({"pending": 3}), "{r}");
    assert_eq!(backend_stats(&k, "grid")?["max_inflight"], 2);
    assert_eq!(overflow_metric(&k, "grid", "pending")?, 3.0);
    Ok(())
}

/// Bodies over maxRequestBytes get 413 (declared or streamed), heads over
/// maxHeaderBytes 431; at the limit they pass.
#[test]
fn limits_request_and_header_bytes() -> Result<()> {
    let k = setup(
        "limits-bytes",
        "web",
        "http",
        r#"{"maxRequestBytes": 1000, "maxHeaderBytes": 2048}"#,
    )?;
    let post = |bytes: &str, extra: &[&str]| -> Result<Value> {
        let mut args = vec![
            "--url",
            "http://web:8080/sink",
            "--method",
            "POST",
            "--body-bytes",
            bytes,
            "--count",
            "2",
        ];
        args.extend_from_slice(extra);
        client(&k, &args)
    };
    // Content-Length: checked before anything is sent.
    let r = post("1000", &[])?;
    assert_eq!(statuses(&r), counts(&[("200", 2)]), "{r}");
    let before = backend_stats(&k, "web")?["requests"].as_u64();
    let r = post("1001", &[])?;
    assert_eq!(statuses(&r), counts(&[("413", 2)]), "{r}");
    assert_eq!(
        r["overflow"],
        serde_json::json!({"request_bytes": 2}),
        "{r}"
    );
    assert_eq!(
        backend_stats(&k, "web")?["requests"].as_u64(),
        before,
        "a declared body over the limit never reaches the backend"
    );
    // Chunked: cut off where it passes the limit, before any answer.
    let r = post("1000", &["--chunked"])?;
    assert_eq!(statuses(&r), counts(&[("200", 2)]), "{r}");
    let r = post("5000", &["--chunked"])?;
    assert_eq!(statuses(&r), counts(&[("413", 2)]), "{r}");
    // HTTP/2 DATA without a length: the same.
    let r = post("5000", &["--chunked", "--h2"])?;
    assert_eq!(statuses(&r), counts(&[("413", 2)]), "{r}");
    // A client that waits for 100 Continue gets 413 instead, and its body
    // is never asked for.
    let head = "POST /sink HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 5000\\r\\nExpect: 100-continue\\r\\n\\r\\n";
    let c = raw(&k, "web:8080", &["--send", head])?;
    assert_eq!(
        c["status_lines"],
        serde_json::json!(["HTTP/1.1 413 Payload Too Large"]),
        "{c}"
    );
    assert_eq!(c["closed"], true, "{c}");
    assert_eq!(overflow_metric(&k, "web", "request_bytes")?, 7.0);

    // The head: 55 bytes plus the header's value (see `raw`); 2048 passes.
    let big = |n: &str| raw(&k, "web:8080", &["--send", "-", "--big-header-bytes", n]);
    let ok = big("1993")?;
    assert_eq!(ok["status_line"], "HTTP/1.1 200 OK", "{ok}");
    let refused = big("1994")?;
    assert_eq!(
        refused["status_line"], "HTTP/1.1 431 Request Header Fields Too Large",
        "{refused}"
    );
    assert!(
        refused["answer"]
            .as_str()
            .is_some_and(|a| a.contains("x-knit-overflow: header_bytes")),
        "{refused}"
    );
    assert_eq!(overflow_metric(&k, "web", "header_bytes")?, 1.0);
    // Past the daemon's own read limit the parser answers 431 itself.
    let huge = big("70000")?;
    assert_eq!(
        huge["status_line"], "HTTP/1.1 431 Request Header Fields Too Large",
        "{huge}"
    );
    let served = client(&k, &["--url", "http://web:8080/", "--count", "3"])?;
    assert_eq!(served["ok"], 3, "still serving: {served}");
    Ok(())
}

/// gRPC calls get the status a gRPC client understands: a message over
/// maxRequestBytes is RESOURCE_EXHAUSTED (not HTTP 413, which gRPC reads as
/// UNKNOWN), and the channel goes on serving.
#[test]
fn limits_answer_grpc_calls_in_grpc() -> Result<()> {
    let k = setup("limits-grpc", "rpc", "grpc", r#"{"maxRequestBytes": 1000}"#)?;
    let call = |kind: &str, bytes: &str, messages: &str| -> Result<Value> {
        let hosts = k.hosts.display().to_string();
        let tb = tb();
        k.run_json(
            "client",
            &[
                &tb,
                "grpc-client",
                "--hosts",
                &hosts,
                "--url",
                "http://rpc:8080",
                "--kind",
                kind,
                "--bytes",
                bytes,
                "--messages",
                messages,
                "--count",
                "3",
            ],
        )
    };
    let codes = |r: &Value| -> BTreeMap<String, u64> {
        serde_json::from_value(r["codes"].clone()).unwrap_or_default()
    };
    // A unary call of 100 bytes is well under (5 bytes of framing each).
    let r = call("unary", "100", "1")?;
    assert_eq!(codes(&r), counts(&[("Ok", 3)]), "{r}");
    let r = call("unary", "2000", "1")?;
    assert_eq!(codes(&r), counts(&[("ResourceExhausted", 3)]), "{r}");
    // A client stream is cut off once its messages add up past the limit.
    let r = call("client", "300", "10")?;
    assert_eq!(codes(&r), counts(&[("ResourceExhausted", 3)]), "{r}");
    assert_eq!(overflow_metric(&k, "rpc", "request_bytes")?, 6.0);
    Ok(())
}
