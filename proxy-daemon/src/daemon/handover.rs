//! Zero-downtime upgrade: `knit daemon --takeover` starts a new daemon (a
//! new binary, say) next to the running one and takes over from it:
//!
//! 1. the new daemon sends `Handover` on the control socket;
//! 2. the old one answers with the names of its listening sockets (egress,
//!    admin, control, and each ingress listener as `ingress/<task>/<port>`)
//!    and passes the sockets themselves (SCM_RIGHTS), then stops accepting,
//!    stops its monitor and closes its state store, and says `released`;
//! 3. the new daemon opens the store, adopts the pinned datapath and
//!    accepts on the same sockets: connections waiting in their queues are
//!    never refused, and the kernel's idea of the egress port stays right;
//! 4. the old daemon answers the requests in flight on its connections with
//!    `Connection: close` (HTTP/1.1), closes idle ones, and exits once none
//!    is left (or after `[proxy] drain_timeout_ms`).
use std::{
    collections::HashMap,
    io::{IoSlice, IoSliceMut, Read, Write},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::control::{Request, Response};

/// At most this many sockets change hands (ingress listeners included).
const MAX_FDS: usize = 250;

/// What the new daemon got from the old one.
#[derive(Default)]
pub struct Inherited {
    /// The egress listener's sockets: `egress` first, then `egress/1`,
    /// `egress/2`... (a SO_REUSEPORT group; older daemons pass one).
    pub egress: Vec<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    pub control: Option<std::os::unix::net::UnixListener>,
    /// Ingress listeners by (task id, port name).
    pub ingress: HashMap<(String, String), std::net::TcpListener>,
}

/// One line from a socket, read a byte at a time (what follows it is a
/// message with file descriptors, which no buffer may swallow).
fn read_line(s: &mut UnixStream) -> Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            bail!("the running daemon closed the connection");
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(b[0]);
        if out.len() > 1 << 20 {
            bail!("the running daemon's answer is too long");
        }
    }
}

/// The new daemon's side.
pub fn take_over(socket: &Path, wait: Duration) -> Result<Inherited> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "--takeover: no daemon answers on {}; start without --takeover",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(wait))?;
    let mut req = serde_json::to_vec(&Request::Handover)?;
    req.push(b'\n');
    s.write_all(&req)?;
    let names: Vec<String> = match serde_json::from_str(&read_line(&mut s)?)? {
        Response::Ok { body } => serde_json::from_value(body)?,
        Response::Error { message, .. } => bail!("the running daemon refused: {message}"),
    };
    if names.len() > MAX_FDS {
        bail!(
            "the running daemon offers {} sockets, more than {MAX_FDS}",
            names.len()
        );
    }
    let mut fds: Vec<RawFd> = Vec::new();
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(r) = c {
            fds.extend(r);
        }
    }
    // SAFETY: the kernel just gave us these descriptors; nobody else owns them.
    let owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.len() != names.len() {
        bail!(
            "the running daemon named {} sockets but passed {}",
            names.len(),
            owned.len()
        );
    }
    let mut got = Inherited::default();
    for (name, fd) in names.into_iter().zip(owned) {
        match name.as_str() {
            "egress" => got.egress.insert(0, fd.into()),
            "admin" => got.admin = Some(fd.into()),
            "control" => got.control = Some(fd.into()),
            other if other.starts_with("egress/") => got.egress.push(fd.into()),
            other => {
                let Some(rest) = other.strip_prefix("ingress/") else {
                    continue;
                };
                if let Some((task, port)) = rest.split_once('/') {
                    got.ingress
                        .insert((task.to_string(), port.to_string()), fd.into());
                }
            }
        }
    }
    // The old daemon has closed its store once it says so.
    let released = read_line(&mut s)?;
    if released != "released" {
        bail!("the running daemon did not release its state: {released:?}");
    }
    Ok(got)
}

/// The old daemon's side: pass `fds` (named) on the connection `raw`.
pub fn send(raw: RawFd, names: &[String], fds: &[BorrowedFd<'_>]) -> Result<()> {
    let raws: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raws)];
    let mut line = serde_json::to_vec(&Response::ok(&names))?;
    line.push(b'\n');
    write_all(raw, &line)?;
    let iov = [IoSlice::new(b"F")];
    loop {
        match sendmsg::<()>(raw, &iov, &cmsg, MsgFlags::empty(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Write all of `data` to a (non-blocking) socket.
pub fn write_all(raw: RawFd, mut data: &[u8]) -> Result<()> {
    // SAFETY: `raw` stays open for the call; borrowed only here.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                if std::time::Instant::now() > deadline {
                    bail!("the new daemon does not read");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
