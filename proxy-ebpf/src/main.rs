//! knit's eBPF programs. Entry points only: each is a thin wrapper over a
//! `try_*` function in its module, and the verdict is decided in one place.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomics lack fetch_add;
// the intrinsic lowers to BPF_XADD.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd is the only way to BPF_XADD")]

mod connect;
mod getpeername;
mod maps;
mod sk_msg;
mod sockops;

use aya_ebpf::{
    macros::{cgroup_sock_addr, sk_msg, sock_ops},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
};

/// `cgroup/connect4`: rewrite a task's connect to an L4 VIP to a backend.
#[cgroup_sock_addr(connect4)]
pub fn knit_connect4(ctx: SockAddrContext) -> i32 {
    connect::verdict(connect::try_connect4(&ctx))
}

/// `cgroup/connect6`: the same for IPv6 sockets dialing a v4-mapped VIP.
#[cgroup_sock_addr(connect6)]
pub fn knit_connect6(ctx: SockAddrContext) -> i32 {
    connect::verdict(connect::try_connect6(&ctx))
}

/// `cgroup/getpeername4`: the application sees the VIP it dialed as its peer.
#[cgroup_sock_addr(getpeername4)]
pub fn knit_peer4(ctx: SockAddrContext) -> i32 {
    getpeername::try_getpeername4(&ctx);
    1
}

/// `cgroup/getpeername6`: the same for v4-mapped IPv6 sockets.
#[cgroup_sock_addr(getpeername6)]
pub fn knit_peer6(ctx: SockAddrContext) -> i32 {
    getpeername::try_getpeername6(&ctx);
    1
}

/// `sockops` on the knit cgroup: per-service and per-backend connection
/// counters; tasks' same-host sockets into the sockhash.
#[sock_ops]
pub fn knit_sockops(ctx: SockOpsContext) -> u32 {
    sockops::try_sockops(&ctx, false);
    1
}

/// `sockops` on the daemon's own cgroup: its same-host sockets into the
/// sockhash.
#[sock_ops]
pub fn knit_sockops_daemon(ctx: SockOpsContext) -> u32 {
    sockops::try_sockops(&ctx, true);
    1
}

/// `sk_msg` on the sockhash: sends go straight to the peer socket.
#[sk_msg]
pub fn knit_sk_msg(ctx: SkMsgContext) -> u32 {
    sk_msg::try_sk_msg(&ctx);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
