//! One-way throughput: a sink that reads and discards, and a sender that
//! writes N bytes and reports how long they took to arrive. The sink
//! answers the sender's end of stream with the count it read (8 bytes, big
//! endian), so the sender's clock stops only when every byte was consumed
//! on the other side, not when the last one left its send buffer.
//!
//! ```text
//! knit-testbin sink-server --port-env VAR
//! knit-testbin blast --target HOST:PORT --bytes N [--chunk B] [--timeout-s S] [--hosts FILE]
//! ```
use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::{arg, num, resolve_target};

/// Read (and write) size: large enough that per-call costs (the sk_msg
/// program runs once per send) do not dominate, like a bulk copy.
const CHUNK: u64 = 256 * 1024;
/// The most one `blast` sends: a bound on what a typo can ask for.
const MAX_BYTES: u64 = 64 << 30;

/// `sink-server --port-env VAR`: every connection is read to its end and
/// answered with the number of bytes read.
pub fn server(args: &[String]) -> Result<()> {
    let var = arg(args, "--port-env").context("--port-env")?;
    let port: u16 = std::env::var(&var)
        .with_context(|| format!("${var}"))?
        .parse()?;
    let host = std::env::var("KNIT_HOST_ADDRESS").unwrap_or_else(|_| "127.0.0.1".into());
    let l = TcpListener::bind(format!("{host}:{port}"))
        .with_context(|| format!("bind {host}:{port}"))?;
    loop {
        let (s, _) = l.accept()?;
        std::thread::spawn(move || {
            let _ = sink(s);
        });
    }
}

/// Blocking reads of a socket in knit's sockhash (same-host acceleration)
/// can fail with EAGAIN before their timeout: Linux's `tcp_bpf_recvmsg`
/// answers -EAGAIN to a wake-up that brought no data (one for freed send
/// space, say). `read` retried until `limit` has passed since `since`.
fn read_within(
    s: &mut TcpStream,
    buf: &mut [u8],
    since: Instant,
    limit: Duration,
) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock && since.elapsed() < limit => {}
            r => return r,
        }
    }
}

fn sink(mut s: TcpStream) -> std::io::Result<()> {
    // A sender that stalls does not hold a thread for ever.
    let limit = Duration::from_secs(60);
    s.set_read_timeout(Some(limit))?;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut total = 0u64;
    loop {
        match read_within(&mut s, &mut buf, Instant::now(), limit)? {
            0 => break,
            n => total += n as u64,
        }
    }
    s.write_all(&total.to_be_bytes())
}

/// `blast --target HOST:PORT --bytes N`: connect, write N bytes in chunks,
/// half-close, wait for the sink's count. Prints one JSON object: bytes,
/// the count the sink read, seconds from the first write to the count,
/// GiB/s, and the peer the socket reports.
pub fn client(args: &[String]) -> Result<()> {
    let target = arg(args, "--target").context("--target")?;
    let addr = resolve_target(args, &target)?;
    let bytes = num(args, "--bytes", 0)?;
    ensure!(
        bytes > 0 && bytes <= MAX_BYTES,
        "--bytes {bytes}: give 1 to {MAX_BYTES}"
    );
    let chunk = num(args, "--chunk", CHUNK)?.clamp(1, 16 << 20);
    // Bounded in time whatever the path does: every write and the final
    // read time out, and the loop checks the clock.
    let limit = Duration::from_secs(num(args, "--timeout-s", 120)?.clamp(1, 600));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_write_timeout(Some(limit))?;
    s.set_read_timeout(Some(limit))?;
    let peer = s.peer_addr()?;
    let buf = vec![0x5a_u8; chunk as usize];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        if start.elapsed() > limit {
            bail!(
                "{} of {bytes} bytes sent after {limit:?}; giving up",
                bytes - left
            );
        }
        let n = left.min(chunk) as usize;
        s.write_all(&buf[..n])
            .with_context(|| format!("writing to {addr} after {} bytes", bytes - left))?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    let mut got = 0;
    while got < count.len() {
        match read_within(&mut s, &mut count[got..], start, limit)
            .context("reading the sink's count")?
        {
            0 => bail!("the sink closed before its count ({got} of 8 bytes)"),
            n => got += n,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(count);
    ensure!(
        received == bytes,
        "the sink read {received} bytes of the {bytes} sent"
    );
    println!(
        "{}",
        json!({
            "target": target, "peer": peer.to_string(), "bytes": bytes, "received": received,
            "chunk": chunk, "elapsed_s": elapsed,
            "gib_per_s": bytes as f64 / f64::from(1u32 << 30) / elapsed,
        })
    );
    Ok(())
}
