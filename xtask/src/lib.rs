//! What `cargo xtask` and the crates it launches after setup (knit-bench)
//! share: the repository root, running commands with their command line
//! shown, step banners, and building the eBPF programs and `knit`.
//!
//! This crate depends on small crates only, so that it builds on a fresh
//! machine before `cargo xtask setup` has installed protoc, bpf-linker and
//! the rest (`.ci/run` checks it).
pub mod build;
pub mod util;
