//! `cargo xtask bench admin`: what watching the daemon costs it. The
//! release daemon runs 20 HTTP services with 2 tasks each and light steady
//! traffic (4 clients, 10 requests/s each). Its CPU time (from /proc) is
//! measured over two windows of the same length: quiet (nobody watching),
//! then with the dashboard open in headless Chromium (it polls three API
//! paths every second) and Prometheus-style scrapes of `/metrics` every
//! second. The daemon's own counter of admin requests proves the page did
//! poll. Goal: the watched window costs less than 2% of one core more than
//! the quiet one (and the report gives both).
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use knit_tests::{client_service, http_task_definition};

use super::{
    cpu, knit,
    markdown::{Align, Table},
    procs::Guard,
    report::{self, Machine},
    summary::{self, Bar, Entry, Goal, Kind, Panel, Reference},
};

const SERVICES: usize = 20;
const WINDOW: Duration = Duration::from_secs(30);

fn get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// `knit_admin_requests_total{path="..."}` from a scrape.
fn admin_requests(metrics: &str, path: &str) -> u64 {
    let needle = format!("knit_admin_requests_total{{path=\"{path}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_secs(pid: u32) -> Result<f64> {
    Ok(cpu::ticks_to_secs(
        cpu::tree_ticks(pid)?.context("the daemon is gone")?,
    ))
}

pub fn run(quick: bool) -> Result<()> {
    let window = if quick {
        Duration::from_secs(5)
    } else {
        WINDOW
    };
    let bin = knit::binary()?;
    let testbin = knit::testbin(&bin)?;
    let tb = testbin.display().to_string();
    let mut k = knit::start("admin", "", &bin)?;
    let (ctd, csvc) = client_service("client");
    let mut docs = vec![
        ("web-td.json".to_string(), http_task_definition("web")),
        ("c-td.json".to_string(), ctd),
        ("c.json".to_string(), csvc),
    ];
    for i in 0..SERVICES {
        docs.push((
            format!("web{i}.json"),
            format!(
                r#"{{"serviceName": "web{i}", "taskDefinition": "web",
                    "serviceConnectConfiguration": {{"enabled": true,
                      "services": [{{"portName": "web", "discoveryName": "web{i}",
                                     "clientAliases": [{{"dnsName": "web{i}", "port": 8080}}]}}]}}}}"#
            ),
        ));
    }
    let refs: Vec<(&str, &str)> = docs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    k.apply(&refs)?;
    for i in 0..SERVICES {
        for j in 0..2 {
            k.run(
                &format!("web{i}"),
                &[
                    &tb,
                    "http",
                    "--id",
                    &format!("w{i}-{j}"),
                    "--port-env",
                    "KNIT_PORT_WEB",
                ],
            )?;
        }
    }
    for i in 0..SERVICES {
        k.wait_healthy(&format!("web{i}"), 2)?;
    }
    let hosts = k.hosts.display().to_string();
    let total = (2 * window + Duration::from_secs(20))
        .as_millis()
        .to_string();
    for i in 0..4 {
        k.run(
            "client",
            &[
                &tb,
                "http-client",
                "--url",
                &format!("http://web{i}:8080/"),
                "--hosts",
                &hosts,
                "--duration-ms",
                &total,
                "--interval-ms",
                "100",
            ],
        )?;
    }
    let status = k.json(&["status"])?;
    let admin = status["admin"].as_str().context("admin")?.to_string();
    let pid = k.daemon_pid().context("the daemon's pid")?;
    std::thread::sleep(Duration::from_secs(3));

    println!("quiet window: {} s", window.as_secs());
    let (c0, t0) = (cpu_secs(pid)?, Instant::now());
    std::thread::sleep(window);
    let quiet = (cpu_secs(pid)? - c0) / t0.elapsed().as_secs_f64();

    println!(
        "watched window: {} s (dashboard in Chromium, /metrics every second)",
        window.as_secs()
    );
    let before = get(&admin, "/metrics")?;
    let profile = tempfile::tempdir()?;
    let log = profile.path().join("chromium.log");
    let mut browser = knit_tests::chromium(&profile.path().join("p"));
    browser
        .arg("--remote-debugging-port=0")
        .arg(format!("http://{admin}/"))
        .stdin(Stdio::null());
    let guard = Guard::spawn("chromium", &mut browser, &log)?;
    // Let the page load before the window opens.
    std::thread::sleep(Duration::from_secs(3));
    let (c1, t1) = (cpu_secs(pid)?, Instant::now());
    let mut scrapes = 0;
    while t1.elapsed() < window {
        let next = t1 + Duration::from_secs(scrapes + 1);
        get(&admin, "/metrics")?;
        scrapes += 1;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let watched = (cpu_secs(pid)? - c1) / t1.elapsed().as_secs_f64();
    drop(guard);
    let after = get(&admin, "/metrics")?;
    let polls = admin_requests(&after, "/api/v1/stats") - admin_requests(&before, "/api/v1/stats");
    ensure!(
        polls as f64 >= window.as_secs_f64() * 0.8,
        "the dashboard polled {polls} times in {} s: was the page open?",
        window.as_secs()
    );
    let added = (watched - quiet) * 100.0;
    let met = if added < 2.0 { "met" } else { "**not met**" };
    let date = report::now_utc();
    let machine = Machine::probe();
    let mut table = Table::new(&[
        ("window", Align::Left),
        ("daemon CPU (% of one core)", Align::Right),
    ]);
    table
        .row(["quiet".to_string(), format!("{:.2} %", quiet * 100.0)])
        .row(["watched".to_string(), format!("{:.2} %", watched * 100.0)])
        .row([
            "added by watching".to_string(),
            format!("{added:.2} % (goal < 2 %: {met})"),
        ]);
    let section = format!(
        "## Admin cost\n\n\
         {date}, {m}; knit {v}{q}. `cargo xtask bench admin`: the release daemon with {SERVICES} HTTP services \
         (2 tasks each) and 4 clients at 10 requests/s each. Daemon CPU (utime + stime from /proc) over two \
         {w}-s windows: quiet, then watched: the dashboard open in headless Chromium (it polled \
         `/api/v1/stats` {polls} times) and `/metrics` scraped every second ({scrapes} scrapes).\n\n\
         {table}",
        m = machine.short(),
        v = knit::version(&k, &bin)?,
        q = if quick { " (--quick: 5-s windows)" } else { "" },
        w = window.as_secs(),
    );
    // Measured: the daemon's log is no longer of interest.
    k.show_log_on_drop(false);
    let pct = |x: f64| format!("{x:.2} %");
    let entry = Entry {
        date: date.clone(),
        quick,
        goals: vec![Goal::new(
            "the dashboard open and /metrics scraped every second add < 2 % of a core",
            if added < 0.0 {
                pct(added)
            } else {
                format!("+{}", pct(added))
            },
            if added < 2.0 { "met" } else { "not met" },
        )],
        panels: vec![Panel {
            title: "Daemon CPU, % of one core (lower is better)".into(),
            caption: format!(
                "{SERVICES} HTTP services, 4 clients at 10 req/s; {}-s windows, quiet then \
                 watched (dashboard in Chromium, a /metrics scrape per second). Goal: watching \
                 adds < 2 %.",
                window.as_secs()
            ),
            bars: vec![
                Bar::new("quiet", quiet * 100.0, pct(quiet * 100.0), Kind::Knit),
                Bar::new("watched", watched * 100.0, pct(watched * 100.0), Kind::Knit),
                Bar::new("added by watching", added, pct(added), Kind::Knit),
            ],
            reference: Some(Reference {
                value: 2.0,
                label: "goal for added: 2 %".into(),
            }),
        }],
    };
    summary::publish(quick, "admin", &machine, &date, &section, entry, || {
        Ok(format!(
            "- `admin`: the dashboard open and `/metrics` scraped every second add {added:.2} % of one core to the daemon (goal < 2 %, {met}; quiet {:.2} %, watched {:.2} %). Measured {date}. See [BENCHMARKS.md](BENCHMARKS.md#admin-cost).",
            quiet * 100.0,
            watched * 100.0
        ))
    })?;
    Ok(())
}
