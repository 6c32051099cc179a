//! Finds the eBPF object that `cargo xtask build-ebpf` produced so that the
//! daemon can embed it. Set KNIT_EBPF_OBJECT to use another one.
//!
//! When the object is missing (a fresh clone: `cargo check`, clippy,
//! rust-analyzer), the build goes on with an empty stub object and a
//! warning, as aya-build does: the crate type-checks and its unit tests
//! run, and a daemon built this way refuses to start, saying how to build
//! the real object. Once the object exists, the next build embeds it.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KNIT_EBPF_OBJECT");
    let obj = std::env::var_os("KNIT_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../proxy-ebpf/target/bpfel-unknown-none/release/proxy-ebpf")
        });
    // A path that does not exist makes cargo rerun this script on every
    // build, so the real object replaces the stub as soon as it is built.
    println!("cargo:rerun-if-changed={}", obj.display());
    if obj.exists() {
        println!("cargo:rustc-env=KNIT_EBPF_OBJECT={}", obj.display());
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let stub = out.join("proxy-ebpf.stub");
    if let Err(e) = std::fs::write(&stub, b"") {
        panic!("writing the stub eBPF object {}: {e}", stub.display());
    }
    println!(
        "cargo:warning=the eBPF object {} is missing: building with an empty stub (type-checking, \
         clippy and unit tests work; the daemon will not start). Build the real one with \
         `cargo xtask build` (or `cargo xtask build-ebpf`).",
        obj.display()
    );
    println!("cargo:rustc-env=KNIT_EBPF_OBJECT={}", stub.display());
}
