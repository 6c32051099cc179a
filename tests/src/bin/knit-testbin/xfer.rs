//! Byte-exact transfers: a raw TCP echo server, and a client that streams a
//! pseudo-random byte sequence (no period a reordering could hide in) in
//! chunks of random sizes on a non-blocking socket (so writes may be
//! short), reads the echo back at the same time, checks every byte against
//! the sequence as it arrives, half-closes when it has sent everything and
//! expects exactly as many bytes back before the server's end of stream.
use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::{arg, num, resolve_target};

/// xorshift64*: the byte stream of one transfer, from its seed.
pub struct Sequence {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Sequence {
    pub fn new(seed: u64) -> Self {
        Sequence {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.word = self.next_u64().to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// `xfer-server --port-env VAR [--close-after BYTES]`: echo every byte back;
/// at the client's end of stream, end ours. With `--close-after`, close the
/// connection (unread bytes make it a reset) once that many were echoed.
pub fn server(args: &[String]) -> Result<()> {
    let var = arg(args, "--port-env").context("--port-env")?;
    let port: u16 = std::env::var(&var)
        .with_context(|| format!("${var}"))?
        .parse()?;
    let host = std::env::var("KNIT_HOST_ADDRESS").unwrap_or_else(|_| "127.0.0.1".into());
    let cut = num(args, "--close-after", 0)?;
    let l = TcpListener::bind(format!("{host}:{port}"))?;
    loop {
        let (s, _) = l.accept()?;
        std::thread::spawn(move || {
            let _ = echo(s, cut);
        });
    }
}

fn echo(mut s: TcpStream, cut: u64) -> std::io::Result<()> {
    let mut w = s.try_clone()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    loop {
        let want = if cut > 0 {
            buf.len().min((cut - done) as usize)
        } else {
            buf.len()
        };
        if want == 0 {
            // Dropping both halves closes with whatever the client still
            // sends unread: a reset, mid-stream.
            return Ok(());
        }
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            return w.shutdown(Shutdown::Write);
        }
        w.write_all(&buf[..n])?;
        done += n as u64;
    }
}

/// "64M", "256K", "1000": a byte count.
fn size(s: &str) -> Result<u64> {
    let (n, mul) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    Ok(n.parse::<u64>().with_context(|| format!("size {s:?}"))? * mul)
}

/// `xfer --target HOST:PORT --sizes 1,64K,64M [--streams K] [--rate B/s]
/// [--expect-cut BYTES] [--hosts FILE]`: for each size, K concurrent
/// connections each stream that many bytes (seeded apart) and check the
/// echo. Prints `{"ok", "failed", "verified_bytes", "errors"}`.
pub fn client(args: &[String]) -> Result<()> {
    let target = arg(args, "--target").context("--target")?;
    let addr = resolve_target(args, &target)?;
    let sizes = arg(args, "--sizes")
        .context("--sizes")?
        .split(',')
        .map(size)
        .collect::<Result<Vec<_>>>()?;
    let streams = num(args, "--streams", 1)?.clamp(1, 512);
    let rate = num(args, "--rate", 0)?;
    let cut = num(args, "--expect-cut", 0)?;
    let tally = Arc::new(Mutex::new((0u64, 0u64, 0u64, Vec::<String>::new())));
    let start = Instant::now();
    for (si, &bytes) in sizes.iter().enumerate() {
        let workers: Vec<_> = (0..streams)
            .map(|i| {
                let tally = tally.clone();
                let seed = ((si as u64) << 32) | (i + 1);
                std::thread::spawn(move || {
                    let r = one(addr, bytes, seed, rate, cut);
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(n) => {
                            t.0 += 1;
                            t.2 += n;
                        }
                        Err(e) => {
                            t.1 += 1;
                            if t.3.len() < 10 {
                                t.3.push(format!("{bytes} bytes, stream {i}: {e:#}"));
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "{}",
        json!({"ok": t.0, "failed": t.1, "verified_bytes": t.2, "errors": t.3,
               "elapsed_ms": start.elapsed().as_millis() as u64})
    );
    Ok(())
}

/// One connection: returns the bytes verified.
fn one(addr: SocketAddr, size: u64, seed: u64, rate: u64, cut: u64) -> Result<u64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nonblocking(true)?;
    let mut out = Sequence::new(seed);
    let mut expect = Sequence::new(seed);
    let mut chunks = Sequence::new(seed ^ 0x5555);
    let (mut sent, mut received) = (0u64, 0u64);
    let mut pending: Vec<u8> = Vec::new();
    let mut at = 0usize;
    let mut shut = false;
    let mut rbuf = vec![0u8; 128 * 1024];
    let mut want = vec![0u8; 128 * 1024];
    let started = Instant::now();
    let paced = if rate > 0 {
        Duration::from_secs_f64(size as f64 / rate as f64)
    } else {
        Duration::ZERO
    };
    let deadline = started + Duration::from_secs(90) + paced;
    loop {
        ensure!(
            Instant::now() < deadline,
            "timed out: sent {sent} of {size}, got {received} back"
        );
        // Write what the socket takes, as fast as `rate` allows.
        let allowed = if rate > 0 {
            (started.elapsed().as_secs_f64() * rate as f64) as u64
        } else {
            u64::MAX
        };
        let mut wants_write = false;
        if sent < size && sent < allowed {
            if at == pending.len() {
                let n = (1 + chunks.next_u64() % 65_536).min(size - sent) as usize;
                pending.resize(n, 0);
                out.fill(&mut pending);
                at = 0;
            }
            match s.write(&pending[at..]) {
                Ok(n) => {
                    at += n;
                    sent += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => wants_write = true,
                Err(e) if cut > 0 => {
                    // The server closed early, as asked: what came back
                    // must still be exact (checked below).
                    let _ = e;
                    sent = size;
                }
                Err(e) => bail!("write after {sent} bytes: {e}"),
            }
        } else if sent == size && !shut {
            // Half-close: the echo must still come back in full.
            let _ = s.shutdown(Shutdown::Write);
            shut = true;
        }
        match s.read(&mut rbuf) {
            Ok(0) => break,
            Ok(n) => {
                expect.fill(&mut want[..n]);
                if let Some(i) = (0..n).find(|&i| rbuf[i] != want[i]) {
                    bail!(
                        "byte {} of the echo differs (got {:#04x}, sent {:#04x})",
                        received + i as u64,
                        rbuf[i],
                        want[i]
                    );
                }
                received += n as u64;
                ensure!(
                    received <= sent,
                    "got {received} bytes back, only {sent} sent"
                );
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if cut > 0 => {
                let _ = e;
                break;
            }
            Err(e) => bail!("read after {received} bytes: {e}"),
        }
        let mut events = libc::POLLIN;
        if wants_write {
            events |= libc::POLLOUT;
        }
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events,
            revents: 0,
        };
        let wait = if sent < size && sent >= allowed {
            2
        } else {
            100
        };
        let busy = sent < size && !wants_write && sent < allowed;
        if !busy {
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, wait) };
        }
    }
    if cut > 0 {
        ensure!(
            received <= cut,
            "got {received} bytes back from a server that closes after {cut}"
        );
    } else {
        ensure!(
            received == size,
            "the echo ended after {received} of {size} bytes"
        );
    }
    Ok(received)
}
