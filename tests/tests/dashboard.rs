//! The live dashboard at `/` in headless Chromium: with real traffic
//! between real tasks, the rendered page shows the services, the service
//! graph's edge and request rates, and its counters move from one load to
//! the next. A screenshot is kept at `target/tmp/dashboard.png`.
use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use knit_tests::{Knit, client_service, http_service, http_task_definition, testbin};

/// Run headless Chromium on `url` with `extra` flags; its stdout.
fn chromium(url: &str, extra: &[&str]) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let out = knit_tests::chromium(profile.path())
        .arg("--virtual-time-budget=3500")
        .args(extra)
        .arg(url)
        .output()
        .context("running chromium (Debian package chromium; `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The text of the element with `id` in a dumped DOM.
fn by_id(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(rest[start..start + end].to_string())
}

/// The requests/s cell of `service`'s row.
fn service_rps(dom: &str, service: &str) -> Option<f64> {
    service_field(dom, service, "rps")
}

/// The cell `field` (rps, p50, p99) of `service`'s row, as a number.
fn service_field(dom: &str, service: &str, field: &str) -> Option<f64> {
    let at = dom.find(&format!("data-service=\"{service}\""))?;
    let rest = &dom[at..];
    let tag = format!("data-field=\"{field}\">");
    let cell = rest.find(&tag)? + tag.len();
    let end = rest[cell..].find('<')?;
    rest[cell..cell + end].parse().ok()
}

#[test]
fn the_dashboard_shows_live_figures_in_chromium() -> Result<()> {
    let mut k = Knit::start("dash", "")?;
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("web-td.json", &http_task_definition("web")),
        ("web.json", &http_service("web", "web", 8080)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    let tb = testbin().display().to_string();
    for id in ["w0", "w1"] {
        k.run(
            "web",
            &[&tb, "http", "--id", id, "--port-env", "KNIT_PORT_WEB"],
        )?;
    }
    k.wait_healthy("web", 2)?;
    let hosts = k.hosts.display().to_string();
    // Steady traffic (about 200 requests/s) while the browser looks.
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
            "30000",
            "--concurrency",
            "2",
            "--interval-ms",
            "10",
        ],
        std::process::Stdio::piped(),
    )?;
    let admin = k.json(&["status"])?["admin"]
        .as_str()
        .context("admin address")?
        .to_string();
    let url = format!("http://{admin}/");
    std::thread::sleep(Duration::from_millis(500));

    // The page polls every second of the browser's virtual time, which
    // runs much faster than real time: two polls can be milliseconds apart
    // in the daemon's time and see no request in between. The rate is
    // over the oldest poll of the last 5 s; a look that saw none is taken
    // again (at most three looks).
    let mut first = String::new();
    for _ in 0..3 {
        first = chromium(&url, &["--dump-dom"])?;
        if service_rps(&first, "web").is_some_and(|r| r > 10.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    ensure!(
        first.contains("data-service=\"web\""),
        "no web row:\n{first}"
    );
    ensure!(
        first.contains("data-edge=\"client&gt;web\""),
        "no client -> web edge in the graph:\n{first}"
    );
    let rps = service_rps(&first, "web").context("web's req/s")?;
    ensure!(rps > 10.0, "web's req/s is {rps}");
    let p99 = service_field(&first, "web", "p99").context("web's p99")?;
    ensure!(p99 > 0.0 && p99 < 1000.0, "web's p99 is {p99} ms");
    let total1: u64 = by_id(&first, "total-requests")
        .context("total requests")?
        .parse()?;
    ensure!(total1 > 0);
    std::thread::sleep(Duration::from_millis(1000));
    let second = chromium(&url, &["--dump-dom"])?;
    let total2: u64 = by_id(&second, "total-requests")
        .context("total requests")?
        .parse()?;
    ensure!(
        total2 > total1,
        "the counters did not move: {total1} then {total2}"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,860",
        ],
    )?;
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    ensure!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    eprintln!("dashboard screenshot: {} ({size} bytes)", shot.display());
    let mut load = load;
    let _ = load.kill();
    Ok(())
}

/// The last 15 minutes: a burst of requests that has ended is still in the
/// dashboard's time series (its peak, then quiet points), per namespace.
#[test]
fn the_dashboard_keeps_a_spike_after_it_ends() -> Result<()> {
    let mut k = Knit::start("dash-history", "")?;
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
    // The spike: 600 requests as fast as 4 connections go, then nothing.
    let r = k.run_json(
        "client",
        &[
            &tb,
            "http-client",
            "--url",
            "http://web:8080/",
            "--hosts",
            &hosts,
            "--count",
            "600",
            "--concurrency",
            "4",
        ],
    )?;
    ensure!(r["ok"] == 600, "{r}");
    let admin = k.admin_address()?;
    // A point every 5 s: wait for the spike's and a quiet one after it.
    let last = std::cell::RefCell::new(String::new());
    let history = knit_tests::wait_for(
        "the spike and a quiet point in /api/v1/history",
        Duration::from_secs(30),
        || {
            let body = knit_tests::http_get(&format!("http://{admin}/api/v1/history"))
                .unwrap_or_else(|e| format!("{e:#}"));
            last.replace(body.clone());
            let h: serde_json::Value = serde_json::from_str(&body).ok()?;
            let web = h["series"]
                .as_array()?
                .iter()
                .find(|s| s["service"] == "web")?
                .clone();
            let rps: Vec<f64> = web["points"]
                .as_array()?
                .iter()
                .filter_map(|p| p[1].as_f64())
                .collect();
            let peak = rps.iter().position(|r| *r > 10.0)?;
            rps[peak + 1..].contains(&0.0).then_some(web)
        },
    )
    .with_context(|| format!("the last answer: {}", last.borrow()))?;
    eprintln!("web's history: {history}");
    let url = format!("http://{admin}/");
    let dom = chromium(&url, &["--dump-dom"])?;
    let at = dom
        .find("data-history=\"web\"")
        .with_context(|| format!("no web row in the history:\n{dom}"))?;
    let attr = |name: &str| -> Option<f64> {
        let rest = &dom[at..];
        let start = rest.find(&format!("{name}=\""))? + name.len() + 2;
        let end = rest[start..].find('"')?;
        rest[start..start + end].parse().ok()
    };
    let peak = attr("data-peak-rps").context("data-peak-rps")?;
    ensure!(
        peak > 10.0,
        "the spike is not in the dashboard: peak {peak} req/s"
    );
    ensure!(attr("data-points").is_some_and(|n| n >= 2.0), "{dom}");
    ensure!(
        dom.contains("<option value=\"default\">default</option>"),
        "no namespace selector"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-history.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1200",
        ],
    )?;
    eprintln!("history screenshot: {}", shot.display());
    Ok(())
}
