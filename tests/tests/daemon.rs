//! The daemon's start-up errors, `knit run` with the task definition's own
//! command, and draining.
use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, knit_bin, tcp_service, testbin, wait_for};

#[test]
fn startup_says_what_is_missing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("knit.toml");
    // A pin dir that is not on bpffs.
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\nbpf_pin_dir = {:?}\ncgroup = \"knit-test-nobpffs\"\nsocket = {:?}\nhosts_file = {:?}\n",
            dir.path().join("state"),
            dir.path().join("pins"),
            dir.path().join("s.sock"),
            dir.path().join("hosts")
        ),
    )?;
    let out = std::process::Command::new(knit_bin())
        .args(["daemon", "--config"])
        .arg(&cfg)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir(knit_tests_cgroup("knit-test-nobpffs")?);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not on a bpf filesystem") && err.contains("mount -t bpf"),
        "{err}"
    );

    // A typo in the config is bad input, named with its key and line.
    std::fs::write(&cfg, "default_namespace = \"x\"\nstate_dri = \"/tmp\"\n")?;
    let out = std::process::Command::new(knit_bin())
        .args(["daemon", "--config"])
        .arg(&cfg)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("state_dri") && err.contains("knit.toml"),
        "{err}"
    );

    // An explicit config that does not exist.
    let out = std::process::Command::new(knit_bin())
        .args(["daemon", "--config", "/nonexistent/knit.toml"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));

    // The CLI without a daemon: a runtime failure that says how to fix it.
    let out = std::process::Command::new(knit_bin())
        .args(["services", "--socket"])
        .arg(dir.path().join("none.sock"))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("cannot reach the knit daemon") && err.contains("fix"),
        "{err}"
    );
    Ok(())
}

fn knit_tests_cgroup(name: &str) -> Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let m = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .context("cgroup2")?;
    Ok(std::path::Path::new(&m).join(name))
}

#[test]
fn run_uses_the_task_definitions_command_and_exit_status() -> Result<()> {
    let k = Knit::start("cmd", "")?;
    let tb = testbin().display().to_string();
    let td = format!(
        r#"{{"family": "db", "containerDefinitions": [{{"name": "db",
            "entryPoint": ["{tb}"], "command": ["echo", "--id", "from-td", "--port-env", "KNIT_PORT_TCP"],
            "portMappings": [{{"name": "tcp"}}]}}]}}"#
    );
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("td.json", &td),
        ("svc.json", &tcp_service("db", "db", 7000)),
        ("c.json", &ctd),
        ("cs.json", &csvc),
    ])?;
    let mut server = k
        .cmd()
        .args(["run", "--service", "db"])
        .stdout(Stdio::null())
        .spawn()?;
    k.wait_healthy("db", 1)?;
    let vip = k
        .json(&["services"])?
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|r| r["dns_name"] == "db")
                .map(|r| r["vip"].clone())
        })
        .context("vip")?;
    let target = format!("{}:7000", vip.as_str().context("vip")?);
    let r = k.run_json(
        "client",
        &[&tb, "client", "--target", &target, "--count", "3"],
    )?;
    assert_eq!(r["by_backend"]["from-td"], 3, "{r}");
    // SIGTERM to `knit run` reaches the task; its status is passed back (128+15).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let st = wait_for("knit run to exit", Duration::from_secs(10), || {
        server.try_wait().ok().flatten()
    })?;
    assert_eq!(st.code(), Some(143));
    wait_for("deregistration", Duration::from_secs(5), || {
        (k.json(&["endpoints"]).ok()?.as_array()?.is_empty()).then_some(())
    })?;
    // An alias with nothing behind it refuses connects at once.
    let r = k.run_json(
        "client",
        &[&tb, "client", "--target", &target, "--count", "2"],
    )?;
    assert_eq!(r["failed"], 2, "{r}");
    assert!(
        r["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused")),
        "{r}"
    );
    // A command's own exit status comes back as knit run's.
    let out = k
        .cmd()
        .args(["run", "--service", "client", "--", "sh", "-c", "exit 7"])
        .output()?;
    assert_eq!(out.status.code(), Some(7));
    // An unknown service is bad input.
    let out = k
        .cmd()
        .args(["run", "--service", "nope", "--", "true"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    // The task runs in its own cgroup under the daemon's.
    let out = k
        .cmd()
        .args([
            "run",
            "--service",
            "client",
            "--",
            "cat",
            "/proc/self/cgroup",
        ])
        .output()?;
    let cg = String::from_utf8_lossy(&out.stdout);
    ensure!(cg.contains(&format!("/{}/client/client-", k.name)), "{cg}");
    Ok(())
}

#[test]
fn drain_takes_endpoints_out_then_deregisters_them() -> Result<()> {
    let mut k = Knit::start("drain", "")?;
    let tb = testbin().display().to_string();
    let (ctd, csvc) = client_service("client");
    k.apply(&[
        ("td.json", &knit_tests::tcp_task_definition("db")),
        ("svc.json", &tcp_service("db", "db", 7001)),
        ("c.json", &ctd),
        ("cs.json", &csvc),
    ])?;
    for id in ["d0", "d1"] {
        k.run(
            "db",
            &[&tb, "echo", "--id", id, "--port-env", "KNIT_PORT_TCP"],
        )?;
    }
    k.wait_healthy("db", 2)?;
    let hosts = k.hosts.display().to_string();
    let hold = k.spawn_task(
        "client",
        &[
            &tb,
            "hold",
            "--target",
            "db:7001",
            "--hosts",
            &hosts,
            "--duration-ms",
            "1500",
        ],
        Stdio::piped(),
    )?;
    // Waited for, not slept on: in the slow VM the client may take a while
    // to connect.
    let held_task = wait_for(
        "the held connection's endpoint",
        Duration::from_secs(10),
        || {
            let eps = k.json(&["endpoints", "db"]).ok()?;
            eps.as_array()?
                .iter()
                .find(|e| e["active_connections"] == 1)
                .map(|e| e["task"].clone())
        },
    )?;
    let held_task = held_task.as_str().context("task")?.to_string();
    k.ok(&["drain", "--task", &held_task])?;
    assert_eq!(k.endpoints_in("db", "draining")?, 1);
    // New connections avoid the draining task...
    let r = k.run_json(
        "client",
        &[
            &tb, "client", "--target", "db:7001", "--hosts", &hosts, "--count", "10",
        ],
    )?;
    assert_eq!(r["failed"], 0);
    assert_eq!(r["by_backend"].as_object().map(|m| m.len()), Some(1), "{r}");
    // ...the held one finishes undisturbed, then the task is deregistered.
    let h = knit_tests::json_output(hold)?;
    assert_eq!(h["failed"], 0, "{h}");
    wait_for(
        "the drained task to be deregistered",
        Duration::from_secs(5),
        || {
            let eps = k.json(&["endpoints", "db"]).ok()?;
            (eps.as_array()?.len() == 1).then_some(())
        },
    )?;
    Ok(())
}
