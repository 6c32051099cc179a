//! `cargo xtask`: everything around the code. Each subcommand lives in its own
//! module; every subcommand but `setup` runs `setup` first, which is quick
//! when the machine already has what knit needs.
//!
//! A thin launcher: it builds from nothing but rustup (no protoc, aya or
//! tokio), so that it can install them. What needs them is built after
//! setup and run as a binary of its own: the benchmarks (`knit-bench`, in
//! bench/) and the demo (`knit-demo`, in tests/).
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod faults;
mod install;
mod setup;
mod test;
mod vm;

use xtask::{build, util};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "knit's development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (rust-src, bpf-linker, apt packages); idempotent.
    Setup,
    /// Build the eBPF programs (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build the eBPF programs and the `knit` binary.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run every test: fmt, clippy, unit and integration tests, then the VM tests.
    Test {
        /// Skip the VM tests (they take a few minutes under TCG).
        #[arg(long)]
        no_vm: bool,
        /// Then the long checks too: the VM's datapath tests on Debian's
        /// 6.12 kernel, and `cargo xtask faults` (fault tests at full
        /// length, the dashboard's 15 minutes around an endpoint restart,
        /// and every fuzz target for 10 minutes).
        #[arg(long)]
        long: bool,
    },
    /// Run the cargo-fuzz targets, each for a bounded time; the corpus grows in fuzz/corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Targets (default: all): ecs_json, knit_toml, http_head, map_encoding.
        targets: Vec<String>,
    },
    /// The long fault suite: fault tests at full length, the dashboard's 15 minutes, then every fuzz target.
    Faults {
        /// Seconds per fuzz target (0: no fuzzing).
        #[arg(long, default_value_t = 600)]
        fuzz_seconds: u64,
    },
    /// knit under a real systemd: a Debian 12 root (mmdebstrap) with knit installed by `install --root`, booted under qemu with systemd as PID 1; the tests drive systemctl, journalctl and the CLI.
    VmSystemd {
        /// Only run tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Debian 12's kernel to boot (default: 6.1, then 6.12).
        #[arg(long = "debian-kernel", value_enum)]
        debian_kernel: Option<vm::kernel::Debian>,
    },
    /// Boot a Debian 12 kernel (6.1 unless told) under qemu and run the datapath tests inside.
    VmTest {
        /// Only run tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Use this kernel image instead of a Debian 12 one.
        #[arg(long, conflicts_with = "debian_kernel")]
        kernel: Option<PathBuf>,
        /// Debian 12's kernel to boot: 6.1 (linux-image-cloud-amd64) or 6.12.
        #[arg(long = "debian-kernel", value_enum, default_value = "6.1")]
        debian_kernel: vm::kernel::Debian,
    },
    /// Run the benchmarks and write their tables into BENCHMARKS.md, the
    /// summary and the chart (docs/bench.svg).
    ///
    /// With no argument every benchmark runs, one after the other (about
    /// 25 minutes on a quiet 2-CPU machine); name one to run only it.
    /// --quick runs each briefly (about 2 minutes in all) and checks its
    /// figures are sane (CI), writing target/BENCHMARKS.quick.md.
    Bench {
        /// all (the default), or one of: l4, l7, accel, xfer, memory, admin,
        /// propagation; chart redraws the chart and summary only.
        #[arg(default_value = "all")]
        which: String,
        /// Few and short runs that only prove the benchmarks work (for CI).
        #[arg(long)]
        quick: bool,
    },
    /// Start a daemon, sample tasks and real traffic, and show what happened.
    Demo,
    /// Install knit: binary, systemd unit, a commented default config.
    Install {
        /// Install under this directory instead of / (a staging root).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => {
            setup::run()?;
            build::ebpf()
        }
        Cmd::Build { release } => {
            setup::run()?;
            build::all(release)
        }
        Cmd::Test { no_vm, long } => {
            setup::run()?;
            test::run(!no_vm)?;
            if long {
                if !no_vm {
                    util::step("the datapath tests in a VM on Debian's 6.12 kernel too");
                    vm::run(&vm::VmArgs {
                        filter: None,
                        kernel: None,
                        debian: vm::kernel::Debian::V6_12,
                    })?;
                }
                faults::faults(600)?;
            }
            Ok(())
        }
        Cmd::Fuzz { seconds, targets } => {
            setup::run()?;
            faults::fuzz(seconds, &targets)
        }
        Cmd::Faults { fuzz_seconds } => {
            setup::run()?;
            faults::faults(fuzz_seconds)
        }
        Cmd::VmSystemd {
            filter,
            debian_kernel,
        } => {
            setup::run()?;
            let kernels = match debian_kernel {
                Some(k) => vec![k],
                None => vec![vm::kernel::Debian::V6_1, vm::kernel::Debian::V6_12],
            };
            for k in kernels {
                vm::systemd::run(filter.as_deref(), k)?;
            }
            Ok(())
        }
        Cmd::VmTest {
            filter,
            kernel,
            debian_kernel,
        } => {
            setup::run()?;
            vm::run(&vm::VmArgs {
                filter,
                kernel,
                debian: debian_kernel,
            })
        }
        Cmd::Bench { which, quick } => {
            setup::run()?;
            bench::run(&which, quick)
        }
        Cmd::Demo => {
            setup::run()?;
            demo::run()
        }
        Cmd::Install { root } => {
            setup::run()?;
            install::run(root)
        }
    }
}
