//! Types shared by knit's eBPF programs (`proxy-ebpf`) and its daemon.
//!
//! Everything here is `no_std` and `#[repr(C)]`: the kernel and userspace read
//! the same bytes. The `user` feature adds `aya::Pod` impls for the daemon.
#![no_std]

pub mod maps;
pub mod select;
