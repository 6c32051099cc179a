//! Same-host acceleration (sockhash + sk_msg), driven the way a user would:
//! tasks started with `knit run`, real TCP through the VIPs, payloads from
//! 1 byte to 64 MiB checked byte for byte, with acceleration on and off.
//!
//! Every test also checks that the path it claims was taken was taken: with
//! acceleration on, the kernel handed (at least most of) the bytes socket to
//! socket (`knit status`); off, it handed none. And that the sockhash is
//! back to its size before the test once every connection has closed.
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use knit_tests::{
    Knit, client_service, http_service, http_task_definition, tcp_service, tcp_task_definition,
    testbin, wait_for,
};
use serde_json::Value;

fn tb() -> String {
    testbin().display().to_string()
}

fn config(accelerate: bool) -> String {
    format!("[datapath]\naccelerate = {accelerate}\n")
}

/// `knit status --json`'s acceleration object.
fn accel(k: &Knit) -> Result<Value> {
    let s = k.json(&["status"])?;
    Ok(s["acceleration"].clone())
}

fn redirected(k: &Knit) -> Result<u64> {
    accel(k)?["redirected_bytes"]
        .as_u64()
        .context("redirected_bytes")
}

/// Wait until the sockhash holds at most `baseline` sockets again.
fn back_to(k: &Knit, baseline: u64) -> Result<()> {
    wait_for(
        &format!("the sockhash back to {baseline} sockets"),
        Duration::from_secs(10),
        || {
            let n = accel(k).ok()?["sockets"].as_u64()?;
            (n <= baseline).then_some(())
        },
    )
}

/// A TCP service `store` (alias store:7000) of `n` byte-echo tasks and a
/// client service.
fn setup_store(k: &mut Knit, n: usize, close_after: Option<u64>) -> Result<()> {
    let (client_td, client_svc) = client_service("client");
    k.apply(&[
        ("store-td.json", &tcp_task_definition("store")),
        ("store-svc.json", &tcp_service("store", "store", 7000)),
        ("client-td.json", &client_td),
        ("client-svc.json", &client_svc),
    ])?;
    let cut = close_after.map(|c| c.to_string());
    for _ in 0..n {
        let mut cmd = vec![tb(), "xfer-server".into(), "--port-env".into()];
        cmd.push("KNIT_PORT_TCP".into());
        if let Some(c) = &cut {
            cmd.push("--close-after".into());
            cmd.push(c.clone());
        }
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        k.run("store", &cmd)?;
    }
    k.wait_healthy("store", n)
}

fn xfer(k: &Knit, extra: &[&str]) -> Result<Value> {
    let hosts = k.hosts.display().to_string();
    let mut cmd = vec![
        tb(),
        "xfer".into(),
        "--target".into(),
        "store:7000".into(),
        "--hosts".into(),
        hosts,
    ];
    cmd.extend(extra.iter().map(|s| s.to_string()));
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    k.run_json("client", &cmd)
}

const SIZES: &str = "1,2,1000,65535,65536,65537,1M,16M,64M";
/// The bytes SIZES adds up to.
const SIZES_TOTAL: u64 = 1 + 2 + 1000 + 65535 + 65536 + 65537 + (1 << 20) + (16 << 20) + (64 << 20);

fn l4_byte_exact(accelerate: bool) -> Result<()> {
    let name = if accelerate {
        "accel-l4-on"
    } else {
        "accel-l4-off"
    };
    let mut k = Knit::start(name, &config(accelerate))?;
    setup_store(&mut k, 2, None)?;
    let a = accel(&k)?;
    assert_eq!(a["enabled"], accelerate, "{a}");
    let baseline = a["sockets"].as_u64().context("sockets")?;
    let before = redirected(&k)?;

    // One stream per size, 1 byte to 64 MiB, each echoed back in full.
    let r = xfer(&k, &["--sizes", SIZES])?;
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["ok"], 9, "{r}");
    assert_eq!(r["verified_bytes"], SIZES_TOTAL, "{r}");
    // Many at once.
    let r = xfer(&k, &["--sizes", "256K,3", "--streams", "48"])?;
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["ok"], 96, "{r}");
    assert_eq!(r["verified_bytes"], 48 * (256 * 1024 + 3), "{r}");

    let moved = redirected(&k)? - before;
    let both_ways = 2 * (SIZES_TOTAL + 48 * (256 * 1024 + 3));
    if accelerate {
        // Both directions of every stream, unless a first send raced the
        // peer's handshake (that stream then keeps TCP/IP, correctly).
        ensure!(
            moved >= both_ways * 9 / 10,
            "only {moved} of {both_ways} bytes went socket to socket: {}",
            accel(&k)?
        );
    } else {
        assert_eq!(moved, 0, "acceleration is off: {}", accel(&k)?);
    }
    back_to(&k, baseline)?;
    if !accelerate {
        assert_eq!(accel(&k)?["sockets"], 0);
    }
    Ok(())
}

#[test]
fn accel_l4_byte_exact_1b_to_64mib_on() -> Result<()> {
    l4_byte_exact(true)
}

#[test]
fn accel_l4_byte_exact_1b_to_64mib_off() -> Result<()> {
    l4_byte_exact(false)
}

/// The server closes each connection after 100,000 bytes, while the client
/// is still sending: what came back is an exact prefix, never more.
#[test]
fn accel_peer_closing_mid_stream() -> Result<()> {
    for accelerate in [true, false] {
        let name = if accelerate {
            "accel-cut-on"
        } else {
            "accel-cut-off"
        };
        let mut k = Knit::start(name, &config(accelerate))?;
        setup_store(&mut k, 1, Some(100_000))?;
        let baseline = accel(&k)?["sockets"].as_u64().context("sockets")?;
        let r = xfer(
            &k,
            &["--sizes", "4M", "--streams", "8", "--expect-cut", "100000"],
        )?;
        assert_eq!(r["failed"], 0, "accelerate={accelerate}: {r}");
        assert_eq!(r["ok"], 8, "accelerate={accelerate}: {r}");
        back_to(&k, baseline)?;
    }
    Ok(())
}

/// kill -9 of the daemon in the middle of paced transfers, and a new
/// daemon: the kernel path (programs, sockhash, sk_msg) is pinned and keeps
/// every byte in order.
#[test]
fn accel_daemon_restarted_mid_stream() -> Result<()> {
    let mut k = Knit::start("accel-restart", &config(true))?;
    setup_store(&mut k, 2, None)?;
    let before = redirected(&k)?;
    let hosts = k.hosts.display().to_string();
    // 8 streams of 6 MiB at 2 MiB/s each: about 3 s.
    let client = k.spawn_task(
        "client",
        &[
            &tb(),
            "xfer",
            "--target",
            "store:7000",
            "--hosts",
            &hosts,
            "--sizes",
            "6M",
            "--streams",
            "8",
            "--rate",
            "2097152",
        ],
        std::process::Stdio::piped(),
    )?;
    std::thread::sleep(Duration::from_millis(800));
    k.kill_daemon()?;
    std::thread::sleep(Duration::from_millis(700));
    k.start_daemon()?;
    let r = knit_tests::json_output(client)?;
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["ok"], 8, "{r}");
    assert_eq!(r["verified_bytes"], 8 * (6 << 20), "{r}");
    // The new daemon reads the same pinned counters: the streams' bytes
    // went socket to socket through the restart.
    let moved = redirected(&k)? - before;
    ensure!(
        moved >= 2 * 8 * (6 << 20) * 9 / 10,
        "only {moved} bytes went socket to socket"
    );
    back_to(&k, 0).or_else(|_| {
        // The new daemon's own probes may hold a socket or two briefly.
        back_to(&k, 4)
    })?;
    Ok(())
}

/// L7: task -> egress listener -> daemon -> local task and back, HTTP/1.1
/// and h2c, bodies echoed byte for byte.
#[test]
fn accel_l7_byte_exact() -> Result<()> {
    for accelerate in [true, false] {
        let name = if accelerate {
            "accel-l7-on"
        } else {
            "accel-l7-off"
        };
        let mut k = Knit::start(name, &config(accelerate))?;
        let (client_td, client_svc) = client_service("client");
        k.apply(&[
            ("web-td.json", &http_task_definition("web")),
            ("web-svc.json", &http_service("web", "web", 8080)),
            ("client-td.json", &client_td),
            ("client-svc.json", &client_svc),
        ])?;
        for i in 0..2 {
            k.run(
                "web",
                &[
                    &tb(),
                    "http",
                    "--id",
                    &format!("w{i}"),
                    "--port-env",
                    "KNIT_PORT_WEB",
                ],
            )?;
        }
        k.wait_healthy("web", 2)?;
        let a = accel(&k)?;
        let before = redirected(&k)?;
        let hosts = k.hosts.display().to_string();
        let mut total = 0u64;
        for (bytes, count, conc, h2) in [
            (1u64, 20u64, 4u64, false),
            (65_537, 20, 4, false),
            (1 << 20, 8, 4, false),
            (16 << 20, 2, 2, false),
            (64 << 20, 1, 1, false),
            (1 << 20, 8, 4, true),
        ] {
            let (b, c, n) = (bytes.to_string(), count.to_string(), conc.to_string());
            let mut cmd = vec![
                tb(),
                "http-client".into(),
                "--url".into(),
                "http://web:8080/echo".into(),
                "--hosts".into(),
                hosts.clone(),
                "--method".into(),
                "POST".into(),
                "--body-bytes".into(),
                b,
                "--count".into(),
                c,
                "--concurrency".into(),
                n,
            ];
            if h2 {
                cmd.push("--h2".into());
            }
            let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let r = k.run_json("client", &cmd)?;
            let what = format!("accelerate={accelerate} {bytes} B h2={h2}: {r}");
            assert_eq!(r["failed"], 0, "{what}");
            assert_eq!(r["mismatched"], 0, "{what}");
            assert_eq!(r["ok"], count, "{what}");
            total += 2 * bytes * count;
        }
        let moved = redirected(&k)? - before;
        if accelerate {
            assert!(
                a["daemon_paths"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("on")),
                "{a}"
            );
            // Each body crosses two same-host connections each way.
            ensure!(
                moved >= 2 * total * 9 / 10,
                "only {moved} of {} body bytes went socket to socket: {}",
                2 * total,
                accel(&k)?
            );
        } else {
            assert_eq!(moved, 0, "acceleration is off: {}", accel(&k)?);
        }
    }
    Ok(())
}
