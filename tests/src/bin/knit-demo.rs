//! The README's first command (`cargo xtask demo` builds knit and runs
//! this). On the embedded registry it starts a daemon, a TCP service `db`
//! of three real echo tasks and a client task calling `db:6379` by name,
//! then shows what happened. It manages the real /etc/hosts block, and
//! leaves nothing behind. Each echo task says who it is with the task id
//! `knit run` gave it, so the client's histogram and `knit endpoints` name
//! the same tasks.
use std::{collections::BTreeMap, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use knit_tests::{Knit, testbin};
use serde_json::Value;

/// A step banner, so the demo's progress shows.
fn step(what: &str) {
    eprintln!("\n==> {what}");
}

const DB_TASK: &str = r#"{
  "family": "db",
  "containerDefinitions": [{
    "name": "db", "image": "knit-testbin", "essential": true,
    "portMappings": [{"name": "redis", "protocol": "tcp"}]
  }]
}"#;

const DB_SERVICE: &str = r#"{
  "serviceName": "db",
  "taskDefinition": "db",
  "desiredCount": 3,
  "serviceConnectConfiguration": {
    "enabled": true,
    "services": [{
      "portName": "redis",
      "discoveryName": "db",
      "clientAliases": [{"dnsName": "db", "port": 6379}]
    }]
  }
}"#;

const APP_TASK: &str =
    r#"{"family": "app", "containerDefinitions": [{"name": "app", "image": "knit-testbin"}]}"#;
const APP_SERVICE: &str = r#"{"serviceName": "app", "taskDefinition": "app", "serviceConnectConfiguration": {"enabled": true}}"#;

fn main() -> Result<()> {
    let tb = testbin().display().to_string();
    step("starting a knit daemon (embedded registry; hosts block in /etc/hosts)");
    let mut k = Knit::start_with("demo", "", Some("/etc/hosts".into()))?;
    // Should a step fail, the daemon's log tail says why.
    k.show_log_on_drop(true);
    println!(
        "daemon pid {}, socket {}",
        k.daemon_pid().unwrap_or(0),
        k.socket.display()
    );

    step("knit apply -f db-task.json db-service.json app-task.json app-service.json");
    print!(
        "{}",
        k.apply(&[
            ("db-task.json", DB_TASK),
            ("db-service.json", DB_SERVICE),
            ("app-task.json", APP_TASK),
            ("app-service.json", APP_SERVICE),
        ])?
    );

    step("knit run --service db -- knit-testbin echo ...   (three tasks)");
    for i in 1..=3 {
        let pidfile = k
            .dir
            .path()
            .join(format!("db-{i}.pid"))
            .display()
            .to_string();
        k.run(
            "db",
            &[
                &tb,
                "echo",
                "--port-env",
                "KNIT_PORT_REDIS",
                "--pidfile",
                &pidfile,
            ],
        )?;
    }
    k.wait_healthy("db", 3)?;
    println!("$ knit services\n{}", k.ok(&["services"])?);
    println!("$ knit endpoints\n{}", k.ok(&["endpoints"])?);
    let hosts = std::fs::read_to_string("/etc/hosts")?;
    println!("/etc/hosts, knit's block:");
    hosts
        .lines()
        .skip_while(|l| !l.starts_with("# BEGIN knit knit-test-demo"))
        .take_while(|l| !l.starts_with("# END knit"))
        .for_each(|l| println!("  {l}"));

    step("knit run --service app -- knit-testbin client --target db:6379 --count 300");
    let r = k.run_json(
        "app",
        &[&tb, "client", "--target", "db:6379", "--count", "300"],
    )?;
    show_client(&r)?;

    let pid: i32 = std::fs::read_to_string(k.dir.path().join("db-2.pid"))?
        .trim()
        .parse()?;
    let victim = task_id_of(pid).unwrap_or_else(|| format!("pid {pid}"));
    step(&format!(
        "kill -9 one db task ({victim}); the kernel stops sending it connections"
    ));
    nix_kill(pid)?;
    k.wait_healthy("db", 2)?;
    let r = k.run_json(
        "app",
        &[&tb, "client", "--target", "db:6379", "--count", "150"],
    )?;
    show_client(&r)?;

    step("the kernel's counters, per endpoint");
    println!("$ knit endpoints db\n{}", k.ok(&["endpoints", "db"])?);
    println!("$ knit status\n{}", k.ok(&["status"])?);

    step("a long connection survives kill -9 of the daemon");
    let hold = k.spawn_task(
        "app",
        &[&tb, "hold", "--target", "db:6379", "--duration-ms", "3000"],
        Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    k.kill_daemon()?;
    let out = hold.wait_with_output()?;
    let h: Value = serde_json::from_slice(&out.stdout).context("hold output")?;
    println!(
        "daemon killed; the held connection to {} exchanged {} lines, {} failed",
        h["backend"], h["ok"], h["failed"]
    );
    k.start_daemon()?;
    let st = k.json(&["status"])?;
    println!(
        "daemon restarted: datapath {}, {} tasks recovered",
        st["datapath"], st["tasks"]
    );

    step("clean shutdown: hosts block removed, tasks stopped, pins and cgroups cleaned");
    k.stop_daemon()?;
    k.show_log_on_drop(false);
    drop(k);
    Ok(())
}

fn show_client(r: &Value) -> Result<()> {
    let by: BTreeMap<String, u64> = serde_json::from_value(r["by_backend"].clone())?;
    println!("connections: {} ok, {} failed", r["ok"], r["failed"]);
    for (b, n) in &by {
        println!("  {b:<10} {n:>4} {}", "#".repeat((*n / 5) as usize));
    }
    let peers: Vec<String> = r["peers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    println!("the client's getpeername() saw: {}", peers.join(", "));
    if r["failed"] != 0 {
        bail!("the demo's client saw failures: {}", r["errors"]);
    }
    Ok(())
}

/// The task id `knit run` gave process `pid` ($KNIT_TASK_ID in its environment).
fn task_id_of(pid: i32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"KNIT_TASK_ID="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn nix_kill(pid: i32) -> Result<()> {
    // SAFETY: kill(2) with a pid we read from the task's pid file.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
