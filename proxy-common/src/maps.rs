//! Map keys and values shared with the kernel.
//!
//! Byte order: addresses and ports are kept exactly as `struct bpf_sock_addr`
//! holds them (network byte order), so the connect hook copies them without
//! swapping. Counters are native-endian `u64`s the kernel adds to atomically.

/// Pinned map names (also the file names under the daemon's bpffs pin dir).
pub const MAP_SERVICES: &str = "KNIT_SERVICES";
pub const MAP_BACKENDS: &str = "KNIT_BACKENDS";
pub const MAP_RR: &str = "KNIT_RR";
pub const MAP_CONNS: &str = "KNIT_CONNS";
pub const MAP_SERVICE_STATS: &str = "KNIT_SVC_STATS";
pub const MAP_BACKEND_STATS: &str = "KNIT_BE_STATS";
pub const MAP_CONFIG: &str = "KNIT_CONFIG";
pub const MAP_ORIG: &str = "KNIT_ORIG";
pub const MAP_TASK_NS: &str = "KNIT_TASK_NS";
pub const MAP_SOCKS: &str = "KNIT_SOCKS";
pub const MAP_SOCK_STATE: &str = "KNIT_SOCK_STATE";
pub const MAP_ACCEL_STATS: &str = "KNIT_ACCEL_STATS";
pub const MAP_LISTEN: &str = "KNIT_LISTEN";
pub const MAP_EDGES: &str = "KNIT_EDGES";
pub const MAP_DENY: &str = "KNIT_DENY";

/// Most services (client aliases) one host can hold; service ids are below this.
pub const MAX_SERVICES: u32 = 16_384;
/// Most backend slots across all services.
pub const MAX_BACKEND_SLOTS: u32 = 131_072;
/// Most backends (endpoints) with counters.
pub const MAX_BACKENDS: u32 = 131_072;
/// Tasks (cgroups) with a namespace.
pub const MAX_TASKS: u32 = 65_536;
/// Connections tracked at once (LRU: the oldest entry goes when full).
pub const MAX_CONNS: u32 = 262_144;

/// (task, TCP alias) pairs with connection counters at once (LRU: the
/// least recently used pair goes when full; the daemon folds and removes
/// the pairs of tasks that are gone).
pub const MAX_EDGES: u32 = 16_384;
/// (task, alias) pairs that `allowedClients` leaves out, on one host.
pub const MAX_DENY: u32 = 65_536;

/// Sockets in the sockhash at once (same-host acceleration); a socket that
/// finds it full simply takes the TCP/IP path.
pub const MAX_SOCKS: u32 = 65_536;

/// VIP range: 127.255.0.0/16, as a host-order prefix and mask.
pub const VIP_NET: u32 = 0x7fff_0000;
pub const VIP_MASK: u32 = 0xffff_0000;

/// `ServiceEntry::mode`: how a VIP is served.
pub const MODE_L4: u32 = 0;
/// Proxied through the daemon: the connect hook sends it to the daemon's
/// egress listener (`KNIT_CONFIG`), which reads the VIP from `KNIT_ORIG`.
pub const MODE_L7: u32 = 1;

/// The daemon writes its heartbeat every monitor tick; one older than this
/// (ms) makes the connect hook send L7 VIPs straight to an endpoint.
pub const HEARTBEAT_STALE_MS: u64 = 1_500;

/// `DatapathConfig::flags`: put same-host sockets of knit's paths into the
/// sockhash (sk_msg acceleration) as they are established.
pub const CFG_ACCELERATE: u32 = 1;
/// `DatapathConfig::flags`: the egress listener is in `KNIT_LISTEN[0]`; when
/// it is gone from there (its daemon died and the kernel closed it), L7
/// connects fail open at once, without waiting for the heartbeat to age.
pub const CFG_LISTENER: u32 = 2;

/// `ConnInfo::flags`: the connection goes to the daemon's egress listener.
pub const CONN_L7: u16 = 1;

/// `ConnInfo::flags`, with [`CONN_L7`]: a TCP alias's connection to another
/// host's endpoint that the daemon carries over mutual TLS
/// (`ConnInfo::backend_id` is the endpoint the hook chose).
pub const CONN_TUNNEL: u16 = 2;

/// `Backend::flags`: another host's endpoint of a service with `tls`. It is
/// reached only through the daemon (mutual TLS), never directly: while the
/// daemon is away a connect that picks it is refused.
pub const BE_VIA_DAEMON: u16 = 1;

/// Key of `KNIT_SERVICES`: a VIP and port as a client dials them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VipKey {
    /// IPv4 address, network byte order.
    pub ip: u32,
    /// TCP port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Value of `KNIT_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceEntry {
    /// Daemon-assigned id, below [`MAX_SERVICES`]; indexes `KNIT_RR`.
    pub service_id: u32,
    /// Eligible backends, held in `KNIT_BACKENDS` slots `0..backend_count`.
    pub backend_count: u32,
    /// [`MODE_L4`] or [`MODE_L7`].
    pub mode: u32,
    /// The namespace the alias belongs to; only tasks of that namespace
    /// (`KNIT_TASK_NS`) are routed.
    pub ns_id: u32,
}

/// Key of `KNIT_BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BackendKey {
    pub service_id: u32,
    pub slot: u32,
}

/// Value of `KNIT_BACKENDS`: where a slot's connections go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub ip: u32,
    /// TCP port, network byte order.
    pub port: u16,
    /// [`BE_VIA_DAEMON`] or 0.
    pub flags: u16,
    /// Daemon-assigned endpoint id; keys `KNIT_BE_STATS`.
    pub backend_id: u32,
}

/// Value of `KNIT_CONNS` (key: socket cookie, `u64`): what the connect hook
/// decided for a socket, read by getpeername and sockops.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnInfo {
    /// The VIP the application dialed, network byte order.
    pub vip_ip: u32,
    /// The port the application dialed, network byte order.
    pub vip_port: u16,
    /// [`CONN_L7`] or 0.
    pub flags: u16,
    pub service_id: u32,
    /// The backend chosen (0 for L7: the daemon chooses per request).
    pub backend_id: u32,
    /// The connecting task's cgroup id (its directory's inode): the L7
    /// proxy learns the source service from it.
    pub cgroup_id: u64,
}

/// Value of `KNIT_CONFIG[0]`: what the kernel needs to know of the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// The egress listener's IPv4 address, network byte order (0: none yet).
    pub egress_ip: u32,
    /// The egress listener's port, network byte order (0: none yet).
    pub egress_port: u16,
    pub _pad: u16,
    /// [`CFG_ACCELERATE`] or 0.
    pub flags: u32,
    /// Last daemon heartbeat, CLOCK_MONOTONIC ns (0: never).
    pub heartbeat_ns: u64,
}

/// Key of `KNIT_ORIG`: the client's end of a connection to the egress
/// listener, as the daemon sees its peer on accept.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OrigKey {
    /// IPv4 address, network byte order (the v4 part of a v4-mapped one).
    pub ip: u32,
    /// Port, host byte order (as sockops reports a local port).
    pub port: u16,
    pub _pad: u16,
}

/// Value of `KNIT_SVC_STATS` (key: service id) and `KNIT_BE_STATS` (key:
/// backend id). Monotonic counters except `active` and `consecutive_failures`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Connections established.
    pub new_conns: u64,
    /// Connections open now (added to with wrapping arithmetic: +1 / -1).
    pub active: u64,
    /// Connects that never established (refused, reset, timed out).
    pub failed: u64,
    /// Bytes the client sent and the peer acknowledged, added on close.
    pub bytes_sent: u64,
    /// Bytes the client received, added on close.
    pub bytes_received: u64,
    /// Failed connects since the last established one (reset to 0 on success).
    pub consecutive_failures: u64,
}

/// Key of `KNIT_EDGES`: a task (its cgroup id) and a TCP alias it
/// connected to. The value is a [`Counters`] (`consecutive_failures`
/// unused): the service graph's L4 edges, counted by sockops.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EdgeKey {
    pub cgroup_id: u64,
    pub service_id: u32,
    pub _pad: u32,
}

/// `DenyEntry::action`: the connect is refused (EPERM).
pub const DENY_ENFORCE: u32 = 1;
/// `DenyEntry::action`: the connect is counted and goes on.
pub const DENY_AUDIT: u32 = 2;

/// Value of `KNIT_DENY` (key: [`EdgeKey`], a task's cgroup id and an alias
/// whose `allowedClients` leaves the task's service out): what the connect
/// hook does when that task dials that alias, and how often it did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyEntry {
    /// [`DENY_ENFORCE`] or [`DENY_AUDIT`].
    pub action: u32,
    pub _pad: u32,
    /// Connects seen (kernel adds; the daemon reads).
    pub count: u64,
}

/// Key of `KNIT_SOCKS` (the sockhash) and `KNIT_SOCK_STATE`: one end of a
/// TCP connection whose two ends are on this host, as that end sees it.
/// [`SockKey::peer`] is the other end's key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SockKey {
    /// This end's IPv4 address, network byte order (the v4 part of a
    /// v4-mapped one).
    pub local_ip: u32,
    /// The other end's IPv4 address, network byte order.
    pub remote_ip: u32,
    /// This end's port, host byte order.
    pub local_port: u32,
    /// The other end's port, host byte order.
    pub remote_port: u32,
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `::ffff:0:0/96` as the kernel's third 32-bit word of an IPv6 address
/// holds it (network byte order in memory).
const V4_MAPPED: u32 = 0xffff_u32.to_be();

impl SockKey {
    /// A socket's key from the context fields sockops (`bpf_sock_ops`) and
    /// sk_msg (`sk_msg_md`) both offer: addresses in network byte order,
    /// the local port in host order, the remote port in network order in
    /// the upper half of a u32 (so that `u32::from_be` yields it). IPv6
    /// sockets only when both ends are v4-mapped; None otherwise.
    #[inline(always)]
    pub fn from_ctx(
        family: u32,
        (local4, remote4): (u32, u32),
        (local6, remote6): ([u32; 4], [u32; 4]),
        local_port: u32,
        remote_port_be: u32,
    ) -> Option<SockKey> {
        let (local_ip, remote_ip) = if family == AF_INET {
            (local4, remote4)
        } else if family == AF_INET6
            && local6[0] == 0
            && local6[1] == 0
            && local6[2] == V4_MAPPED
            && remote6[0] == 0
            && remote6[1] == 0
            && remote6[2] == V4_MAPPED
        {
            (local6[3], remote6[3])
        } else {
            return None;
        };
        Some(SockKey {
            local_ip,
            remote_ip,
            local_port,
            remote_port: u32::from_be(remote_port_be),
        })
    }

    /// The key the other end of the same connection has.
    #[inline(always)]
    pub fn peer(&self) -> SockKey {
        SockKey {
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// `SockState::path` before the socket's first send.
pub const PATH_UNDECIDED: u32 = 0;
/// Every send of this socket goes straight to its peer's receive queue.
pub const PATH_REDIRECT: u32 = 1;
/// Every send of this socket takes the TCP/IP path (its first send found no
/// peer in the sockhash). Never changes back: bytes sent by TCP could still
/// be on their way, and a redirected byte must never overtake them.
pub const PATH_TCP: u32 = 2;

/// `SockState::flags`: the socket is a task's connection the connect hook
/// routed; the bytes it hands its peer are its alias's and backend's
/// `bytes_sent` (`service_id`, `backend_id`).
pub const SOCK_COUNTED: u32 = 1;
/// `SockState::flags`: the socket's peer is such a connection; the bytes it
/// hands that peer are the peer's `bytes_received` (the ids are the peer's).
pub const SOCK_PEER_COUNTED: u32 = 2;

/// Value of `KNIT_SOCK_STATE` (key: [`SockKey`]): what the sk_msg program
/// decided for one socket in the sockhash, and what it carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockState {
    /// [`PATH_UNDECIDED`], [`PATH_REDIRECT`] or [`PATH_TCP`].
    pub path: u32,
    /// [`SOCK_COUNTED`], [`SOCK_PEER_COUNTED`] or 0.
    pub flags: u32,
    pub service_id: u32,
    pub backend_id: u32,
    /// Bytes this socket handed straight to its peer. Written only under
    /// the socket's lock (sk_msg), added to the counters when it closes
    /// (sockops), like the TCP/IP bytes of the same connection.
    pub bytes: u64,
    /// The connecting task's cgroup id on a TCP service's connection (its
    /// `KNIT_EDGES` pair gets the bytes too); 0 otherwise.
    pub cgroup_id: u64,
}

/// Value of `KNIT_ACCEL_STATS[0]`, one per CPU: the fast path's totals
/// since the maps were created (the daemon sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AccelCounters {
    /// Sockets put into the sockhash.
    pub inserted: u64,
    /// Sends handed socket to socket.
    pub redirected_msgs: u64,
    /// Bytes handed socket to socket.
    pub redirected_bytes: u64,
    /// Sockets whose first send found no peer (they use TCP/IP throughout).
    pub tcp_fallback: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are #[repr(C)], Copy, made only of integers, and
    // have explicit padding fields, so every byte pattern is a valid value.
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AccelCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EdgeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenyEntry {}
}

#[cfg(test)]
mod tests {
    use super::SockKey;

    const LO: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
    const LO2: u32 = u32::from_ne_bytes([127, 0, 0, 2]);

    /// What the kernel hands a program for a remote port (network order in
    /// the upper half, as read on a little-endian machine).
    fn remote(port: u16) -> u32 {
        u32::from(port).to_be()
    }

    #[test]
    fn v4_and_v4_mapped_sockets_get_the_same_key() {
        let v4 = SockKey::from_ctx(2, (LO, LO2), ([0; 4], [0; 4]), 40000, remote(8080));
        let mapped = [0, 0, 0xffff_u32.to_be()];
        let v6 = SockKey::from_ctx(
            10,
            (0, 0),
            (
                [mapped[0], mapped[1], mapped[2], LO],
                [mapped[0], mapped[1], mapped[2], LO2],
            ),
            40000,
            remote(8080),
        );
        assert_eq!(v4, v6);
        let k = v4.expect("a v4 key");
        assert_eq!((k.local_port, k.remote_port), (40000, 8080));
    }

    #[test]
    fn real_ipv6_and_other_families_have_no_key() {
        let v6 = [0x2001_0db8_u32.to_be(), 0, 0, 1];
        assert_eq!(SockKey::from_ctx(10, (0, 0), (v6, v6), 1, remote(2)), None);
        assert_eq!(SockKey::from_ctx(1, (LO, LO), ([0; 4], [0; 4]), 1, 2), None);
    }

    #[test]
    fn the_peer_of_the_peer_is_the_socket_and_ends_meet() {
        let client =
            SockKey::from_ctx(2, (LO, LO2), ([0; 4], [0; 4]), 40000, remote(8080)).expect("client");
        let server =
            SockKey::from_ctx(2, (LO2, LO), ([0; 4], [0; 4]), 8080, remote(40000)).expect("server");
        assert_eq!(client.peer(), server);
        assert_eq!(server.peer().peer(), server);
    }
}
