//! sockops: counters per service and per backend for connections the connect
//! hook routed (found by socket cookie in `KNIT_CONNS`), and the sockhash of
//! same-host acceleration.
//!
//! TCP_CONNECT asks for state callbacks on our sockets; ACTIVE_ESTABLISHED
//! counts a new connection; the move to TCP_CLOSE counts either a failed
//! connect (from SYN_SENT) or a closed connection with its bytes.
//!
//! The same code runs twice: on the knit cgroup (tasks' sockets) and on the
//! daemon's own cgroup (`daemon`: the egress listener's accepted sockets and
//! the proxy's connections to local tasks). A socket goes into `KNIT_SOCKS`
//! when it is established with both ends on this host and it is one of
//! knit's: a task's connection the connect hook routed, a connection the
//! daemon opened, or the accepted end of a connection whose other end is
//! already in the map. The sk_msg program (`sk_msg.rs`) does the rest.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, programs::SockOpsContext};
use proxy_common::maps::{
    CFG_ACCELERATE, CONN_L7, CONN_TUNNEL, ConnInfo, Counters, EdgeKey, OrigKey, SOCK_COUNTED,
    SOCK_PEER_COUNTED, SockKey, SockState,
};

use crate::maps::{
    KNIT_ACCEL_STATS, KNIT_BE_STATS, KNIT_CONFIG, KNIT_CONNS, KNIT_EDGES, KNIT_ORIG,
    KNIT_SOCK_STATE, KNIT_SOCKS, KNIT_SVC_STATS,
};

const BPF_NOEXIST: u64 = 1;

/// An L7 connection: the proxy counts its requests per edge. (A TCP
/// connection the daemon carries over mutual TLS is counted here, as TCP.)
#[inline(always)]
fn counted_by_proxy(info: &ConnInfo) -> bool {
    info.flags & CONN_L7 != 0 && info.flags & CONN_TUNNEL == 0
}

/// The counters of the service graph's edge of a TCP connection (the task
/// that made it -> the alias it dialed), created on first use. None for L7
/// connections: the proxy counts their requests per edge.
#[inline(always)]
fn edge(info: &ConnInfo) -> Option<*mut Counters> {
    if counted_by_proxy(info) {
        return None;
    }
    edge_of(info.cgroup_id, info.service_id)
}

#[inline(always)]
fn edge_of(cgroup_id: u64, service_id: u32) -> Option<*mut Counters> {
    let key = EdgeKey {
        cgroup_id,
        service_id,
        _pad: 0,
    };
    if let Some(c) = KNIT_EDGES.get_ptr_mut(&key) {
        return Some(c);
    }
    // Another CPU may create it meanwhile: NOEXIST keeps its counts.
    let _ = KNIT_EDGES.insert(&key, &Counters::default(), BPF_NOEXIST);
    KNIT_EDGES.get_ptr_mut(&key)
}

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 1 << 2;
const TCP_SYN_SENT: u32 = 2;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

#[inline(always)]
fn add(field: *mut u64, v: u64) {
    // SAFETY: `field` points into a map value that lives for this run;
    // the add is an atomic BPF_XADD (result unused).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, v) };
}

const AF_INET6: u32 = 10;

/// This socket's local end, as the egress listener will see its peer.
#[inline(always)]
fn local_end(ctx: &SockOpsContext) -> OrigKey {
    // Both fields are read unconditionally and volatile: a branch would let
    // LLVM select between two ctx pointers and load through the result,
    // which the 6.1 verifier rejects ("dereference of modified ctx ptr").
    // SAFETY: valid context pointer; plain field reads.
    let (ip4, ip6) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ops).local_ip4),
            core::ptr::read_volatile(&raw const (*ctx.ops).local_ip6[3]),
        )
    };
    OrigKey {
        ip: if ctx.family() == AF_INET6 { ip6 } else { ip4 },
        port: ctx.local_port() as u16,
        _pad: 0,
    }
}

/// This socket as a [`SockKey`] (None: IPv6 that is not v4-mapped).
#[inline(always)]
fn sock_key(ctx: &SockOpsContext) -> Option<SockKey> {
    // Every field read unconditionally and volatile, as in `local_end`.
    // SAFETY: valid context pointer; plain field reads.
    let (l4, r4, l6, r6) = unsafe {
        let o = ctx.ops;
        (
            core::ptr::read_volatile(&raw const (*o).local_ip4),
            core::ptr::read_volatile(&raw const (*o).remote_ip4),
            [
                core::ptr::read_volatile(&raw const (*o).local_ip6[0]),
                core::ptr::read_volatile(&raw const (*o).local_ip6[1]),
                core::ptr::read_volatile(&raw const (*o).local_ip6[2]),
                core::ptr::read_volatile(&raw const (*o).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&raw const (*o).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*o).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*o).remote_ip6[2]),
                core::ptr::read_volatile(&raw const (*o).remote_ip6[3]),
            ],
        )
    };
    SockKey::from_ctx(
        ctx.family(),
        (l4, r4),
        (l6, r6),
        ctx.local_port(),
        ctx.remote_port(),
    )
}

/// Both ends on this host: the peer is on loopback or at our own address.
#[inline(always)]
fn is_local(key: &SockKey) -> bool {
    u32::from_be(key.remote_ip) >> 24 == 127 || key.remote_ip == key.local_ip
}

#[inline(always)]
fn accelerating() -> bool {
    // SAFETY: map value valid for this run.
    KNIT_CONFIG
        .get_ptr(0)
        .is_some_and(|c| unsafe { (*c).flags } & CFG_ACCELERATE != 0)
}

/// Put this socket into the sockhash. Its state goes first: the sk_msg
/// program must never see a socket of the map without one.
#[inline(always)]
fn insert(ctx: &SockOpsContext, mut key: SockKey, state: SockState) {
    if KNIT_SOCK_STATE.insert(&key, &state, 0).is_err() {
        return;
    }
    // SAFETY: valid context pointer for this program type; the helper only
    // reads the socket it points to.
    if KNIT_SOCKS
        .update(&mut key, unsafe { &mut *ctx.ops }, 0)
        .is_err()
    {
        let _ = KNIT_SOCK_STATE.remove(&key);
        return;
    }
    // Close tells us when to drop the state.
    let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG);
    if let Some(s) = KNIT_ACCEL_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's value of a live per-CPU map.
        unsafe { (*s).inserted += 1 };
    }
}

/// A socket of the sockhash closes: what it handed its peer joins the
/// counters (once per connection, not per send), and its state goes.
#[inline(always)]
fn close_state(key: &SockKey) {
    if let Some(st) = KNIT_SOCK_STATE.get_ptr(key) {
        // SAFETY: map value valid for this run.
        let st = unsafe { *st };
        let sent = st.flags & SOCK_COUNTED != 0;
        if st.bytes > 0 && (sent || st.flags & SOCK_PEER_COUNTED != 0) {
            let svc = KNIT_SVC_STATS.get_ptr_mut(&st.service_id);
            let be = KNIT_BE_STATS.get_ptr_mut(&st.backend_id);
            let edge = if st.cgroup_id != 0 {
                edge_of(st.cgroup_id, st.service_id)
            } else {
                None
            };
            for c in [svc, be, edge].into_iter().flatten() {
                // SAFETY: pointers into live map values; atomic adds.
                unsafe {
                    if sent {
                        add(&raw mut (*c).bytes_sent, st.bytes);
                    } else {
                        add(&raw mut (*c).bytes_received, st.bytes);
                    }
                }
            }
        }
    }
    let _ = KNIT_SOCK_STATE.remove(key);
}

pub fn try_sockops(ctx: &SockOpsContext, daemon: bool) {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB
        && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_STATE_CB
    {
        return;
    }
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        // The accepted end of a connection: ours when its other end is.
        // What it sends the other end, that end receives: a counted peer
        // lends its ids.
        if accelerating()
            && let Some(key) = sock_key(ctx)
            && let Some(peer) = KNIT_SOCK_STATE.get_ptr(&key.peer())
        {
            // SAFETY: map value valid for this run.
            let peer = unsafe { *peer };
            let state = if peer.flags & SOCK_COUNTED != 0 {
                SockState {
                    flags: SOCK_PEER_COUNTED,
                    service_id: peer.service_id,
                    backend_id: peer.backend_id,
                    cgroup_id: peer.cgroup_id,
                    ..SockState::default()
                }
            } else {
                SockState::default()
            };
            insert(ctx, key, state);
        }
        return;
    }
    if daemon {
        // The daemon's own connections never pass the connect hook.
        match op {
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
                if accelerating()
                    && let Some(key) = sock_key(ctx)
                    && is_local(&key)
                {
                    insert(ctx, key, SockState::default());
                }
            }
            BPF_SOCK_OPS_STATE_CB => {
                if ctx.arg(1) == TCP_CLOSE
                    && let Some(key) = sock_key(ctx)
                {
                    close_state(&key);
                }
            }
            _ => {}
        }
        return;
    }
    // SAFETY: valid context pointer for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(info) = KNIT_CONNS.get_ptr(&cookie) else {
        // Not routed by the connect hook: an accepted socket we put in the
        // sockhash, closing.
        if op == BPF_SOCK_OPS_STATE_CB
            && ctx.arg(1) == TCP_CLOSE
            && let Some(key) = sock_key(ctx)
        {
            close_state(&key);
        }
        return;
    };
    // SAFETY: map value valid for this run.
    let info = unsafe { *info };
    let svc = KNIT_SVC_STATS.get_ptr_mut(&info.service_id);
    let be = KNIT_BE_STATS.get_ptr_mut(&info.backend_id);
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            for c in [svc, be, edge(&info)].into_iter().flatten() {
                // SAFETY: pointers into live map values.
                unsafe {
                    add(&raw mut (*c).new_conns, 1);
                    add(&raw mut (*c).active, 1);
                }
            }
            if let Some(be) = be {
                // SAFETY: as above; a plain store, racing adds only delay ejection.
                unsafe { (*be).consecutive_failures = 0 };
            }
            if info.flags & CONN_L7 != 0 {
                // The egress listener looks the VIP up by our address on accept;
                // the entry is in place before the final ACK reaches it.
                let _ = KNIT_ORIG.insert(&local_end(ctx), &info, 0);
            }
            if accelerating()
                && let Some(key) = sock_key(ctx)
                && is_local(&key)
            {
                let state = SockState {
                    flags: SOCK_COUNTED,
                    service_id: info.service_id,
                    backend_id: info.backend_id,
                    cgroup_id: if !counted_by_proxy(&info) {
                        info.cgroup_id
                    } else {
                        0
                    },
                    ..SockState::default()
                };
                insert(ctx, key, state);
            }
        }
        _ => {
            if ctx.arg(1) != TCP_CLOSE {
                return;
            }
            let old = ctx.arg(0);
            // SAFETY: valid context pointer.
            let (acked, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
            // The kernel's counts include the sequence numbers of control
            // segments: our SYN (always, once established), our FIN once it
            // was acked, and the peer's FIN once received. The state we
            // leave tells which; count payload bytes only. (Bytes that took
            // the sk_msg fast path never reach TCP: `close_state` adds
            // those.)
            let fin_acked = matches!(old, TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING);
            let fin_received = fin_acked || old == TCP_CLOSE_WAIT;
            let sent = acked.saturating_sub(1 + fin_acked as u64);
            let received = received.saturating_sub(fin_received as u64);
            for c in [svc, be, edge(&info)].into_iter().flatten() {
                // SAFETY: pointers into live map values.
                unsafe {
                    if old == TCP_SYN_SENT {
                        add(&raw mut (*c).failed, 1);
                        add(&raw mut (*c).consecutive_failures, 1);
                    } else {
                        // -1, wrapping: BPF has an atomic add but no atomic sub.
                        add(&raw mut (*c).active, u64::MAX);
                        add(&raw mut (*c).bytes_sent, sent);
                        add(&raw mut (*c).bytes_received, received);
                    }
                }
            }
            if info.flags & CONN_L7 != 0 {
                let _ = KNIT_ORIG.remove(&local_end(ctx));
            }
            if let Some(key) = sock_key(ctx) {
                close_state(&key);
            }
            let _ = KNIT_CONNS.remove(&cookie);
        }
    }
}
