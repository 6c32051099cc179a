//! Access logs (`accessLogConfiguration`): one line per request for the
//! services that ask, JSON or TEXT, the query string only when enabled;
//! every line matches what was sent.
use std::time::Duration;

use anyhow::{Result, ensure};
use knit_tests::{Knit, http_service, http_task_definition, testbin, wait_for};
use serde_json::Value;

fn client(name: &str, access_log: &str) -> (String, String) {
    (
        format!(r#"{{"family": "{name}", "containerDefinitions": [{{"name": "c"}}]}}"#),
        format!(
            r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
                "serviceConnectConfiguration": {{"enabled": true{access_log}}}}}"#
        ),
    )
}

/// The daemon's JSON access log lines from `source`.
fn json_lines(k: &Knit, source: &str) -> Vec<Value> {
    k.daemon_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["source_service"] == source)
        .collect()
}

#[test]
fn access_logs_record_every_request_of_the_services_that_ask() -> Result<()> {
    let mut k = Knit::start("access", "")?;
    let (jtd, jsvc) = client(
        "jclient",
        r#", "accessLogConfiguration": {"format": "JSON"}"#,
    );
    let (ttd, tsvc) = client(
        "tclient",
        r#", "accessLogConfiguration": {"format": "TEXT", "includeQueryParameters": "ENABLED"}"#,
    );
    let (qtd, qsvc) = client("quiet", "");
    k.apply(&[
        ("web-td.json", &http_task_definition("web")),
        ("web.json", &http_service("web", "web", 8080)),
        ("bad-td.json", &http_task_definition("bad")),
        ("bad.json", &http_service("bad", "bad", 8081)),
        ("j-td.json", &jtd),
        ("j.json", &jsvc),
        ("t-td.json", &ttd),
        ("t.json", &tsvc),
        ("q-td.json", &qtd),
        ("q.json", &qsvc),
    ])?;
    let tb = testbin().display().to_string();
    k.run(
        "web",
        &[&tb, "http", "--id", "w0", "--port-env", "KNIT_PORT_WEB"],
    )?;
    k.run(
        "bad",
        &[
            &tb,
            "http",
            "--id",
            "b0",
            "--port-env",
            "KNIT_PORT_WEB",
            "--always",
            "500",
        ],
    )?;
    k.wait_healthy("web", 1)?;
    k.wait_healthy("bad", 1)?;
    let hosts = k.hosts.display().to_string();
    let call = |client: &str, url: &str, n: &str| {
        k.run_json(
            client,
            &[
                &tb,
                "http-client",
                "--url",
                url,
                "--hosts",
                &hosts,
                "--count",
                n,
            ],
        )
    };
    let (n, m) = (20, 5);
    let r = call(
        "jclient",
        "http://web:8080/hello?token=secret",
        &n.to_string(),
    )?;
    ensure!(r["ok"] == n, "{r}");
    let r = call("jclient", "http://bad:8081/oops", &m.to_string())?;
    ensure!(r["statuses"]["500"] == m, "{r}");
    call("tclient", "http://web:8080/t?x=1", "3")?;
    let r = call("quiet", "http://web:8080/q", "4")?;
    ensure!(r["ok"] == 4, "{r}");

    let lines = wait_for("every JSON line", Duration::from_secs(5), || {
        let l = json_lines(&k, "jclient");
        (l.len() == n + m).then_some(l)
    })?;
    let ok: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target_service"] == "web")
        .collect();
    let failed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target_service"] == "bad")
        .collect();
    ensure!(ok.len() == n && failed.len() == m, "{lines:?}");
    for l in &ok {
        ensure!(l["response_code"] == 200 && l["method"] == "GET", "{l}");
        // The query string (a token here) stays out of the log.
        ensure!(l["path"] == "/hello", "{l}");
        ensure!(l["direction"] == "egress" && l["retries"] == 0, "{l}");
        ensure!(l["bytes_sent"].as_u64().unwrap_or(0) > 0, "{l}");
        ensure!(
            l["duration_ms"].as_f64() >= l["upstream_ms"].as_f64(),
            "{l}"
        );
        ensure!(
            l["upstream_host"]
                .as_str()
                .is_some_and(|h| h.starts_with("127.0.0.1:")),
            "{l}"
        );
    }
    ensure!(
        failed
            .iter()
            .all(|l| l["response_code"] == 500 && l["path"] == "/oops")
    );
    let log = k.daemon_log();
    let text: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"tclient\" -> \"web\""))
        .collect();
    ensure!(text.len() == 3, "{text:?}");
    ensure!(
        text.iter()
            .all(|l| l.contains("\"GET /t?x=1 HTTP/1.1\" 200")),
        "{text:?}"
    );
    ensure!(
        !log.contains("\"quiet\" ->"),
        "a service without accessLogConfiguration was logged"
    );
    ensure!(json_lines(&k, "quiet").is_empty());
    Ok(())
}
