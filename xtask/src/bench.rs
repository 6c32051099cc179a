//! `cargo xtask bench`: see BENCHMARKS.md.
use anyhow::{Result, bail};

pub fn run(which: &str, _quick: bool) -> Result<()> {
    bail!("benchmark {which:?} is not written yet")
}
