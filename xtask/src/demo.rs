//! `cargo xtask demo`: the README's first command. Builds knit, then runs
//! `knit-demo` (tests/src/bin/knit-demo.rs): a daemon on the embedded
//! registry, a TCP service of three real echo tasks, a client calling
//! `db:6379` by name, and what happened.
use anyhow::Result;

use crate::{build, util};

pub fn run() -> Result<()> {
    build::all(false)?;
    let demo = util::root().join("target/debug/knit-demo");
    util::run(&mut std::process::Command::new(demo))
}
