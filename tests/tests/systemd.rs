//! The daemon as a systemd service: the notify protocol (READY=1, STATUS=,
//! WATCHDOG=1, STOPPING=1) on a NOTIFY_SOCKET the test listens on, SIGHUP
//! reloads of the config, and the log level changed while it runs.
use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, wait_for};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Datagrams received within `within`.
fn receive(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    out
}

#[test]
fn the_daemon_speaks_systemds_notify_protocol() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let notify = path.display().to_string();
    // WatchdogSec=0.4s: a ping at least every 200 ms.
    let mut k = Knit::start_env(
        "notify",
        "",
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
    )?;
    let got = receive(&sock, Duration::from_millis(1500));
    let all = got.join("\n");
    ensure!(all.contains("READY=1"), "no READY=1 in {got:?}");
    ensure!(all.contains("STATUS=serving 0 services"), "{got:?}");
    let pings = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    ensure!(pings >= 4, "{pings} watchdog pings in 1.5 s: {got:?}");
    k.signal(Signal::SIGHUP)?;
    let got = receive(&sock, Duration::from_millis(500)).join("\n");
    ensure!(
        got.contains("RELOADING=1") && got.contains("READY=1"),
        "{got}"
    );
    let status = k.stop_daemon()?;
    ensure!(status.success(), "{status}");
    let got = receive(&sock, Duration::from_millis(200)).join("\n");
    ensure!(got.contains("STOPPING=1"), "{got}");
    Ok(())
}

fn config(k: &Knit) -> Result<Value> {
    Ok(k.json(&["status"])?["config"].clone())
}

#[test]
fn sighup_reloads_what_can_change_and_refuses_a_bad_config() -> Result<()> {
    let k = Knit::start("reload", "")?;
    let c = config(&k)?;
    ensure!(c["outlier"]["consecutive_failures"] == 5, "{c}");
    ensure!(c["proxy"]["drain_timeout_ms"] == 20000, "{c}");
    let original = std::fs::read_to_string(&k.config)?;
    std::fs::write(
        &k.config,
        format!(
            "{original}\n[outlier]\nconsecutive_failures = 2\ninterval_ms = 50\n\n[proxy]\ndrain_timeout_ms = 1234\n\n[log]\nlevel = \"debug\"\n"
        ),
    )?;
    k.signal(Signal::SIGHUP)?;
    wait_for("the reload", Duration::from_secs(5), || {
        let c = config(&k).ok()?;
        (c["proxy"]["drain_timeout_ms"] == 1234).then_some(c)
    })
    .and_then(|c| {
        ensure!(c["outlier"]["consecutive_failures"] == 2, "{c}");
        // The monitor's interval takes effect at the next start.
        ensure!(c["outlier"]["interval_ms"] == 100, "{c}");
        ensure!(c["log"]["level"] == "debug", "{c}");
        Ok(())
    })?;
    let log = k.daemon_log();
    ensure!(log.contains("SIGHUP: config reloaded"), "{log}");
    ensure!(log.contains("outlier.interval_ms"), "{log}");
    // A config with an error is refused whole; the daemon keeps running.
    std::fs::write(&k.config, format!("{original}\nno_such_key = 1\n"))?;
    k.signal(Signal::SIGHUP)?;
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        k.daemon_log()
            .contains("the config has errors; keeping the running one")
            .then_some(())
    })?;
    let c = config(&k)?;
    ensure!(c["proxy"]["drain_timeout_ms"] == 1234, "{c}");
    Ok(())
}

#[test]
fn the_log_level_changes_at_run_time() -> Result<()> {
    let k = Knit::start("loglevel", "")?;
    k.json(&["status"])?;
    ensure!(
        !k.daemon_log().contains("control request"),
        "a debug line at level info"
    );
    let out = k.ok(&["log-level", "knit=debug,info"])?;
    ensure!(out.contains("knit=debug,info"), "{out}");
    ensure!(
        k.daemon_log().contains("log level set"),
        "{}",
        k.daemon_log()
    );
    let bad = k.cli(&["log-level", "knit=verbose=9"])?;
    ensure!(bad.status.code() == Some(2), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(err.contains("not a filter"), "{err}");
    // Debug lines now appear.
    k.json(&["status"]).context("status")?;
    let log = k.daemon_log();
    ensure!(
        log.contains("control request") && log.contains("status"),
        "{log}"
    );
    Ok(())
}
