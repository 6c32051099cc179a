//! sockops: counters per service and per backend for connections the connect
//! hook routed (found by socket cookie in `KNIT_CONNS`).
//!
//! TCP_CONNECT asks for state callbacks on our sockets; ACTIVE_ESTABLISHED
//! counts a new connection; the move to TCP_CLOSE counts either a failed
//! connect (from SYN_SENT) or a closed connection with its bytes.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, programs::SockOpsContext};
use proxy_common::maps::{CONN_L7, OrigKey};

use crate::maps::{KNIT_BE_STATS, KNIT_CONNS, KNIT_ORIG, KNIT_SVC_STATS};

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
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

pub fn try_sockops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB
        && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_STATE_CB
    {
        return;
    }
    // SAFETY: valid context pointer for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(info) = KNIT_CONNS.get_ptr(&cookie) else {
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
            for c in [svc, be].into_iter().flatten() {
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
            // leave tells which; count payload bytes only.
            let fin_acked = matches!(old, TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING);
            let fin_received = fin_acked || old == TCP_CLOSE_WAIT;
            let sent = acked.saturating_sub(1 + fin_acked as u64);
            let received = received.saturating_sub(fin_received as u64);
            for c in [svc, be].into_iter().flatten() {
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
            let _ = KNIT_CONNS.remove(&cookie);
        }
    }
}
