//! Real peers for knit's tests: a TCP server that says who it is and echoes,
//! and clients that dial an alias and report what they saw as JSON. A
//! server's id is `--id`, else the task id `knit run` gave it.
//!
//! ```text
//! knit-testbin echo [--id NAME] [--port N | --port-env VAR] [--pidfile F] [--close-while FILE]
//! knit-testbin client --target HOST:PORT [--count N] [--duration-ms D] [--interval-ms I] [--line TEXT] [--hosts FILE]
//! knit-testbin hold --target HOST:PORT --duration-ms D [--hosts FILE]
//! knit-testbin http [--id NAME] --port-env VAR [--always STATUS] [--record] [--on-term FILE]
//! knit-testbin http-client --url http://HOST:PORT/PATH --count N [--concurrency C] [--h2]
//!     [--method M --body-bytes B [--chunked]] [--hosts FILE] [--duration-ms D] [--reconnect]
//!     [--host-header H] [--header NAME:VALUE]... [--stop-file F]
//! knit-testbin ws-client --url ws://HOST:PORT/ws --messages N [--hosts FILE]
//! knit-testbin ws-idle --url ws://HOST:PORT/ws --sockets K --idle-ms D [--hosts FILE]
//! knit-testbin raw --target HOST:PORT --send TEXT [--big-header-bytes N]
//!     [--body-bytes N [--chunked]] [--after TEXT] [--read-ms MS] [--hosts FILE]
//! knit-testbin burst --target HOST:PORT --connections N [--hosts FILE]
//! knit-testbin grpc-server [--id NAME] --port-env VAR [--unavailable]
//! knit-testbin grpc-client --url http://HOST:PORT --kind unary|server|client|bidi --count N
//!     [--bytes B] [--messages M] [--concurrency C] [--hosts FILE]
//! knit-testbin xfer-server --port-env VAR [--close-after BYTES]
//! knit-testbin xfer --target HOST:PORT --sizes 1,64K,64M [--streams K] [--rate B/s]
//!     [--expect-cut BYTES] [--hosts FILE]
//! knit-testbin flood --target HOST:PORT --connections N [--slowloris] [--hold-ms D] [--hosts FILE]
//! knit-testbin sink-server --port-env VAR
//! knit-testbin blast --target HOST:PORT --bytes N [--chunk B] [--timeout-s S] [--hosts FILE]
//! knit-testbin tls-get --target HOST:PORT --cert F --key F --ca F --id URI
//! ```
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::json;

mod blast;
mod flood;
mod grpc;
mod http;
mod tlsget;
mod xfer;

pub(crate) fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Who a server says it is: `--id NAME`, else the task id `knit run` gave
/// it ($KNIT_TASK_ID), so that what it reports and `knit endpoints` speak
/// of the same task.
pub(crate) fn server_id(args: &[String]) -> Result<String> {
    arg(args, "--id")
        .or_else(|| std::env::var("KNIT_TASK_ID").ok())
        .context("--id NAME (or run it under `knit run`, which sets $KNIT_TASK_ID)")
}

pub(crate) fn num(args: &[String], name: &str, default: u64) -> Result<u64> {
    match arg(args, name) {
        Some(v) => v.parse().with_context(|| format!("{name} {v}")),
        None => Ok(default),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") => echo(&args),
        Some("client") => client(&args),
        Some("hold") => hold(&args),
        Some("http") => http::server(&args),
        Some("http-client") => http::client(&args),
        Some("ws-client") => http::ws_client(&args),
        Some("ws-idle") => http::ws_idle(&args),
        Some("burst") => flood::burst(&args),
        Some("raw") => raw(&args),
        Some("grpc-server") => grpc::server(&args),
        Some("grpc-client") => grpc::client(&args),
        Some("privileges") => privileges(&args),
        Some("xfer-server") => xfer::server(&args),
        Some("xfer") => xfer::client(&args),
        Some("flood") => flood::run(&args),
        Some("sink-server") => blast::server(&args),
        Some("blast") => blast::client(&args),
        Some("tls-get") => tlsget::run(&args),
        _ => bail!(
            "usage: knit-testbin echo|client|hold|http|http-client|ws-client|ws-idle|burst|raw|grpc-server|grpc-client|privileges|xfer-server|xfer|flood|sink-server|blast|tls-get ..."
        ),
    }
}

/// What this process may do: reach the control socket (`--socket`), open a
/// pinned map (`--pin`, BPF_OBJ_GET), connect to `--connect` addresses.
/// Prints `{"uid": N, "socket": "...", "pin": "...", "connect": {...}}`,
/// each "ok" or the error.
fn privileges(args: &[String]) -> Result<()> {
    let socket = arg(args, "--socket").context("--socket")?;
    let pin = arg(args, "--pin").context("--pin")?;
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let sock = outcome(std::os::unix::net::UnixStream::connect(&socket).map(drop));
    let path = std::ffi::CString::new(pin.as_bytes())?;
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    // SAFETY: a bpf(2) call with a valid attribute struct and its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    let pin = if fd >= 0 {
        // SAFETY: the descriptor the kernel just returned.
        unsafe { libc::close(fd as i32) };
        "ok".to_string()
    } else {
        std::io::Error::last_os_error().to_string()
    };
    let mut connect = serde_json::Map::new();
    for target in args
        .windows(2)
        .filter(|w| w[0] == "--connect")
        .map(|w| w[1].clone())
    {
        let addr: SocketAddr = target.parse()?;
        let r = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(drop);
        connect.insert(target, outcome(r).into());
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    println!(
        "{}",
        serde_json::json!({"uid": uid, "socket": sock, "pin": pin, "connect": connect})
    );
    Ok(())
}

/// Serve until killed: each connection first gets "<id>\n", then its lines
/// back. While the file `--close-while` exists the listener is closed, so
/// connects are refused (a backend that is alive but failing).
fn echo(args: &[String]) -> Result<()> {
    let id = server_id(args)?;
    let port: u16 = match (arg(args, "--port"), arg(args, "--port-env")) {
        (Some(p), _) => p.parse()?,
        (None, Some(var)) => std::env::var(&var)
            .with_context(|| format!("${var}"))?
            .parse()?,
        (None, None) => bail!("--port or --port-env"),
    };
    let host = std::env::var("KNIT_HOST_ADDRESS").unwrap_or_else(|_| "127.0.0.1".into());
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    if let Some(p) = arg(args, "--pidfile") {
        std::fs::write(p, std::process::id().to_string())?;
    }
    let gate = arg(args, "--close-while").map(PathBuf::from);
    let closed = |g: &Option<PathBuf>| g.as_deref().is_some_and(Path::exists);
    if gate.is_none() {
        // No gate: a plain blocking accept (idle servers cost nothing).
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        loop {
            let (s, _) = l.accept()?;
            let id = id.clone();
            std::thread::spawn(move || serve(s, &id));
        }
    }
    loop {
        while closed(&gate) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        l.set_nonblocking(true)?;
        while !closed(&gate) {
            match l.accept() {
                Ok((s, _)) => {
                    let id = id.clone();
                    std::thread::spawn(move || serve(s, &id));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn serve(s: TcpStream, id: &str) {
    let _ = s.set_nonblocking(false);
    let Ok(mut w) = s.try_clone() else { return };
    if writeln!(w, "{id}").is_err() {
        return;
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        if w.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

/// HOST:PORT, with HOST looked up in `--hosts FILE` when given.
fn resolve(args: &[String]) -> Result<SocketAddr> {
    let target = arg(args, "--target").context("--target")?;
    resolve_target(args, &target)
}

/// HOST:PORT, with HOST looked up in `--hosts FILE` when given.
pub(crate) fn resolve_target(args: &[String], target: &str) -> Result<SocketAddr> {
    let (host, port) = target.rsplit_once(':').context("--target HOST:PORT")?;
    let port: u16 = port.parse()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(file) = arg(args, "--hosts") {
        let text = std::fs::read_to_string(&file)?;
        for line in text.lines() {
            let mut f = line.split_whitespace();
            if let Some(ip) = f.next()
                && !ip.starts_with('#')
                && f.any(|n| n == host)
            {
                return Ok(SocketAddr::new(ip.parse()?, port));
            }
        }
        bail!("{host} is not in {file}");
    }
    (host, port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {host}"))
}

/// One exchange: connect, read the backend's id, echo `line`, check the peer.
fn exchange(addr: SocketAddr, line: &str) -> Result<(String, SocketAddr)> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let peer = s.peer_addr()?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut id = String::new();
    r.read_line(&mut id)?;
    writeln!(w, "{line}")?;
    let mut back = String::new();
    r.read_line(&mut back)?;
    if back.strip_suffix('\n') != Some(line) {
        bail!("echo came back as {back:?}");
    }
    Ok((id.trim().to_string(), peer))
}

fn client(args: &[String]) -> Result<()> {
    let mut addr = resolve(args)?;
    if args.iter().any(|a| a == "--v6")
        && let SocketAddr::V4(v4) = addr
    {
        addr = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
    }
    let count = num(args, "--count", 0)?;
    let duration = Duration::from_millis(num(args, "--duration-ms", 0)?);
    let interval = Duration::from_millis(num(args, "--interval-ms", 0)?);
    // What each exchange echoes (one line).
    let line = arg(args, "--line").unwrap_or_else(|| "ping".into());
    let start = Instant::now();
    let mut by_backend: BTreeMap<String, u64> = BTreeMap::new();
    let mut peers: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    let mut timeline = Vec::new();
    let (mut ok, mut failed, mut i) = (0u64, 0u64, 0u64);
    // Bounded in count and time whatever the arguments say.
    let hard_stop = Duration::from_secs(120);
    while (count == 0 || i < count)
        && (count != 0 || start.elapsed() < duration)
        && start.elapsed() < hard_stop
    {
        i += 1;
        let t = now_ms();
        match exchange(addr, &line) {
            Ok((id, peer)) => {
                ok += 1;
                *by_backend.entry(id.clone()).or_default() += 1;
                *peers.entry(peer.to_string()).or_default() += 1;
                timeline.push(json!([t, id]));
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(e.to_string());
                }
                timeline.push(json!([t, null]));
            }
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    let report = json!({
        "target": addr.to_string(), "ok": ok, "failed": failed,
        "elapsed_ms": start.elapsed().as_secs_f64() * 1000.0,
        "by_backend": by_backend, "peers": peers, "errors": errors, "timeline": timeline,
    });
    println!("{report}");
    Ok(())
}

/// Keep one connection and exchange a line every 50 ms for the duration.
fn hold(args: &[String]) -> Result<()> {
    let addr = resolve(args)?;
    let duration = Duration::from_millis(num(args, "--duration-ms", 1000)?.min(120_000));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut id = String::new();
    r.read_line(&mut id)?;
    let start = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut line = String::new();
    while start.elapsed() < duration {
        line.clear();
        let good = writeln!(w, "hold {ok}").is_ok()
            && r.read_line(&mut line).is_ok()
            && line == format!("hold {ok}\n");
        if good {
            ok += 1;
        } else {
            failed += 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{}",
        json!({"backend": id.trim(), "ok": ok, "failed": failed})
    );
    Ok(())
}

/// Send raw bytes (`\r\n` written as `\\r\\n` on the command line) and
/// print the status line that comes back, and whether the peer closed.
fn raw(args: &[String]) -> Result<()> {
    use std::io::Read;
    let addr = resolve(args)?;
    let mut text = arg(args, "--send")
        .context("--send")?
        .replace("\\r", "\r")
        .replace("\\n", "\n");
    let repeat = num(args, "--big-header-bytes", 0)? as usize;
    if repeat > 0 {
        // A request (the last on its connection) with one header of
        // `repeat` bytes.
        text = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(repeat)
        );
    }
    // A body after the text: N bytes, as is or in 64 KiB chunks (the
    // chunked framing is written here: the text must say so).
    let body_bytes = num(args, "--body-bytes", 0)?.min(64 << 20) as usize;
    let chunked = args.iter().any(|a| a == "--chunked");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_millis(
        num(args, "--read-ms", 5000)?.clamp(100, 30_000),
    )))?;
    // Written after the body instead of its last chunk (bad framing).
    let after = arg(args, "--after").map(|t| t.replace("\\r", "\r").replace("\\n", "\n"));
    let mut w = s.try_clone()?;
    // Written on a thread of its own: the answer may come (and the peer
    // close) before the body is all sent.
    let writer = std::thread::spawn(move || -> std::io::Result<u64> {
        w.write_all(text.as_bytes())?;
        let block = vec![b'x'; 64 * 1024];
        let mut left = body_bytes;
        let mut sent = 0u64;
        while left > 0 {
            let n = left.min(block.len());
            if chunked {
                w.write_all(format!("{n:x}\r\n").as_bytes())?;
            }
            w.write_all(&block[..n])?;
            if chunked {
                w.write_all(b"\r\n")?;
            }
            left -= n;
            sent += n as u64;
        }
        if let Some(a) = after {
            w.write_all(a.as_bytes())?;
        } else if chunked && body_bytes > 0 {
            w.write_all(b"0\r\n\r\n")?;
        }
        Ok(sent)
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
        if buf.len() > 1 << 20 {
            break false;
        }
    };
    let sent = match writer.join() {
        Ok(Ok(n)) => json!(n),
        Ok(Err(e)) => json!(e.to_string()),
        Err(_) => json!("the writer panicked"),
    };
    let answer = String::from_utf8_lossy(&buf);
    let status = answer.lines().next().unwrap_or_default().to_string();
    let all: Vec<&str> = answer.lines().filter(|l| l.starts_with("HTTP/")).collect();
    println!(
        "{}",
        json!({"status_line": status, "status_lines": all, "closed": closed, "body_sent": sent,
                "body_tail": answer.lines().last(), "answer": answer.chars().take(4096).collect::<String>()})
    );
    Ok(())
}
