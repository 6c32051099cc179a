//! The L4 short-circuit, driven the way a user would: a daemon, tasks started
//! with `knit run`, real TCP through the kernel's connect hooks.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, tcp_service, tcp_task_definition, testbin, wait_for};
use serde_json::Value;

fn tb() -> String {
    testbin().display().to_string()
}

/// Apply `db` (alias db:6379, TCP) and a client-only service, start `n`
/// echo backends b0..bn-1 and wait until they are healthy.
fn setup_db(k: &mut Knit, n: usize) -> Result<()> {
    let (client_td, client_svc) = client_service("client");
    k.apply(&[
        ("db-td.json", &tcp_task_definition("db")),
        ("db-svc.json", &tcp_service("db", "db", 6379)),
        ("client-td.json", &client_td),
        ("client-svc.json", &client_svc),
    ])?;
    for i in 0..n {
        start_backend(k, &format!("b{i}"))?;
    }
    k.wait_healthy("db", n)
}

fn start_backend(k: &mut Knit, id: &str) -> Result<()> {
    let pidfile = k.dir.path().join(format!("{id}.pid"));
    let gate = k.dir.path().join(format!("{id}.closed"));
    let (tb, pidfile, gate) = (
        tb(),
        pidfile.display().to_string(),
        gate.display().to_string(),
    );
    k.run(
        "db",
        &[
            &tb,
            "echo",
            "--id",
            id,
            "--port-env",
            "KNIT_PORT_TCP",
            "--pidfile",
            &pidfile,
            "--close-while",
            &gate,
        ],
    )
}

fn vip_of(k: &Knit, dns: &str) -> Result<Ipv4Addr> {
    let rows = k.json(&["services"])?;
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["dns_name"] == dns))
        .context("alias row")?;
    Ok(row["vip"].as_str().context("vip")?.parse()?)
}

fn counts(report: &Value) -> BTreeMap<String, u64> {
    report["by_backend"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn l4_round_robin_peer_is_vip_and_outsiders_are_refused() -> Result<()> {
    let mut k = Knit::start("rr", "")?;
    setup_db(&mut k, 3)?;
    let vip = vip_of(&k, "db")?;
    assert_eq!(vip.octets()[..2], [127, 255]);
    let hosts = std::fs::read_to_string(&k.hosts)?;
    assert!(
        hosts.contains(&format!("{vip}\tdb\n")),
        "hosts block: {hosts}"
    );
    assert!(hosts.contains("# a line knit must keep\n"));

    let hosts_file = k.hosts.display().to_string();
    let r = k.run_json(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts_file,
            "--count",
            "300",
        ],
    )?;
    assert_eq!(r["failed"], 0, "{r}");
    let c = counts(&r);
    assert_eq!(c.len(), 3, "{r}");
    for (b, n) in &c {
        assert!((90..=110).contains(n), "backend {b} got {n} of 300: {c:?}");
    }
    // The application sees the VIP as its peer, never a backend.
    let peers: Vec<&String> = r["peers"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(peers, vec![&format!("{vip}:6379")]);

    // IPv6 sockets dialing the v4-mapped VIP are balanced too.
    let r6 = k.run_json(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            &format!("{vip}:6379"),
            "--v6",
            "--count",
            "30",
        ],
    )?;
    assert_eq!(r6["failed"], 0, "{r6}");
    assert_eq!(counts(&r6).len(), 3, "{r6}");
    let peers6: Vec<&String> = r6["peers"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(peers6, vec![&format!("[::ffff:{vip}]:6379")]);

    // A process outside knit's cgroup (this test) is not rewritten: refused.
    let err = TcpStream::connect_timeout(&SocketAddr::from((vip, 6379)), Duration::from_secs(2))
        .err()
        .context("an outsider reached the VIP")?;
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    // The kernel counted every connection, per alias and per backend.
    let rows = k.json(&["services"])?;
    let db = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["dns_name"] == "db"))
        .context("db")?
        .clone();
    assert_eq!(db["new_connections"], 330, "{db}");
    assert_eq!(db["failed_connects"], 0, "{db}");
    let eps = k.json(&["endpoints", "db"])?;
    let total: u64 = eps
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|e| e["new_connections"].as_u64())
        .sum();
    assert_eq!(total, 330);
    let sent: u64 = eps
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|e| e["bytes_sent"].as_u64())
        .sum();
    assert_eq!(sent, 330 * 5, "each client sent \"ping\\n\"");
    let active = wait_for(
        "connections to close in the counters",
        Duration::from_secs(5),
        || {
            let v = k.json(&["services"]).ok()?;
            let a = v.as_array()?.iter().find(|r| r["dns_name"] == "db")?["active_connections"]
                .as_u64()?;
            (a == 0).then_some(a)
        },
    )?;
    assert_eq!(active, 0);
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[test]
fn l4_killed_backend_leaves_rotation_and_returns() -> Result<()> {
    let mut k = Knit::start("kill", "")?;
    setup_db(&mut k, 3)?;
    let hosts_file = k.hosts.display().to_string();
    let client = k.spawn_task(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts_file,
            "--duration-ms",
            "7000",
            "--interval-ms",
            "5",
        ],
        Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    let pid: i32 = std::fs::read_to_string(k.dir.path().join("b1.pid"))?
        .trim()
        .parse()?;
    let killed_at = now_ms();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    k.wait_healthy("db", 2)?;
    std::thread::sleep(Duration::from_millis(1500));
    start_backend(&mut k, "b1-again")?;
    let back_at = now_ms();
    k.wait_healthy("db", 3)?;
    let out = knit_tests::wait_output(client, "client", knit_tests::TASK_TIMEOUT)?;
    let r: Value = serde_json::from_slice(&out.stdout)?;
    let timeline = r["timeline"].as_array().context("timeline")?;
    let mut after_kill = 0;
    for e in timeline {
        let t = e[0].as_u64().unwrap_or(0);
        if t >= killed_at + 2000 {
            after_kill += 1;
            ensure!(
                !e[1].is_null(),
                "a connect failed {} ms after the kill: {}",
                t - killed_at,
                r["errors"]
            );
            ensure!(
                e[1] != "b1",
                "b1 got a connection {} ms after it was killed",
                t - killed_at
            );
        }
    }
    ensure!(
        after_kill > 100,
        "too few connects after the kill: {after_kill}"
    );
    let again = timeline
        .iter()
        .filter(|e| e[1] == "b1-again" && e[0].as_u64().unwrap_or(0) >= back_at)
        .count();
    ensure!(
        again > 10,
        "the restarted backend got {again} connections: {}",
        r["by_backend"]
    );
    Ok(())
}

#[test]
fn l4_failing_backend_is_ejected_then_returns() -> Result<()> {
    // Long enough that the checks below run while b2 is out, even in the VM.
    let extra =
        "[outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 6000\nmax_ejection_percent = 50\n";
    let mut k = Knit::start("eject", extra)?;
    setup_db(&mut k, 3)?;
    let hosts_file = k.hosts.display().to_string();
    // b2 stays alive but refuses connects.
    let gate = k.dir.path().join("b2.closed");
    std::fs::write(&gate, "")?;
    std::thread::sleep(Duration::from_millis(100));
    let r = k.run_json(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts_file,
            "--count",
            "60",
            "--interval-ms",
            "10",
        ],
    )?;
    let failed = r["failed"].as_u64().unwrap_or(99);
    ensure!(
        (1..=6).contains(&failed),
        "failed connects before ejection: {failed} ({r})"
    );
    ensure!(
        k.endpoints_in("db", "ejected")? == 1,
        "b2 should be ejected: {}",
        k.ok(&["endpoints"])?
    );
    // While ejected, nothing fails.
    let r = k.run_json(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts_file,
            "--count",
            "50",
        ],
    )?;
    assert_eq!(r["failed"], 0, "{r}");
    assert!(!counts(&r).contains_key("b2"));
    // It recovers; after the ejection time it is back in rotation.
    std::fs::remove_file(&gate)?;
    k.wait_healthy("db", 3)?;
    let r = k.run_json(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts_file,
            "--count",
            "30",
        ],
    )?;
    assert_eq!(r["failed"], 0, "{r}");
    assert!(counts(&r).get("b2").is_some_and(|n| *n >= 8), "{r}");
    let eps = k.json(&["endpoints", "db"])?;
    let ej: u64 = eps
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|e| e["ejections"].as_u64())
        .sum();
    assert_eq!(ej, 1);
    Ok(())
}

fn bpftool_cgroup_progs(cgroup: &std::path::Path) -> Result<Vec<String>> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()?;
    ensure!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// The ids of the programs attached to `cgroup` (a second copy loaded by
/// a restarted daemon would have new ids; other tests' programs, which the
/// kernel may still be freeing, do not count).
fn attached_ids(cgroup: &std::path::Path) -> Result<Vec<u64>> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let mut ids: Vec<u64> = v
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default();
    ids.sort();
    Ok(ids)
}

#[test]
fn l4_survives_daemon_kill9_and_restart_adopts_pins() -> Result<()> {
    let mut k = Knit::start("crash", "")?;
    setup_db(&mut k, 2)?;
    let hosts_file = k.hosts.display().to_string();
    let mut progs = bpftool_cgroup_progs(&k.cgroup)?;
    progs.sort();
    assert_eq!(
        progs,
        [
            "knit_connect4",
            "knit_connect6",
            "knit_peer4",
            "knit_peer6",
            "knit_sockops"
        ]
    );
    let ids_before = attached_ids(&k.cgroup)?;
    ensure!(ids_before.len() == 5, "attached: {ids_before:?}");
    // A long connection, and a client that keeps connecting, both running
    // across the daemon's death and restart (12 s: a restart under TCG on a
    // busy machine takes seconds; they must outlive it).
    let hold = k.spawn_task(
        "client",
        &[
            &tb(),
            "hold",
            "--target",
            "db:6379",
            "--hosts",
            &hosts_file,
            "--duration-ms",
            "12000",
        ],
        Stdio::piped(),
    )?;
    let churn = k.spawn_task(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts_file,
            "--duration-ms",
            "12000",
            "--interval-ms",
            "10",
        ],
        Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(1000));
    k.kill_daemon()?;
    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    k.start_daemon()?;
    let restart_ms = down.elapsed().as_millis();
    let status = k.json(&["status"])?;
    assert_eq!(status["datapath"], "adopted", "{status}");
    assert_eq!(
        status["tasks"], 4,
        "backends and clients were recovered: {status}"
    );
    let mut progs = bpftool_cgroup_progs(&k.cgroup)?;
    progs.sort();
    assert_eq!(
        progs,
        [
            "knit_connect4",
            "knit_connect6",
            "knit_peer4",
            "knit_peer6",
            "knit_sockops"
        ]
    );
    assert_eq!(
        attached_ids(&k.cgroup)?,
        ids_before,
        "the restarted daemon loaded a second copy"
    );
    let h = knit_tests::json_output(hold)?;
    assert_eq!(h["failed"], 0, "the held connection broke: {h}");
    assert!(h["ok"].as_u64().unwrap_or(0) > 50, "{h}");
    let c = knit_tests::json_output(churn)?;
    assert_eq!(
        c["failed"], 0,
        "connects failed while the daemon was down for {restart_ms} ms: {c}"
    );
    let per = counts(&c);
    assert_eq!(per.len(), 2, "{c}");
    let (lo, hi) = (
        per.values().min().copied().unwrap_or(0),
        per.values().max().copied().unwrap_or(0),
    );
    assert!(
        hi - lo <= hi / 5 + 2,
        "unbalanced while the daemon was down: {per:?}"
    );
    // The restarted daemon still routes and counts.
    let r = k.run_json(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts_file,
            "--count",
            "20",
        ],
    )?;
    assert_eq!(r["failed"], 0);
    Ok(())
}

#[test]
fn hosts_block_is_removed_on_clean_shutdown_and_pins_stay() -> Result<()> {
    let mut k = Knit::start("hosts", "")?;
    setup_db(&mut k, 1)?;
    let before = std::fs::read_to_string(&k.hosts)?;
    assert!(before.contains("# BEGIN knit"), "{before}");
    let st = k.stop_daemon()?;
    assert!(st.success(), "clean exit: {st}");
    let after = std::fs::read_to_string(&k.hosts)?;
    assert_eq!(after, "127.0.0.1\tlocalhost\n# a line knit must keep\n");
    // The datapath stays: tasks keep balancing with no daemon at all.
    assert_eq!(bpftool_cgroup_progs(&k.cgroup)?.len(), 5);
    Ok(())
}

fn map_writes(k: &Knit) -> Result<u64> {
    k.json(&["status"])?["map_writes"]
        .as_u64()
        .context("map_writes in knit status --json")
}

/// The reconciler writes only what differs from what the maps hold: with
/// five services of two tasks each, nothing changing writes nothing, and
/// one task ending writes its alias's few entries (count, slots, its
/// counters, its namespace entry), not every slot of every alias.
#[test]
fn a_reconcile_writes_only_what_changed() -> Result<()> {
    let mut k = Knit::start("writes", "")?;
    let tb = tb();
    let mut docs = Vec::new();
    for i in 0..5 {
        docs.push((
            format!("s{i}-td.json"),
            tcp_task_definition(&format!("s{i}")),
        ));
        docs.push((
            format!("s{i}-svc.json"),
            tcp_service(&format!("s{i}"), &format!("s{i}"), 7000 + i),
        ));
    }
    let refs: Vec<(&str, &str)> = docs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    k.apply(&refs)?;
    for i in 0..5 {
        for j in 0..2 {
            let pidfile = k.dir.path().join(format!("s{i}-{j}.pid"));
            k.run(
                &format!("s{i}"),
                &[
                    &tb,
                    "echo",
                    "--port-env",
                    "KNIT_PORT_TCP",
                    "--pidfile",
                    &pidfile.display().to_string(),
                ],
            )?;
        }
    }
    for i in 0..5 {
        k.wait_healthy(&format!("s{i}"), 2)?;
    }
    let settled = map_writes(&k)?;
    // At least one entry per alias, slot and counter was written once.
    ensure!(settled >= 5 + 10 + 5 + 10, "writes so far: {settled}");
    // Monitor ticks with nothing to change write nothing.
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        map_writes(&k)? == settled,
        "idle ticks wrote {} entries",
        map_writes(&k)? - settled
    );
    let pid: i32 = std::fs::read_to_string(k.dir.path().join("s2-0.pid"))?
        .trim()
        .parse()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    k.wait_healthy("s2", 1)?;
    wait_for("the task to be gone", Duration::from_secs(10), || {
        (k.json(&["endpoints", "s2"]).ok()?.as_array()?.len() == 1).then_some(())
    })?;
    std::thread::sleep(Duration::from_millis(600));
    let delta = map_writes(&k)? - settled;
    ensure!(
        (1..=8).contains(&delta),
        "one task of one alias ended: {delta} map entries written"
    );
    Ok(())
}
