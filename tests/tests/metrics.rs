//! Metrics under known traffic: every figure equals what was sent, per
//! service and per target, for HTTP, gRPC and TCP.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use knit_tests::{Knit, client_service, tcp_service, tcp_task_definition, testbin};

/// Scrape `/metrics` (from outside knit's cgroup, like Prometheus would).
fn scrape(k: &Knit) -> Result<BTreeMap<String, f64>> {
    Ok(k.metrics()?
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// The value of the series named `name` whose labels contain all of `labels`.
fn value(m: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}{{")) && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn metrics_equal_the_traffic_sent() -> Result<()> {
    let mut k = Knit::start("metrics", "")?;
    let tb = testbin().display().to_string();
    let (ctd, csvc) = client_service("client");
    let web_td = r#"{"family": "web", "containerDefinitions": [{"name": "w", "portMappings": [{"name": "web", "appProtocol": "http"}]}]}"#;
    let web = r#"{"serviceName": "web", "taskDefinition": "web", "serviceConnectConfiguration": {"enabled": true,
        "services": [{"portName": "web", "discoveryName": "web", "clientAliases": [{"dnsName": "web", "port": 8080}]}]}}"#;
    let grpc_td = r#"{"family": "rpc", "containerDefinitions": [{"name": "g", "portMappings": [{"name": "rpc", "appProtocol": "grpc"}]}]}"#;
    let grpc = r#"{"serviceName": "rpc", "taskDefinition": "rpc", "serviceConnectConfiguration": {"enabled": true,
        "services": [{"portName": "rpc", "discoveryName": "rpc", "clientAliases": [{"dnsName": "rpc", "port": 9090}]}]}}"#;
    k.apply(&[
        ("c.json", &ctd),
        ("cs.json", &csvc),
        ("w.json", web_td),
        ("ws.json", web),
        ("g.json", grpc_td),
        ("gs.json", grpc),
        ("db.json", &tcp_task_definition("db")),
        ("dbs.json", &tcp_service("db", "db", 6379)),
    ])?;
    for i in 0..3 {
        k.run(
            "web",
            &[
                &tb,
                "http",
                "--id",
                &format!("w{i}"),
                "--port-env",
                "KNIT_PORT_WEB",
            ],
        )?;
    }
    k.run(
        "rpc",
        &[
            &tb,
            "grpc-server",
            "--id",
            "g0",
            "--port-env",
            "KNIT_PORT_RPC",
        ],
    )?;
    k.run(
        "db",
        &[&tb, "echo", "--id", "d0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    for (s, n) in [("web", 3), ("rpc", 1), ("db", 1)] {
        k.wait_healthy(s, n)?;
    }
    let hosts = k.hosts.display().to_string();
    let http = |path: &str, count: &str| -> Result<serde_json::Value> {
        k.run_json(
            "client",
            &[
                &tb,
                "http-client",
                "--hosts",
                &hosts,
                "--url",
                &format!("http://web:8080{path}"),
                "--count",
                count,
            ],
        )
    };
    assert_eq!(http("/", "100")?["ok"], 100);
    assert_eq!(http("/status/404", "20")?["statuses"]["404"], 20);
    assert_eq!(http("/status/500", "10")?["statuses"]["500"], 10);
    let g = k.run_json(
        "client",
        &[
            &tb,
            "grpc-client",
            "--hosts",
            &hosts,
            "--url",
            "http://rpc:9090",
            "--kind",
            "unary",
            "--count",
            "20",
            "--bytes",
            "100",
        ],
    )?;
    assert_eq!(g["ok"], 20, "{g}");
    let t = k.run_json(
        "client",
        &[
            &tb, "client", "--hosts", &hosts, "--target", "db:6379", "--count", "30",
        ],
    )?;
    assert_eq!(t["ok"], 30, "{t}");
    // Connections close asynchronously; their bytes are added on close.
    knit_tests::wait_for(
        "TCP connections to close",
        std::time::Duration::from_secs(5),
        || {
            let m = scrape(&k).ok()?;
            (value(
                &m,
                "knit_active_connection_count",
                &["discovery_name=\"db\""],
            ) == 0.0)
                .then_some(())
        },
    )?;

    let m = scrape(&k)?;
    let web_d = ["discovery_name=\"web\""];
    let web_t = ["target_discovery_name=\"web\""];
    assert_eq!(value(&m, "knit_request_count_total", &web_d), 130.0);
    assert_eq!(
        value(&m, "knit_httpcode_target_2xx_count_total", &web_t),
        100.0
    );
    assert_eq!(
        value(&m, "knit_httpcode_target_4xx_count_total", &web_t),
        20.0
    );
    assert_eq!(
        value(&m, "knit_httpcode_target_5xx_count_total", &web_t),
        10.0
    );
    assert_eq!(
        value(&m, "knit_httpcode_target_3xx_count_total", &web_t),
        0.0
    );
    assert_eq!(
        value(&m, "knit_request_count_per_target_total", &web_t),
        130.0
    );
    let tasks: Vec<String> = k
        .json(&["endpoints", "web"])?
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|e| e["task"].as_str().map(String::from))
        .collect();
    assert_eq!(tasks.len(), 3);
    for task in &tasks {
        let per = value(
            &m,
            "knit_request_count_per_target_total",
            &["target_discovery_name=\"web\"", &format!("task=\"{task}\"")],
        );
        assert!(
            (40.0..=47.0).contains(&per),
            "target {task} got {per} of 130"
        );
    }
    assert_eq!(
        value(&m, "knit_target_response_time_milliseconds_count", &web_t),
        130.0
    );
    // Each response body is the backend's id ("w0".."w2": 2 bytes).
    assert_eq!(
        value(&m, "knit_target_processed_bytes_total", &web_t),
        260.0
    );
    assert_eq!(
        value(&m, "knit_request_count_total", &["discovery_name=\"rpc\""]),
        20.0
    );
    assert_eq!(
        value(
            &m,
            "knit_grpc_request_count_total",
            &["discovery_name=\"rpc\""]
        ),
        20.0
    );
    assert_eq!(
        value(
            &m,
            "knit_httpcode_target_2xx_count_total",
            &["target_discovery_name=\"rpc\""]
        ),
        20.0
    );
    assert_eq!(value(&m, "knit_grpc_request_count_total", &web_d), 0.0);
    let db = ["discovery_name=\"db\""];
    assert_eq!(value(&m, "knit_new_connection_count_total", &db), 30.0);
    assert_eq!(value(&m, "knit_failed_connection_count_total", &db), 0.0);
    // "ping\n" out, "d0\n" and "ping\n" back, per connection.
    assert_eq!(value(&m, "knit_processed_bytes_total", &db), 30.0 * 13.0);
    assert_eq!(
        value(
            &m,
            "knit_endpoint_healthy",
            &["target_discovery_name=\"web\""]
        ),
        3.0
    );
    // The admin API is read-only.
    let admin = k.json(&["status"])?["admin"]
        .as_str()
        .context("admin")?
        .to_string();
    let post = std::process::Command::new(testbin())
        .args([
            "http-client",
            "--url",
            &format!("http://{admin}/api/v1/services"),
            "--method",
            "POST",
            "--count",
            "1",
        ])
        .output()?;
    let p: serde_json::Value = serde_json::from_slice(&post.stdout)?;
    assert_eq!(p["statuses"]["405"], 1, "{p}");

    // Per client service (ECS's TargetDiscoveryName, ServiceName): a
    // second client's requests are its own series; the totals hold both.
    let (otd, osvc) = client_service("other");
    k.apply(&[("o.json", &otd), ("os.json", &osvc)])?;
    let o = k.run_json(
        "other",
        &[
            &tb,
            "http-client",
            "--hosts",
            &hosts,
            "--url",
            "http://web:8080/",
            "--count",
            "7",
        ],
    )?;
    assert_eq!(o["ok"], 7, "{o}");
    let m = scrape(&k)?;
    let by = |client: &str| format!("client_service=\"{client}\"");
    let (client, other) = (by("client"), by("other"));
    for (name, c, want) in [
        ("knit_client_request_count_total", &client, 130.0),
        ("knit_client_request_count_total", &other, 7.0),
        (
            "knit_client_httpcode_target_2xx_count_total",
            &client,
            100.0,
        ),
        ("knit_client_httpcode_target_2xx_count_total", &other, 7.0),
        ("knit_client_httpcode_target_4xx_count_total", &client, 20.0),
        ("knit_client_httpcode_target_5xx_count_total", &client, 10.0),
        (
            "knit_client_target_response_time_milliseconds_count",
            &other,
            7.0,
        ),
    ] {
        assert_eq!(value(&m, name, &[web_t[0], c]), want, "{name} {c}");
    }
    assert_eq!(
        value(&m, "knit_httpcode_target_2xx_count_total", &web_t),
        107.0
    );
    Ok(())
}
