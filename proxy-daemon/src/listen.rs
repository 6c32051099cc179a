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
}
