//! Finds the eBPF object that `cargo xtask build-ebpf` produced so that the
//! daemon can embed it. Set KNIT_EBPF_OBJECT to use another one.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KNIT_EBPF_OBJECT");
    let obj = std::env::var_os("KNIT_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../proxy-ebpf/target/bpfel-unknown-none/release/proxy-ebpf")
        });
    println!("cargo:rerun-if-changed={}", obj.display());
    if !obj.exists() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` (or `cargo xtask build`) first",
            obj.display()
        );
    }
    println!("cargo:rustc-env=KNIT_EBPF_OBJECT={}", obj.display());
}
