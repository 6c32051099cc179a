//! The Grafana dashboard and the Prometheus rules that knit ships
//! (`packaging/grafana/`, `packaging/prometheus/`), proved against a real
//! Prometheus (Debian's `prometheus`, which `cargo xtask setup` installs)
//! scraping a knit daemon under traffic: every panel query and every
//! recording rule returns data, every rule file is valid (`promtool check
//! rules`), the rules' own unit tests pass (`promtool test rules`), and the
//! 5xx alert fires when an endpoint answers 500s.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use knit_tests::{
    Knit, client_service, http_service, http_task_definition, tcp_service, tcp_task_definition,
    testbin, wait_for,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn tool(name: &str) -> Result<PathBuf> {
    let p = PathBuf::from("/usr/bin").join(name);
    ensure!(
        p.exists(),
        "{} is missing: `cargo xtask setup` installs Debian's prometheus package",
        p.display()
    );
    Ok(p)
}

/// `s` with every byte but unreserved ones percent-encoded (a query
/// parameter's value).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prometheus, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scraping `target` every second, evaluating `rules` every second.
    fn start(target: &str, rules: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(dir.path().join("rules.yml"), rules)?;
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [rules.yml]\n\
                 scrape_configs:\n  - job_name: knit\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(tool("prometheus")?)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let p = Self {
            child,
            addr,
            _dir: dir,
        };
        wait_for("prometheus ready", Duration::from_secs(30), || {
            knit_tests::http_get(&format!("http://{}/-/ready", p.addr)).ok()
        })?;
        Ok(p)
    }

    fn api(&self, path: &str) -> Result<Value> {
        let body = knit_tests::http_get(&format!("http://{}{path}", self.addr))?;
        let v: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        if v["status"] != "success" {
            bail!("{path}: {v}");
        }
        Ok(v["data"].clone())
    }

    /// The instant vector of `query` now.
    fn query(&self, query: &str) -> Result<Vec<Value>> {
        Ok(
            self.api(&format!("/api/v1/query?query={}", encode(query)))?["result"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        )
    }
}

#[test]
fn the_shipped_rules_are_valid_and_their_unit_tests_pass() -> Result<()> {
    let dir = repo().join("packaging/prometheus");
    let out = Command::new(tool("promtool")?)
        .args(["check", "rules", "knit-rules.yml"])
        .current_dir(&dir)
        .output()?;
    ensure!(out.status.success(), "promtool check rules: {out:?}");
    let out = Command::new(tool("promtool")?)
        .args(["test", "rules", "knit-rules.test.yml"])
        .current_dir(&dir)
        .output()?;
    ensure!(out.status.success(), "promtool test rules: {out:?}");
    Ok(())
}

#[test]
fn every_panel_and_rule_has_data_and_the_5xx_alert_fires() -> Result<()> {
    let mut k = Knit::start("prom", "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &http_task_definition("web")),
        // Never ejected: the endpoint answering 500s keeps answering.
        (
            "web.json",
            &http_service("web", "web", 8080).replace(
                r#""clientAliases""#,
                r#""outlierDetection": {"consecutiveFailures": 1000}, "clientAliases""#,
            ),
        ),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
        ("db-td.json", &tcp_task_definition("db")),
        ("db.json", &tcp_service("db", "db", 6379)),
    ])?;
    let tb = testbin().display().to_string();
    k.run(
        "db",
        &[&tb, "echo", "--id", "b0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.run(
        "web",
        &[&tb, "http", "--id", "ok", "--port-env", "KNIT_PORT_WEB"],
    )?;
    k.run(
        "web",
        &[
            &tb,
            "http",
            "--id",
            "bad",
            "--port-env",
            "KNIT_PORT_WEB",
            "--always",
            "500",
        ],
    )?;
    k.wait_healthy("web", 2)?;
    k.wait_healthy("db", 1)?;
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
            "60000",
            "--interval-ms",
            "20",
        ],
        Stdio::piped(),
    )?;
    let _load = knit_tests::KillOnDrop(load);
    // TCP connections between services: the graph's TCP edges.
    let tcp = k.spawn_task(
        "client",
        &[
            &tb,
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts,
            "--duration-ms",
            "60000",
            "--interval-ms",
            "50",
        ],
        Stdio::piped(),
    )?;
    let _tcp = knit_tests::KillOnDrop(tcp);
    // The shipped rules, with every `for:` at 0 s: a test cannot wait the
    // minutes they ask for (their timing is `promtool test rules`' job).
    let rules = std::fs::read_to_string(repo().join("packaging/prometheus/knit-rules.yml"))?;
    let rules: String = rules
        .lines()
        .map(|l| match l.find("for: ") {
            Some(i) => format!("{}for: 0s\n", &l[..i]),
            None => format!("{l}\n"),
        })
        .collect();
    let prom = Prometheus::start(&k.admin_address()?, &rules)?;

    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join("packaging/grafana/knit-dashboard.json"),
    )?)?;
    let queries: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .context("panels")?
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect();
    ensure!(queries.len() >= 12, "{queries:?}");
    let records: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(String::from)
        .collect();
    ensure!(records.len() >= 6, "{records:?}");
    // Grafana's variables as a dashboard would fill them.
    let grafana = |e: &str| {
        e.replace("$__rate_interval", "30s")
            .replace("$namespace", ".*")
    };
    // Every panel query and recording rule returns data once a few scrapes
    // and evaluations are in.
    let empty = wait_for(
        "every panel query and recording rule to return data",
        Duration::from_secs(60),
        || {
            let empty: Vec<String> = queries
                .iter()
                .map(|(t, e)| (t.clone(), grafana(e)))
                .chain(records.iter().map(|r| (format!("rule {r}"), r.clone())))
                .filter(|(_, q)| prom.query(q).map_or(true, |r| r.is_empty()))
                .map(|(t, q)| format!("{t}: {q}"))
                .collect();
            empty.is_empty().then_some(empty)
        },
    );
    if let Err(e) = empty {
        let left: Vec<String> = queries
            .iter()
            .map(|(t, e)| (t.clone(), grafana(e)))
            .chain(records.iter().map(|r| (format!("rule {r}"), r.clone())))
            .filter(|(_, q)| prom.query(q).map_or(true, |r| r.is_empty()))
            .map(|(t, q)| format!("{t}: {q}"))
            .collect();
        bail!("{e}: without data: {left:#?}");
    }
    // The 5xx alert fires: one endpoint answers only 500s.
    let alert = wait_for(
        "KnitTarget5xxRatioHigh firing",
        Duration::from_secs(30),
        || {
            let alerts = prom.api("/api/v1/alerts").ok()?;
            alerts["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "KnitTarget5xxRatioHigh"
                        && a["labels"]["target_discovery_name"] == "web"
                        && a["state"] == "firing"
                })
                .cloned()
        },
    )?;
    eprintln!("firing: {alert}");
    // And nothing says the heartbeat is stale.
    let stale = prom.query("ALERTS{alertname=\"KnitDatapathHeartbeatStale\"}")?;
    ensure!(stale.is_empty(), "{stale:?}");
    Ok(())
}
