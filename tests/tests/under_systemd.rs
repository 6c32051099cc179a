//! knit under a real systemd, as a host runs it: installed by `cargo
//! xtask install --root` into a Debian 12 root that boots with systemd as
//! PID 1 (`cargo xtask vm-systemd`), and driven only through `systemctl`,
//! `journalctl` and the CLI.
//!
//! They start and stop the machine's `knit.service`, so they are ignored
//! unless asked for, and refuse to run outside that guest
//! (`KNIT_SYSTEMD_VM=1`, systemd as PID 1).
use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use knit_tests::{testbin, wait_for};
use serde_json::Value;

const KNIT: &str = "/usr/local/bin/knit";
const CONFIG: &str = "/etc/knit/knit.toml";
const DROP_IN: &str = "/etc/systemd/system/knit.service.d/test.conf";

fn guard() -> Result<()> {
    if std::env::var("KNIT_SYSTEMD_VM").as_deref() != Ok("1")
        || !Path::new("/run/systemd/system").is_dir()
    {
        bail!(
            "these tests start and stop this machine's knit.service: they run inside `cargo xtask vm-systemd`'s guest"
        );
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    Ok(out)
}

/// `systemctl ARGS`, which must succeed; its stdout.
fn systemctl(args: &[&str]) -> Result<String> {
    let out = run(Command::new("systemctl").args(args))?;
    ensure!(
        out.status.success(),
        "systemctl {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `systemctl show -p PROP --value UNIT`.
fn prop(unit: &str, p: &str) -> Result<String> {
    systemctl(&["show", "-p", p, "--value", unit])
}

fn is_active(unit: &str) -> String {
    run(Command::new("systemctl").args(["is-active", unit]))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The unit's journal since `since` (seconds since the epoch).
fn journal(unit: &str, since: u64) -> Result<String> {
    let out = run(Command::new("journalctl").args([
        "-u",
        unit,
        "--no-pager",
        "-o",
        "cat",
        "--since",
        &format!("@{since}"),
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The knit CLI, which must succeed; its stdout.
fn knit(args: &[&str]) -> Result<String> {
    let out = run(Command::new(KNIT).args(args))?;
    ensure!(
        out.status.success(),
        "knit {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn knit_json(args: &[&str]) -> Result<Value> {
    let mut a = args.to_vec();
    a.push("--json");
    Ok(serde_json::from_str(&knit(&a)?)?)
}

/// Wait for a line in the unit's journal since `since`.
fn wait_journal(unit: &str, since: u64, needle: &str) -> Result<String> {
    let last = std::cell::RefCell::new(String::new());
    wait_for(
        &format!("{needle:?} in {unit}'s journal"),
        Duration::from_secs(20),
        || {
            let j = journal(unit, since).ok()?;
            let found = j.contains(needle);
            last.replace(j.clone());
            found.then_some(j)
        },
    )
    .with_context(|| format!("the journal:\n{}", last.borrow()))
}

/// Apply ECS JSON documents (file name, content) with the CLI.
fn apply(docs: &[(&str, String)]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut args = vec!["apply".to_string()];
    for (name, json) in docs {
        let f = dir.path().join(name);
        std::fs::write(&f, json)?;
        args.push("-f".into());
        args.push(f.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    knit(&args)?;
    Ok(())
}

/// A task definition whose app is `knit-testbin ARGS` (what `knit run
/// --service` starts without a command, and so `knit-task@` units).
fn task_definition(family: &str, port: Option<(&str, &str)>, app: &[&str]) -> String {
    let mut command = vec![testbin().display().to_string()];
    command.extend(app.iter().map(|s| (*s).to_string()));
    let ports = match port {
        Some((name, "tcp")) => format!(r#", "portMappings": [{{"name": "{name}"}}]"#),
        Some((name, proto)) => {
            format!(r#", "portMappings": [{{"name": "{name}", "appProtocol": "{proto}"}}]"#)
        }
        None => String::new(),
    };
    format!(
        r#"{{"family": "{family}", "containerDefinitions": [{{"name": "app", "image": "unused",
            "command": {}{ports}}}]}}"#,
        serde_json::to_string(&command).unwrap_or_default()
    )
}

fn service(name: &str, port: Option<(&str, u16)>) -> String {
    match port {
        Some((port_name, port)) => format!(
            r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
                "serviceConnectConfiguration": {{"enabled": true,
                  "services": [{{"portName": "{port_name}", "discoveryName": "{name}",
                                 "clientAliases": [{{"dnsName": "{name}", "port": {port}}}]}}]}}}}"#
        ),
        None => format!(
            r#"{{"serviceName": "{name}", "taskDefinition": "{name}", "serviceConnectConfiguration": {{"enabled": true}}}}"#
        ),
    }
}

fn healthy(service: &str) -> usize {
    knit_json(&["endpoints", service])
        .ok()
        .and_then(|v| {
            v.as_array()
                .map(|a| a.iter().filter(|e| e["state"] == "healthy").count())
        })
        .unwrap_or(0)
}

/// A client task (`knit run --service client -- testbin ARGS`) whose JSON
/// report the caller reads.
fn client(args: &[&str]) -> Result<std::process::Child> {
    Ok(Command::new(KNIT)
        .args(["run", "--service", "client", "--"])
        .arg(testbin())
        .args(args)
        .args(["--hosts", "/etc/hosts"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Puts a file's content back when dropped (a test that fails midway
/// leaves the next one the shipped config).
struct Restore(&'static str, String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// The daemon as the tests want it: the shipped unit (plus `drop_in`, if
/// any), the shipped config, started afresh.
fn fresh_daemon(drop_in: Option<&str>) -> Result<()> {
    let _ = run(Command::new("systemctl").args(["stop", "knit-task@*"]));
    match drop_in {
        Some(text) => {
            std::fs::create_dir_all(Path::new(DROP_IN).parent().context("drop-in dir")?)?;
            std::fs::write(DROP_IN, text)?;
        }
        None => {
            let _ = std::fs::remove_file(DROP_IN);
        }
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["restart", "knit"])
        .map(drop)
        .context("restarting knit.service")
}

/// `systemctl start knit` returns once the daemon said READY=1 (Type=notify):
/// the CLI answers at once. A reload applies a new config; a config with
/// errors is refused with the reason in the journal, the daemon keeps
/// running on the old one; `systemctl stop` cleans up.
#[test]
#[ignore = "needs systemd as PID 1: `cargo xtask vm-systemd` runs it"]
fn start_reload_and_stop_through_systemctl() -> Result<()> {
    guard()?;
    let shipped = std::fs::read_to_string(CONFIG)?;
    let _restore = Restore(CONFIG, shipped.clone());
    let _ = run(Command::new("systemctl").args(["stop", "knit"]));
    let t0 = Instant::now();
    systemctl(&["start", "knit"])?;
    let started_in = t0.elapsed();
    ensure!(is_active("knit") == "active");
    // Ready means serving: the control socket answers now, not later.
    let status = knit_json(&["status"])?;
    ensure!(status["pid"].as_u64().is_some(), "{status}");
    ensure!(
        prop("knit", "MainPID")?.parse::<u64>().ok() == status["pid"].as_u64(),
        "systemd's main pid is not the daemon's: {status}"
    );
    let text = prop("knit", "StatusText")?;
    ensure!(!text.is_empty(), "no STATUS= from the daemon");
    eprintln!("started in {started_in:?}; status: {text}");

    // A good config: applied on reload.
    let since = now_s();
    std::fs::write(CONFIG, "[log]\nlevel = \"debug\"\n")?;
    systemctl(&["reload", "knit"])?;
    wait_journal("knit", since, "SIGHUP: config reloaded")?;
    ensure!(is_active("knit") == "active");

    // A bad one: refused whole, the reason in the journal, still serving.
    let since = now_s();
    std::fs::write(CONFIG, "[proxy]\ndrain_timeout_ms = \"soon\"\n")?;
    systemctl(&["reload", "knit"])?;
    let j = wait_journal(
        "knit",
        since,
        "the config has errors; keeping the running one",
    )?;
    ensure!(j.contains("drain_timeout_ms"), "no reason given:\n{j}");
    ensure!(is_active("knit") == "active");
    knit(&["status"])?;
    std::fs::write(CONFIG, &shipped)?;

    // Stop: the unit goes inactive and the hosts file loses knit's block.
    apply(&[
        (
            "db-td.json",
            task_definition("db", Some(("tcp", "tcp")), &["echo"]),
        ),
        ("db.json", service("db", Some(("tcp", 6379)))),
    ])?;
    let names_db = |hosts: &str| {
        hosts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("db"))
    };
    let hosts = std::fs::read_to_string("/etc/hosts")?;
    ensure!(names_db(&hosts), "no db in /etc/hosts:\n{hosts}");
    systemctl(&["stop", "knit"])?;
    ensure!(is_active("knit") == "inactive");
    let hosts = std::fs::read_to_string("/etc/hosts")?;
    ensure!(
        !names_db(&hosts) && !hosts.contains("knit"),
        "knit's block is still in /etc/hosts:\n{hosts}"
    );
    ensure!(
        hosts.contains("127.0.0.1 localhost"),
        "the rest of /etc/hosts is gone:\n{hosts}"
    );
    Ok(())
}

/// A daemon that stops answering the watchdog (SIGSTOP) is killed and
/// restarted by systemd; the new one adopts the pinned datapath, and a TCP
/// connection between two tasks (one run as a `knit-task@` unit) goes on
/// through it all.
#[test]
#[ignore = "needs systemd as PID 1: `cargo xtask vm-systemd` runs it"]
fn a_hung_daemon_is_restarted_by_the_watchdog_and_keeps_connections() -> Result<()> {
    guard()?;
    // The shipped 30 s watchdog, shortened for the test.
    fresh_daemon(Some("[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n"))?;
    apply(&[
        (
            "db-td.json",
            task_definition(
                "db",
                Some(("tcp", "tcp")),
                &["echo", "--port-env", "KNIT_PORT_TCP"],
            ),
        ),
        ("db.json", service("db", Some(("tcp", 6379)))),
        ("c-td.json", task_definition("client", None, &[])),
        ("c.json", service("client", None)),
    ])?;
    systemctl(&["start", "knit-task@db"])?;
    wait_for("db healthy", Duration::from_secs(30), || {
        (healthy("db") == 1).then_some(())
    })?;
    let hold = client(&["hold", "--target", "db:6379", "--duration-ms", "25000"])?;
    std::thread::sleep(Duration::from_secs(2));
    let since = now_s();
    let old: i32 = prop("knit", "MainPID")?.parse()?;
    let restarts: u64 = prop("knit", "NRestarts")?.parse()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGSTOP,
    )?;
    wait_for(
        "systemd to restart the hung daemon",
        Duration::from_secs(40),
        || {
            let pid: i32 = prop("knit", "MainPID").ok()?.parse().ok()?;
            let n: u64 = prop("knit", "NRestarts").ok()?.parse().ok()?;
            (pid != 0 && pid != old && n > restarts && is_active("knit") == "active").then_some(())
        },
    )?;
    let j = journal("knit", since)?;
    ensure!(j.to_lowercase().contains("watchdog"), "{j}");
    let status = knit_json(&["status"])?;
    ensure!(status["datapath"] == "adopted", "{status}");
    let out = knit_tests::wait_output(hold, "the held connection", Duration::from_secs(60))?;
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "hold's report: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(
        r["failed"] == 0 && r["ok"].as_u64().is_some_and(|n| n > 100),
        "the connection did not last: {r}"
    );
    systemctl(&["stop", "knit-task@db"])?;
    fresh_daemon(None)
}

/// Tasks as `knit-task@` units: `systemctl stop` drains the task (nothing
/// in flight is cut, the app gets SIGTERM with nothing in flight) and
/// another instance keeps serving.
#[test]
#[ignore = "needs systemd as PID 1: `cargo xtask vm-systemd` runs it"]
fn stopping_a_task_unit_drains_it() -> Result<()> {
    guard()?;
    fresh_daemon(None)?;
    let term = "/var/tmp/knit-web-term.json";
    let _ = std::fs::remove_file(term);
    // Each instance writes what it had in flight at SIGTERM (the first
    // one's file is the one looked at: the second stays up).
    apply(&[
        (
            "web-td.json",
            task_definition(
                "web",
                Some(("web", "http")),
                &["http", "--port-env", "KNIT_PORT_WEB", "--on-term", term],
            ),
        ),
        ("web.json", service("web", Some(("web", 8080)))),
        ("c-td.json", task_definition("client", None, &[])),
        ("c.json", service("client", None)),
    ])?;
    systemctl(&["start", "knit-task@web"])?;
    wait_for("web.1 healthy", Duration::from_secs(30), || {
        (healthy("web") == 1).then_some(())
    })?;
    systemctl(&["start", "knit-task@web.2"])?;
    wait_for("two web tasks healthy", Duration::from_secs(30), || {
        (healthy("web") == 2).then_some(())
    })?;
    let load = client(&[
        "http-client",
        "--url",
        "http://web:8080/slow/300",
        "--concurrency",
        "4",
        "--duration-ms",
        "8000",
        "--reconnect",
    ])?;
    std::thread::sleep(Duration::from_millis(2000));
    let t0 = Instant::now();
    systemctl(&["stop", "knit-task@web"])?;
    eprintln!("knit-task@web stopped in {:?}", t0.elapsed());
    ensure!(is_active("knit-task@web") == "inactive");
    ensure!(is_active("knit-task@web.2") == "active");
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(term).context("the app never got SIGTERM")?)?;
    ensure!(t["inflight"] == 0, "requests in flight at SIGTERM: {t}");
    ensure!(
        t["requests"].as_u64().is_some_and(|n| n > 0),
        "the stopped task served nothing: {t}"
    );
    let out = knit_tests::wait_output(load, "the load", Duration::from_secs(60))?;
    let r: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        r["failed"] == 0 && r["ok"].as_u64().is_some_and(|n| n > 20),
        "requests failed while a task unit stopped: {r}"
    );
    wait_for("one web task left", Duration::from_secs(10), || {
        (healthy("web") == 1).then_some(())
    })?;
    systemctl(&["stop", "knit-task@web.2"])?;
    Ok(())
}
