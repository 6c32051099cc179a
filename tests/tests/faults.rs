//! Faults around the daemon's own state: a damaged state file, a full disk.
//! What the user sees (exit codes, messages), and that nothing is lost.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use knit_tests::{
    Knit, client_service, knit_bin, tcp_service, tcp_task_definition, testbin, wait_for,
};

fn tb() -> String {
    testbin().display().to_string()
}

/// A TCP service `db` (alias db:6379) with one echo task, and a client.
fn setup_db(k: &mut Knit) -> Result<()> {
    let (client_td, client_svc) = client_service("client");
    k.apply(&[
        ("db-td.json", &tcp_task_definition("db")),
        ("db-svc.json", &tcp_service("db", "db", 6379)),
        ("client-td.json", &client_td),
        ("client-svc.json", &client_svc),
    ])?;
    let tb = tb();
    k.run(
        "db",
        &[&tb, "echo", "--id", "b0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.wait_healthy("db", 1)
}

/// 20 connections through db:6379; returns how many failed.
fn failed_calls(k: &Knit) -> Result<u64> {
    let hosts = k.hosts.display().to_string();
    let r = k.run_json(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts,
            "--count",
            "20",
        ],
    )?;
    r["failed"].as_u64().context("failed")
}

/// Start a daemon on `config` in the foreground and wait (at most 20 s)
/// for it to exit: (exit code, stderr).
fn start_expecting_refusal(config: &Path) -> Result<(Option<i32>, String)> {
    let mut child = Command::new(knit_bin())
        .args(["daemon", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            return Ok((status.code(), err));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the daemon started on a damaged state file");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_damaged_state_file_is_refused_never_reset() -> Result<()> {
    let mut k = Knit::start("faults-damaged", "")?;
    setup_db(&mut k)?;
    k.stop_daemon()?;
    let file = k.dir.path().join("state").join("registry.redb");
    let good = std::fs::read(&file)?;

    // 1. One letter of a stored record changed (the service's name inside
    //    its JSON): redb's page checksums catch it.
    let mut bad = good.clone();
    let at = bad
        .windows(b"\"db-td\"".len())
        .rposition(|w| w == b"\"db-td\"")
        .or_else(|| bad.windows(4).rposition(|w| w == b"\"db\""))
        .context("a record in the file")?;
    bad[at + 1] ^= 0x20;
    std::fs::write(&file, &bad)?;
    let (code, err) = start_expecting_refusal(&k.config)?;
    assert_eq!(code, Some(1), "{err}");
    ensure!(
        err.contains("is damaged")
            && err.contains(&file.display().to_string())
            && err.contains("will not reset it")
            && err.contains("move it aside"),
        "{err}"
    );
    // redb flips its open/closed flag in the header; every record stays.
    let now = std::fs::read(&file)?;
    assert!(
        now.len() == bad.len() && now[4096..] == bad[4096..],
        "the file's records were changed"
    );

    // 2. Its header overwritten.
    let mut bad = good.clone();
    for b in bad.iter_mut().take(4096) {
        *b ^= 0x5a;
    }
    std::fs::write(&file, &bad)?;
    let (code, err) = start_expecting_refusal(&k.config)?;
    assert_eq!(code, Some(1), "{err}");
    ensure!(
        err.contains("is damaged") && err.contains("header"),
        "{err}"
    );
    assert!(std::fs::read(&file)? == bad, "the file was changed");

    // 3. The good file back: everything is there.
    std::fs::write(&file, &good)?;
    k.start_daemon()?;
    let services = k.ok(&["services"])?;
    ensure!(services.contains("db"), "{services}");
    k.wait_healthy("db", 1)?;
    assert_eq!(failed_calls(&k)?, 0);
    Ok(())
}

/// A tmpfs of `size` mounted at a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()?
            .success();
        ensure!(ok, "mount tmpfs at {}", at.display());
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_disk_fails_applies_clearly_and_loses_nothing() -> Result<()> {
    let mut k = Knit::start("faults-full", "")?;
    k.stop_daemon()?;
    let state = k.dir.path().join("state");
    std::fs::remove_dir_all(&state)?;
    let _disk = Tmpfs::mount(&state, "24m")?;
    k.start_daemon()?;
    setup_db(&mut k)?;
    // A client task that runs through the whole episode: a task that
    // started before the disk filled keeps being served (starting a new
    // one writes the store, which a full disk refuses, clearly).
    let hosts = k.hosts.display().to_string();
    let steady = k.spawn_task(
        "client",
        &[
            &tb(),
            "client",
            "--target",
            "db:6379",
            "--hosts",
            &hosts,
            "--duration-ms",
            "10000",
            "--interval-ms",
            "50",
        ],
        std::process::Stdio::piped(),
    )?;
    // Only once the daemon has recorded it (a task start writes the store).
    let tasks_before = 1;
    wait_for(
        "the client task to be recorded",
        Duration::from_secs(10),
        || {
            k.json(&["status"])
                .ok()
                .filter(|s| s["tasks"].as_u64().is_some_and(|n| n > tasks_before))
        },
    )?;

    // Fill the disk.
    let filler = state.join("filler");
    {
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            if f.write_all(&chunk).and_then(|()| f.sync_data()).is_err() {
                break;
            }
        }
    }
    // New services cannot be stored: said clearly, nothing half-written.
    // (Small applies may fit in pages the store already holds: grow the
    // batch until one needs more space than is left.)
    let td = k.file("extra-td.json", &tcp_task_definition("extra"))?;
    let mut refused = None;
    for round in 0..6u32 {
        let n = 50usize << round;
        let batch: Vec<String> = (0..n)
            .map(|i| {
                let name = format!("extra{round}x{i}");
                tcp_service(&name, &name, 7000).replace(
                    &format!("\"taskDefinition\": \"{name}\""),
                    "\"taskDefinition\": \"extra\"",
                )
            })
            .collect();
        let file = k.file(
            &format!("extra{round}.json"),
            &format!("[{}]", batch.join(",")),
        )?;
        let out = k.cli(&[
            "apply",
            "-f",
            &td.display().to_string(),
            "-f",
            &file.display().to_string(),
        ])?;
        if !out.status.success() {
            refused = Some((
                String::from_utf8_lossy(&out.stderr).into_owned(),
                file,
                round,
            ));
            break;
        }
    }
    let (err, file, round) = refused.context("apply never failed on a full disk")?;
    ensure!(
        err.contains("disk is full") && err.contains(&state.display().to_string()),
        "{err}"
    );
    // The daemon keeps serving what it had: the running client was
    // served throughout, and a new task is refused with the reason.
    let out = k.cli(&["run", "--service", "client", "--", "true"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() || err.contains("disk is full"),
        "a task start on a full disk: {err}"
    );
    let r = knit_tests::json_output(steady)?;
    ensure!(
        r["failed"] == 0 && r["ok"].as_u64().is_some_and(|n| n > 20),
        "the running client while the disk was full: {r}"
    );
    let refused_name = format!("extra{round}x0");
    let services = k.ok(&["services"])?;
    ensure!(!services.contains(&refused_name), "{services}");

    // Space back: the same apply works, without restarting anything.
    std::fs::remove_file(&filler)?;
    k.ok(&[
        "apply",
        "-f",
        &td.display().to_string(),
        "-f",
        &file.display().to_string(),
    ])?;
    // And everything is on disk: a new daemon reads all of it.
    k.stop_daemon()?;
    k.start_daemon()?;
    let services = k.ok(&["services"])?;
    ensure!(
        services.contains("db") && services.contains(&refused_name),
        "{services}"
    );
    k.wait_healthy("db", 1)?;
    assert_eq!(failed_calls(&k)?, 0);
    Ok(())
}

/// An L7 service `web` (alias web:8080) of HTTP tasks w0..wn-1 with a 1 s
/// per-request timeout and a 2 s base ejection; returns their pid files.
fn setup_web(k: &mut Knit, n: usize) -> Result<Vec<PathBuf>> {
    let (client_td, client_svc) = client_service("client");
    let svc = knit_tests::http_service("web", "web", 8080).replace(
        r#""clientAliases""#,
        r#""timeout": {"perRequestTimeoutSeconds": 1},
           "outlierDetection": {"baseEjectionSeconds": 2, "maxEjectionPercent": 50},
           "clientAliases""#,
    );
    k.apply(&[
        ("web-td.json", &knit_tests::http_task_definition("web")),
        ("web-svc.json", &svc),
        ("client-td.json", &client_td),
        ("client-svc.json", &client_svc),
    ])?;
    let mut pids = Vec::new();
    for i in 0..n {
        let pid = k.dir.path().join(format!("w{i}.pid"));
        let (tb, id, p) = (tb(), format!("w{i}"), pid.display().to_string());
        k.run(
            "web",
            &[
                &tb,
                "http",
                "--id",
                &id,
                "--port-env",
                "KNIT_PORT_WEB",
                "--pidfile",
                &p,
            ],
        )?;
        pids.push(pid);
    }
    k.wait_healthy("web", n)?;
    Ok(pids)
}

fn pid_in(file: &Path) -> Result<nix::unistd::Pid> {
    let pid: i32 = std::fs::read_to_string(file)?.trim().parse()?;
    Ok(nix::unistd::Pid::from_raw(pid))
}

/// The client's timeline: (ms since the epoch, status; 0 = no answer).
fn timeline(r: &serde_json::Value) -> Vec<(u64, u64)> {
    r["timeline"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| (e[0].as_u64().unwrap_or(0), e[1].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// SIGSTOP one of two endpoints (slow, not dead: its kernel still accepts
/// connections): the requests it holds time out (504), outlier detection
/// ejects it after 5 in a row, and the client sees no other error; after
/// SIGCONT it comes back when its ejection ends.
#[test]
fn a_stopped_endpoint_is_timed_out_and_ejected() -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    let mut k = Knit::start("faults-sigstop", "")?;
    let pids = setup_web(&mut k, 2)?;
    let hosts = k.hosts.display().to_string();
    let load = k.spawn_task(
        "client",
        &[
            &tb(),
            "http-client",
            "--url",
            "http://web:8080/",
            "--hosts",
            &hosts,
            "--duration-ms",
            "9000",
            "--concurrency",
            "2",
            "--interval-ms",
            "20",
        ],
        std::process::Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    let stopped_at = now_ms();
    kill(pid_in(&pids[1])?, Signal::SIGSTOP)?;
    std::thread::sleep(Duration::from_millis(4500));
    let resumed_at = now_ms();
    kill(pid_in(&pids[1])?, Signal::SIGCONT)?;
    let r = knit_tests::json_output(load)?;
    let t = timeline(&r);
    let bad: Vec<&(u64, u64)> = t.iter().filter(|(_, s)| *s != 200).collect();
    // Every error is a 504 of the stopped endpoint: 5 to eject it, plus
    // what the second worker had in flight.
    ensure!(
        bad.iter().all(|(_, s)| *s == 504),
        "errors other than 504: {bad:?}"
    );
    ensure!(
        (5..=7).contains(&bad.len()),
        "{} timed-out requests: {bad:?}",
        bad.len()
    );
    let last_error = bad.iter().map(|(at, _)| *at).max().unwrap_or(stopped_at);
    let recovery = last_error.saturating_sub(stopped_at);
    eprintln!(
        "SIGSTOP: {} requests, {} answered 504, last error {recovery} ms after the stop",
        t.len(),
        bad.len()
    );
    ensure!(recovery < 4500, "errors went on for {recovery} ms");
    // After SIGCONT and the 2 s ejection, w1 serves again.
    let after = r["by_backend"]["w1"].as_u64().unwrap_or(0);
    ensure!(after > 0, "{r}");
    let w1_back = t.iter().any(|(at, s)| *at > resumed_at + 500 && *s == 200);
    ensure!(w1_back, "no request after SIGCONT");
    Ok(())
}

/// An endpoint that crashes over and over (killed, restarted, killed...)
/// under steady idempotent load: retries and ejection hide every crash.
#[test]
fn an_endpoint_crashing_in_a_loop_costs_no_request() -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    let mut k = Knit::start("faults-crashloop", "")?;
    let pids = setup_web(&mut k, 3)?;
    let hosts = k.hosts.display().to_string();
    let rounds: usize = if std::env::var_os("KNIT_FAULTS_LONG").is_some() {
        30
    } else {
        6
    };
    let load = k.spawn_task(
        "client",
        &[
            &tb(),
            "http-client",
            "--url",
            "http://web:8080/",
            "--hosts",
            &hosts,
            "--duration-ms",
            &(rounds as u64 * 1200 + 1500).to_string(),
            "--concurrency",
            "4",
            "--interval-ms",
            "5",
        ],
        std::process::Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = k.dir.path().join("crasher.pid");
    let mut victim = pids[2].clone();
    for round in 0..rounds {
        // The last crasher has written its pid (under TCG a task can take
        // longer than a round to start).
        let target = wait_for("the endpoint's pid file", Duration::from_secs(15), || {
            pid_in(&victim).ok()
        })?;
        kill(target, Signal::SIGKILL)?;
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_file(&pid);
        let (tb, p) = (tb(), pid.display().to_string());
        let id = format!("c{round}");
        k.run(
            "web",
            &[
                &tb,
                "http",
                "--id",
                &id,
                "--port-env",
                "KNIT_PORT_WEB",
                "--pidfile",
                &p,
            ],
        )?;
        victim = pid.clone();
        std::thread::sleep(Duration::from_millis(900));
    }
    let r = knit_tests::json_output(load)?;
    eprintln!(
        "crash loop: {rounds} crashes, {} requests ok, {} failed, statuses {}",
        r["ok"], r["failed"], r["statuses"]
    );
    assert_eq!(r["failed"], 0, "{r}");
    let ok = r["ok"].as_u64().unwrap_or(0);
    let total: u64 = r["statuses"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(ok, total, "{r}");
    ensure!(ok > 100, "{r}");
    Ok(())
}

/// One task floods the egress listener with idle connections until its own
/// descriptor limit stops it, another holds connections that dribble a
/// request head (slowloris): a well-behaved client meanwhile sees no error,
/// and every slowloris connection is closed once its head is 10 s late.
#[test]
fn floods_and_slowloris_from_tasks_do_not_starve_others() -> Result<()> {
    let mut k = Knit::start("faults-flood", "")?;
    setup_web(&mut k, 2)?;
    let hosts = k.hosts.display().to_string();
    let tb = tb();
    let flood = k.spawn_task(
        "client",
        &[
            "sh",
            "-c",
            &format!(
                "ulimit -n 512 && exec {tb} flood --target web:8080 --hosts {hosts} --connections 5000 --hold-ms 13000"
            ),
        ],
        std::process::Stdio::piped(),
    )?;
    let slow = k.spawn_task(
        "client",
        &[
            &tb,
            "flood",
            "--target",
            "web:8080",
            "--hosts",
            &hosts,
            "--connections",
            "300",
            "--slowloris",
            "--hold-ms",
            "13000",
        ],
        std::process::Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let good = k.run_json(
        "client",
        &[
            &tb,
            "http-client",
            "--url",
            "http://web:8080/",
            "--hosts",
            &hosts,
            "--duration-ms",
            "11000",
            "--concurrency",
            "2",
            "--interval-ms",
            "10",
        ],
    )?;
    let flood = knit_tests::json_output(flood)?;
    let slow = knit_tests::json_output(slow)?;
    eprintln!(
        "flood: {flood}\nslowloris: {slow}\nwell-behaved client: ok {} failed {}",
        good["ok"], good["failed"]
    );
    // The flooder met its own limit, not knit's.
    ensure!(
        flood["emfile"] == 1 && flood["opened"].as_u64().is_some_and(|n| n > 400),
        "{flood}"
    );
    assert_eq!(flood["refused"], 0, "{flood}");
    // Every slowloris connection was opened, and closed by knit.
    assert_eq!(slow["opened"], 300, "{slow}");
    assert_eq!(slow["closed_by_peer"], 300, "{slow}");
    assert_eq!(good["failed"], 0, "{good}");
    ensure!(good["ok"].as_u64().is_some_and(|n| n > 200), "{good}");
    let metrics = k.metrics()?;
    let closed: u64 = metrics
        .lines()
        .find(|l| l.starts_with("knit_downstream_slow_heads_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .context("knit_downstream_slow_heads_total")?;
    assert_eq!(closed, 300, "slow heads counted");
    Ok(())
}
