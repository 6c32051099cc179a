//! TCP listeners with a backlog sized from the kernel's `somaxconn`: every
//! task's L7 traffic shares the egress listener, and a burst of connects
//! that overflows its accept queue costs the dropped SYNs a 1 s (then 3 s,
//! 7 s...) retry. The default of std (128) is far below what a host allows.
use std::{net::SocketAddr, os::fd::AsRawFd};

/// Where the kernel says how long an accept queue may be.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";
/// When that file cannot be read (Linux's default since 5.4).
const DEFAULT_BACKLOG: i32 = 4096;

/// The backlog knit's listeners ask for: `net.core.somaxconn` (the kernel
/// caps any request at it anyway).
pub fn backlog() -> i32 {
    std::fs::read_to_string(SOMAXCONN)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_BACKLOG)
}

/// Bind and listen on `addr` (port 0: any free one), SO_REUSEADDR as std
/// and tokio set it, with [`backlog`]. Non-blocking, for tokio.
pub fn tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    listen_on(s)
}

/// listen(2) with [`backlog`] on a bound socket; non-blocking, for tokio.
fn listen_on(s: tokio::net::TcpSocket) -> std::io::Result<std::net::TcpListener> {
    let fd = s.as_raw_fd();
    // SAFETY: listen(2) on a socket this function owns.
    if unsafe { libc::listen(fd, backlog()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor `into_raw_fd` gave up, owned from here on.
    let l = unsafe {
        <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(
            std::os::fd::IntoRawFd::into_raw_fd(s),
        )
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The CPUs this process may use (its affinity mask and cgroup CPU quota
/// counted): the data plane's default thread count.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether SO_REUSEPORT is set on `l` (a group can grow around it).
pub fn is_reuseport(l: &impl AsRawFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a c_int of the size given.
    let r = unsafe {
        libc::getsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && on != 0
}

/// One more socket of a SO_REUSEPORT group on `addr` (a fixed port):
/// the kernel spreads incoming connections over the group's sockets, each
/// with an accept queue of its own, so a burst of connects meets
/// [`backlog`] times the group's size before a SYN is dropped, and each
/// socket has an accept loop of its own. Only the same user can join.
pub fn tcp_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(addr)?;
    listen_on(s)
}

/// A SO_REUSEPORT group of `n` listeners on `addr` (port 0: a free one,
/// which every member then shares).
pub fn tcp_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = tcp_reuseport(addr)?;
    let addr = first.local_addr()?;
    let mut group = vec![first];
    grow(&mut group, addr, n)?;
    Ok(group)
}

/// Add members to a SO_REUSEPORT group on `addr` until it has `n`.
pub fn grow(
    group: &mut Vec<std::net::TcpListener>,
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<()> {
    while group.len() < n {
        group.push(tcp_reuseport(addr)?);
    }
    Ok(())
}

/// A listener inherited from an older daemon (or made elsewhere): listen(2)
/// again raises its backlog to [`backlog`] (Linux allows it on a listening
/// socket; queued connections stay).
pub fn widen(l: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: listen(2) on a descriptor the caller owns.
    if unsafe { libc::listen(l.as_raw_fd(), backlog()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_ask_for_somaxconn() -> std::io::Result<()> {
        assert!(backlog() >= 128);
        let l = tcp("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
        widen(&l)?;
        let l = tokio::net::TcpListener::from_std(l)?;
        let c = tokio::net::TcpStream::connect(l.local_addr()?).await?;
        let (_a, peer) = l.accept().await?;
        assert_eq!(peer, c.local_addr()?);
        Ok(())
    }

    /// A group shares one port, each member queues connections of its own,
    /// and between them they take every connection.
    #[tokio::test]
    async fn a_reuseport_group_shares_one_port() -> std::io::Result<()> {
        let group = tcp_group("127.0.0.1:0".parse().map_err(std::io::Error::other)?, 3)?;
        assert_eq!(group.len(), 3);
        let addr = group[0].local_addr()?;
        assert!(group.iter().all(|l| l.local_addr().ok() == Some(addr)));
        assert!(group.iter().all(is_reuseport));
        let plain = tcp("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
        assert!(!is_reuseport(&plain));
        let mut clients = Vec::new();
        for _ in 0..64 {
            clients.push(std::net::TcpStream::connect(addr)?);
        }
        let mut accepted = 0;
        let mut members_used = 0;
        for l in &group {
            let mut n = 0;
            while l.accept().is_ok() {
                n += 1;
            }
            accepted += n;
            members_used += usize::from(n > 0);
        }
        assert_eq!(accepted, 64);
        assert!(members_used >= 2, "64 connections all went to one member");
        Ok(())
    }
}
