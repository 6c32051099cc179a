//! cgroup connect4/connect6: the L4 short-circuit.
//!
//! A TCP connect from a task to an L4 VIP:port is rewritten to a backend
//! picked round-robin among the service's eligible backends. Everything else
//! (other addresses, UDP, L7 VIPs) passes untouched.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_map_lookup_elem,
        bpf_set_retval, bpf_sk_release,
    },
    programs::SockAddrContext,
};
use proxy_common::{
    maps::{
        BE_VIA_DAEMON, BackendKey, CFG_LISTENER, CONN_L7, CONN_TUNNEL, ConnInfo, DENY_ENFORCE,
        EdgeKey, MODE_L7, VIP_MASK, VIP_NET, VipKey,
    },
    select::pick_slot,
};

use crate::maps::{
    KNIT_BACKENDS, KNIT_CONFIG, KNIT_CONNS, KNIT_DENY, KNIT_LISTEN, KNIT_RR, KNIT_SERVICES,
    KNIT_TASK_NS,
};

const SOCK_STREAM: u32 = 1;

/// What the hook decided; turned into the kernel's verdict in [`verdict`].
pub enum Decision {
    /// Not ours: let the connect proceed unchanged.
    Pass,
    /// Rewritten to a backend.
    Rewritten,
    /// A VIP of a service with no eligible backend: refuse the connect.
    NoBackend,
    /// A VIP whose `allowedClients` leaves the task's service out.
    Denied,
}

const ECONNREFUSED: i32 = 111;
const EPERM: i32 = 1;

/// 1 lets the connect go on (rewritten or not); 0 makes it fail, with
/// ECONNREFUSED (what a client expects of a service with nothing behind it)
/// rather than the hook's default EPERM.
#[inline(always)]
pub fn verdict(d: Decision) -> i32 {
    match d {
        Decision::Pass | Decision::Rewritten => 1,
        Decision::NoBackend => {
            // SAFETY: a helper call without pointers; cgroup connect hooks
            // may set the syscall's return value (Linux 6.1+).
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            0
        }
        Decision::Denied => {
            // SAFETY: as above.
            unsafe { bpf_set_retval(-EPERM) };
            0
        }
    }
}

#[inline(always)]
fn is_vip(ip_be: u32) -> bool {
    (u32::from_be(ip_be) & VIP_MASK) == VIP_NET
}

pub fn try_connect4(ctx: &SockAddrContext) -> Decision {
    // SAFETY: the kernel hands a valid bpf_sock_addr to this program type.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return Decision::Pass;
    }
    let ip = sa.user_ip4;
    if !is_vip(ip) {
        return Decision::Pass;
    }
    let port = sa.user_port as u16;
    let mut denied = false;
    match route(ctx, ip, port, &mut denied) {
        Some((bip, bport)) => {
            sa.user_ip4 = bip;
            sa.user_port = bport as u32;
            Decision::Rewritten
        }
        None if denied => Decision::Denied,
        None => Decision::Pass,
    }
    .or_no_backend(ip, port)
}

pub fn try_connect6(ctx: &SockAddrContext) -> Decision {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return Decision::Pass;
    }
    let w = sa.user_ip6;
    // ::ffff:a.b.c.d
    if w[0] != 0 || w[1] != 0 || w[2] != 0xffffu32.to_be() || !is_vip(w[3]) {
        return Decision::Pass;
    }
    let ip = w[3];
    let port = sa.user_port as u16;
    let mut denied = false;
    match route(ctx, ip, port, &mut denied) {
        Some((bip, bport)) => {
            sa.user_ip6 = [0, 0, 0xffffu32.to_be(), bip];
            sa.user_port = bport as u32;
            Decision::Rewritten
        }
        None if denied => Decision::Denied,
        None => Decision::Pass,
    }
    .or_no_backend(ip, port)
}

trait OrNoBackend {
    fn or_no_backend(self, ip: u32, port: u16) -> Decision;
}

impl OrNoBackend for Decision {
    /// A VIP of a known service that could not be routed is refused rather
    /// than sent to whatever might listen on 127.255.x.y:port.
    #[inline(always)]
    fn or_no_backend(self, ip: u32, port: u16) -> Decision {
        match self {
            Decision::Pass => {
                let key = VipKey { ip, port, _pad: 0 };
                if KNIT_SERVICES.get_ptr(&key).is_some() {
                    Decision::NoBackend
                } else {
                    Decision::Pass
                }
            }
            d => d,
        }
    }
}

/// Where a connect to VIP `ip`:`port` (network order) goes: the daemon's
/// egress listener for an L7 service, else a backend picked round-robin.
/// The choice is recorded under the socket's cookie. A task whose service
/// the alias's `allowedClients` leaves out is counted, and refused
/// (`denied`) unless the alias only audits.
#[inline(always)]
fn route(ctx: &SockAddrContext, ip: u32, port: u16, denied: &mut bool) -> Option<(u32, u16)> {
    let key = VipKey { ip, port, _pad: 0 };
    let svc = KNIT_SERVICES.get_ptr(&key)?;
    // SAFETY: map values stay valid for the program's run.
    let svc = unsafe { *svc };
    // Only tasks of the alias's namespace are routed; any other task is
    // refused, as if the name did not exist for it.
    // SAFETY: a helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    if KNIT_TASK_NS.get_ptr(&cgroup).map(|ns| unsafe { *ns }) != Some(svc.ns_id) {
        return None;
    }
    let pair = EdgeKey {
        cgroup_id: cgroup,
        service_id: svc.service_id,
        _pad: 0,
    };
    if let Some(d) = KNIT_DENY.get_ptr_mut(&pair) {
        // SAFETY: a live map value; the add is an atomic BPF_XADD.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*d).count, 1) };
        // SAFETY: as above.
        if unsafe { (*d).action } == DENY_ENFORCE {
            *denied = true;
            return None;
        }
    }
    let alive = daemon_alive();
    let (dst, backend_id, flags) = if svc.mode == MODE_L7 && alive {
        // SAFETY: as above.
        let cfg = unsafe { *KNIT_CONFIG.get_ptr(0)? };
        ((cfg.egress_ip, cfg.egress_port), 0, CONN_L7)
    } else {
        // TCP services; and L7 services while the daemon is away (fail
        // open): straight to an endpoint, as plain TCP.
        let be = pick(&svc)?;
        if be.flags & BE_VIA_DAEMON != 0 {
            // Another host's endpoint of a service with tls: only through
            // the daemon (mutual TLS), never in the clear; refused while
            // the daemon is away.
            if svc.mode == MODE_L7 || !alive {
                return None;
            }
            // SAFETY: as above.
            let cfg = unsafe { *KNIT_CONFIG.get_ptr(0)? };
            (
                (cfg.egress_ip, cfg.egress_port),
                be.backend_id,
                CONN_L7 | CONN_TUNNEL,
            )
        } else {
            ((be.ip, be.port), be.backend_id, 0)
        }
    };
    // SAFETY: valid context pointer for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let info = ConnInfo {
        vip_ip: ip,
        vip_port: port,
        flags,
        service_id: svc.service_id,
        backend_id,
        cgroup_id: cgroup,
    };
    // A full LRU evicts the oldest entry; a failed insert only costs the
    // getpeername rewrite and the counters of this one connection.
    let _ = KNIT_CONNS.insert(&cookie, &info, 0);
    Some(dst)
}

/// Is the daemon's egress listener up? Its heartbeat (CLOCK_MONOTONIC ns,
/// written every monitor tick) must be fresher than [`HEARTBEAT_STALE_NS`]
/// and an egress port published. Otherwise L7 connects go straight to an
/// endpoint rather than to a dead (or, worse, reused) port.
#[inline(always)]
fn daemon_alive() -> bool {
    let Some(cfg) = KNIT_CONFIG.get_ptr(0) else {
        return false;
    };
    // SAFETY: map values stay valid for the program's run.
    let cfg = unsafe { *cfg };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    cfg.egress_port != 0
        && cfg.heartbeat_ns != 0
        && now.saturating_sub(cfg.heartbeat_ns) < HEARTBEAT_STALE_NS
        && (cfg.flags & CFG_LISTENER == 0 || egress_listening())
}

/// Is the egress listener still open? The kernel drops a socket from
/// `KNIT_LISTEN` when it closes: a killed daemon is seen at once.
#[inline(always)]
fn egress_listening() -> bool {
    let key: u32 = 0;
    // SAFETY: the static's address is the map (the loader relocates it);
    // a sockmap lookup returns a referenced socket or null.
    let sk = unsafe {
        bpf_map_lookup_elem(
            (&raw const KNIT_LISTEN).cast_mut().cast(),
            (&raw const key).cast(),
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: the reference the lookup took, given back.
    unsafe { bpf_sk_release(sk) };
    true
}

/// A heartbeat older than this means the daemon is gone.
const HEARTBEAT_STALE_NS: u64 = proxy_common::maps::HEARTBEAT_STALE_MS * 1_000_000;

/// The next backend of an L4 service, round-robin.
#[inline(always)]
fn pick(svc: &proxy_common::maps::ServiceEntry) -> Option<proxy_common::maps::Backend> {
    let cursor = KNIT_RR.get_ptr_mut(svc.service_id)?;
    // SAFETY: a live array value. SeqCst: LLVM lowers a relaxed add whose
    // result is used to a plain `lock add` (no fetch); this gives
    // BPF_ATOMIC | BPF_FETCH, so round-robin stays exact across CPUs.
    let n = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(cursor, 1) };
    let slot = pick_slot(n, svc.backend_count)?;
    let be = KNIT_BACKENDS
        .get_ptr(&BackendKey {
            service_id: svc.service_id,
            slot,
        })
        .or_else(|| {
            KNIT_BACKENDS.get_ptr(&BackendKey {
                service_id: svc.service_id,
                slot: 0,
            })
        })?;
    // SAFETY: map values stay valid for the program's run.
    Some(unsafe { *be })
}
