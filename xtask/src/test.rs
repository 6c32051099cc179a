//! `cargo xtask test`: the README's test command. Lints, unit tests,
//! integration tests on this kernel, the demo, every benchmark briefly
//! (`--quick`: they still work), then the same datapath tests in a VM
//! running Debian 12's 6.1 kernel, and knit installed in a Debian 12 root
//! booted with systemd as PID 1 (`cargo xtask vm-systemd`).
use std::process::Command;

use anyhow::Result;

use crate::{
    bench, build, demo,
    util::{self, step},
    vm,
};

pub fn run(with_vm: bool) -> Result<()> {
    let root = util::root();
    build::ebpf()?;
    step("format check");
    util::run(
        util::cargo()
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    util::run(util::cargo().current_dir(&root).args([
        "fmt",
        "--manifest-path",
        "proxy-ebpf/Cargo.toml",
        "--check",
    ]))?;
    step("clippy (-D warnings)");
    util::run(util::cargo().current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    build::all(false)?;
    step("unit tests");
    util::run(
        util::cargo()
            .current_dir(&root)
            .args(["test", "--workspace", "--exclude", "knit-tests"])
            // The benchmarks' Envoy configs are checked by Envoy itself.
            .env("KNIT_ENVOY", crate::setup::envoy_binary()),
    )?;
    step("integration tests on this kernel (real daemons, cgroups, eBPF; one at a time)");
    let mut cmd: Command = util::cargo();
    cmd.current_dir(&root)
        .args(["test", "-p", "knit-tests", "--", "--test-threads=1"]);
    util::run(&mut cmd)?;
    step("the README's first command: cargo xtask demo");
    demo::run()?;
    step("every benchmark, briefly: cargo xtask bench --quick (target/BENCHMARKS.quick.md)");
    bench::run("all", true)?;
    if with_vm {
        step("datapath tests inside a VM (Debian 12, Linux 6.1)");
        vm::run(&vm::VmArgs {
            filter: None,
            kernel: None,
            debian: vm::kernel::Debian::V6_1,
        })?;
        for k in [vm::kernel::Debian::V6_1, vm::kernel::Debian::V6_12] {
            step(&format!(
                "knit under a real systemd (PID 1) in a VM, Linux {}: cargo xtask vm-systemd",
                k.name()
            ));
            vm::systemd::run(None, k)?;
        }
    }
    step("all tests passed");
    Ok(())
}
