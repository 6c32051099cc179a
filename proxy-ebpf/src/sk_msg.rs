//! sk_msg on `KNIT_SOCKS`: same-host acceleration.
//!
//! Runs for every send on a socket in the sockhash, under the socket's lock.
//! The first send decides the socket's path for good: if the peer socket is
//! in the sockhash, this send and every later one go straight into the
//! peer's receive queue (`bpf_msg_redirect_hash` with `BPF_F_INGRESS`);
//! otherwise all of them take the TCP/IP path.
//!
//! Why for good: a receiver in the sockhash reads redirected bytes before
//! those waiting in its TCP receive queue. Bytes sent by TCP first and
//! redirected after could be read out of order; redirected first and TCP
//! after (the peer left the map because it is closing, or our state was
//! evicted) is read in order. So a socket may fall back, never move up.
//! The verdict is always SK_PASS: a failed redirect sends by TCP/IP.
use aya_ebpf::programs::SkMsgContext;
use proxy_common::maps::{PATH_REDIRECT, PATH_TCP, PATH_UNDECIDED, SockKey};

use crate::maps::{KNIT_ACCEL_STATS, KNIT_SOCK_STATE, KNIT_SOCKS};

const BPF_F_INGRESS: u64 = 1;
const SK_PASS: i64 = 1;

#[inline(always)]
fn msg_key(ctx: &SkMsgContext) -> Option<SockKey> {
    // Read unconditionally and volatile, like sockops' context reads.
    // SAFETY: the kernel hands a valid sk_msg_md to this program type.
    unsafe {
        let m = ctx.msg;
        let v = |p: *const u32| core::ptr::read_volatile(p);
        SockKey::from_ctx(
            v(&raw const (*m).family),
            (v(&raw const (*m).local_ip4), v(&raw const (*m).remote_ip4)),
            (
                [
                    v(&raw const (*m).local_ip6[0]),
                    v(&raw const (*m).local_ip6[1]),
                    v(&raw const (*m).local_ip6[2]),
                    v(&raw const (*m).local_ip6[3]),
                ],
                [
                    v(&raw const (*m).remote_ip6[0]),
                    v(&raw const (*m).remote_ip6[1]),
                    v(&raw const (*m).remote_ip6[2]),
                    v(&raw const (*m).remote_ip6[3]),
                ],
            ),
            v(&raw const (*m).local_port),
            v(&raw const (*m).remote_port),
        )
    }
}

pub fn try_sk_msg(ctx: &SkMsgContext) {
    let Some(key) = msg_key(ctx) else {
        return;
    };
    let Some(st) = KNIT_SOCK_STATE.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: map value valid for this run; this socket's lock serializes
    // its sends, so nobody else writes `path` or `bytes` meanwhile.
    let path = unsafe { (*st).path };
    if path == PATH_TCP {
        return;
    }
    let mut peer = key.peer();
    let stats = KNIT_ACCEL_STATS.get_ptr_mut(0);
    if KNIT_SOCKS.redirect_msg(ctx, &mut peer, BPF_F_INGRESS) != SK_PASS {
        if path == PATH_UNDECIDED {
            // SAFETY: as above.
            unsafe { (*st).path = PATH_TCP };
            if let Some(s) = stats {
                // SAFETY: this CPU's value of a live per-CPU map.
                unsafe { (*s).tcp_fallback += 1 };
            }
        }
        return;
    }
    let bytes = u64::from(ctx.size());
    // SAFETY: as above. The alias and backend counters get these bytes when
    // the socket closes (sockops): nothing shared is touched per send.
    unsafe {
        (*st).path = PATH_REDIRECT;
        (*st).bytes += bytes;
    }
    if let Some(s) = stats {
        // SAFETY: this CPU's value of a live per-CPU map; sk_msg runs with
        // migration disabled.
        unsafe {
            (*s).redirected_msgs += 1;
            (*s).redirected_bytes += bytes;
        }
    }
}
