//! `cargo xtask build-ebpf` and `build`.
use anyhow::Result;

use crate::util::{self, step};

/// Build proxy-ebpf with the nightly toolchain for bpfel-unknown-none.
pub fn ebpf() -> Result<()> {
    step("building the eBPF programs");
    let dir = util::root().join("proxy-ebpf");
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(&dir)
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        // The workspace's stable toolchain must not leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    util::run(&mut cmd)
}

/// Build the eBPF programs, then the daemon (which embeds them) and the tests' helpers.
pub fn all(release: bool) -> Result<()> {
    ebpf()?;
    step("building knit");
    let mut cmd = util::cargo();
    cmd.current_dir(util::root()).args([
        "build",
        "-p",
        "proxy-daemon",
        "-p",
        "knit-tests",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)
}
