//! cgroup getpeername4/6: report the VIP the application dialed, not the
//! backend the connect hook chose (some clients check their peer).
use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, programs::SockAddrContext};

use crate::maps::KNIT_CONNS;

pub fn try_getpeername4(ctx: &SockAddrContext) {
    // SAFETY: valid context pointer for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(info) = KNIT_CONNS.get_ptr(&cookie) {
        // SAFETY: the kernel hands a valid bpf_sock_addr; map value valid now.
        unsafe {
            let sa = &mut *ctx.sock_addr;
            sa.user_ip4 = (*info).vip_ip;
            sa.user_port = (*info).vip_port as u32;
        }
    }
}

pub fn try_getpeername6(ctx: &SockAddrContext) {
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(info) = KNIT_CONNS.get_ptr(&cookie) {
        // SAFETY: as above.
        unsafe {
            let sa = &mut *ctx.sock_addr;
            sa.user_ip6 = [0, 0, 0xffffu32.to_be(), (*info).vip_ip];
            sa.user_port = (*info).vip_port as u32;
        }
    }
}
