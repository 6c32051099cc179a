//! Faults around the daemon's own state: a damaged state file, a full disk.
//! What the user sees (exit codes, messages), and that nothing is lost.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, knit_bin, tcp_service, tcp_task_definition, testbin};

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
    // The daemon keeps serving what it had.
    assert_eq!(failed_calls(&k)?, 0);
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
