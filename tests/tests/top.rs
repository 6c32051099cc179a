//! `knit top`: live rates per service and the service graph, from real
//! traffic between real tasks.
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use knit_tests::{
    Knit, client_service, http_service, http_task_definition, tcp_service, tcp_task_definition,
    testbin, wait_for,
};
use serde_json::Value;

#[test]
fn knit_top_shows_live_rates_and_the_service_graph() -> Result<()> {
    let mut k = Knit::start("top", "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &http_task_definition("web")),
        ("web.json", &http_service("web", "web", 8080)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    let tb = testbin().display().to_string();
    k.run(
        "web",
        &[&tb, "http", "--id", "w0", "--port-env", "KNIT_PORT_WEB"],
    )?;
    k.wait_healthy("web", 1)?;
    let hosts = k.hosts.display().to_string();
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
            "4000",
        ],
        std::process::Stdio::piped(),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = k.ok(&["top", "--json", "--iterations", "3", "--interval-ms", "500"])?;
    let frames: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(frames.len() == 3, "{out}");
    for f in &frames {
        let web = f["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == "web"))
            .context("web")?;
        ensure!(
            web["requests_per_s"].as_f64().unwrap_or(0.0) > 10.0,
            "{web}"
        );
        ensure!(web["errors_5xx_pct"] == 0.0, "{web}");
        // Percentiles from the response time buckets of the interval.
        let (p50, p99) = (
            web["p50_latency_ms"].as_f64().context("p50")?,
            web["p99_latency_ms"].as_f64().context("p99")?,
        );
        ensure!(0.0 < p50 && p50 <= p99 && p99 < 1000.0, "{web}");
        ensure!(web["healthy"] == 1, "{web}");
        let edge = f["edges"]
            .as_array()
            .and_then(|e| {
                e.iter()
                    .find(|e| e["source"] == "client" && e["target"] == "web")
            })
            .context("the client -> web edge")?;
        ensure!(
            edge["requests_per_s"].as_f64().unwrap_or(0.0) > 10.0,
            "{edge}"
        );
    }
    // Into a pipe, without --iterations: one frame, then it exits.
    let text = k.ok(&["top", "--interval-ms", "300"])?;
    ensure!(
        text.contains("REQ/S")
            && text.contains("P99 MS")
            && text.contains("web:8080")
            && text.contains("service graph"),
        "{text}"
    );
    ensure!(text.matches("knit top:").count() == 1, "{text}");
    // --once says the same explicitly.
    let once = k.ok(&["top", "--once", "--json", "--interval-ms", "300"])?;
    ensure!(once.lines().count() == 1, "{once}");
    let r = knit_tests::json_output(load)?;
    ensure!(r["failed"] == 0, "{r}");
    // The graph is in /metrics too.
    let status = k.json(&["status"])?;
    let admin = status["admin"].as_str().context("admin")?.to_string();
    let metrics = http_get(&admin, "/metrics")?;
    ensure!(
        metrics.contains("knit_service_graph_request_count_total{source_service=\"client\",target_service=\"web\"}"),
        "{metrics}"
    );
    Ok(())
}

/// TCP connections between services are edges of the graph too: the
/// kernel counts them per connecting task (its cgroup), and the daemon
/// names the task's service. Two client services dial a TCP service; each
/// edge has exactly their connections, also after their tasks ended.
#[test]
fn tcp_connections_between_services_are_edges_of_the_graph() -> Result<()> {
    let mut k = Knit::start("top-l4", "")?;
    let (ctd, csvc) = client_service("client");
    let (btd, bsvc) = client_service("batch");
    k.apply(&[
        ("db-td.json", &tcp_task_definition("db")),
        ("db.json", &tcp_service("db", "db", 6379)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
        ("b-td.json", &btd),
        ("b.json", &bsvc),
    ])?;
    let tb = testbin().display().to_string();
    k.run(
        "db",
        &[&tb, "echo", "--id", "b0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.wait_healthy("db", 1)?;
    let hosts = k.hosts.display().to_string();
    let load = k.spawn_task(
        "client",
        &[
            &tb,
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts,
            "--count",
            "300",
            "--interval-ms",
            "10",
        ],
        std::process::Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let out = k.ok(&["top", "--json", "--iterations", "2", "--interval-ms", "500"])?;
    for line in out.lines() {
        let f: Value = serde_json::from_str(line)?;
        let edge = f["edges"]
            .as_array()
            .and_then(|e| {
                e.iter()
                    .find(|e| e["source"] == "client" && e["target"] == "db")
            })
            .with_context(|| format!("no client -> db edge: {f}"))?;
        ensure!(
            edge["connections_per_s"].as_f64().unwrap_or(0.0) > 5.0
                && edge["requests_per_s"] == 0.0,
            "{edge}"
        );
    }
    let text = k.ok(&["top", "--interval-ms", "300"])?;
    ensure!(text.contains("TCP CONN/S") && text.contains("db"), "{text}");
    let r = knit_tests::json_output(load)?;
    ensure!(r["ok"] == 300 && r["failed"] == 0, "{r}");
    let b = k.run_json(
        "batch",
        &[
            &tb, "client", "--target", "db:6379", "--hosts", &hosts, "--count", "50",
        ],
    )?;
    ensure!(b["ok"] == 50, "{b}");
    // Both tasks ended (and are deregistered once the daemon sees it):
    // what they counted stays, exactly.
    let admin = k.admin_address()?;
    let line = |m: &str, source: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "knit_service_graph_tcp_connection_count_total{{source_service=\"{source}\",target_service=\"db\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    wait_for("both client tasks gone", Duration::from_secs(10), || {
        (k.json(&["status"]).ok()?["tasks"] == 1).then_some(())
    })?;
    let metrics = http_get(&admin, "/metrics")?;
    ensure!(
        line(&metrics, "client") == Some(300) && line(&metrics, "batch") == Some(50),
        "{metrics}"
    );
    ensure!(
        metrics.contains("knit_service_graph_tcp_processed_bytes_total{source_service=\"client\",target_service=\"db\"}"),
        "{metrics}"
    );
    // The stats API (the dashboard's) says the same.
    let stats: Value = serde_json::from_str(
        http_get(&admin, "/api/v1/stats")?
            .split("\r\n\r\n")
            .nth(1)
            .context("a body")?,
    )?;
    let edge = stats["edges"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["source"] == "batch" && e["target"] == "db")
        })
        .context("batch -> db")?;
    ensure!(
        edge["connections"] == 50 && edge["bytes"].as_u64().is_some_and(|b| b > 0),
        "{edge}"
    );
    Ok(())
}

/// A plain HTTP/1.0 GET to the admin listener (loopback).
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
