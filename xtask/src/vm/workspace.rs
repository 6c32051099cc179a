//! Build what the guest runs and find it: cargo's JSON messages name every
//! executable it produced, so nothing here guesses paths under the target dir.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Payload, Spec};
use crate::util;

/// The target dir cargo uses for `root` (honours CARGO_TARGET_DIR and config).
pub fn target_dir(root: &Path) -> Result<PathBuf> {
    let out = util::output(
        util::cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(root),
    )?;
    let meta: Value = serde_json::from_str(&out).context("parsing `cargo metadata` output")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` gave no target_directory")
}

/// Build the spawned binaries and the test executables.
pub fn build(spec: &Spec) -> Result<Payload> {
    let mut build = util::cargo();
    build.arg("build");
    for p in spec.bin_packages {
        build.args(["-p", p]);
    }
    build.arg("--bins");
    let files = artifacts(&mut build, spec.root)?
        .into_iter()
        .map(|a| a.executable)
        .collect();

    let mut test = util::cargo();
    test.args(["test", "-p", spec.test_package, "--no-run"]);
    let tests: Vec<Artifact> = artifacts(&mut test, spec.root)?
        .into_iter()
        .filter(|a| a.test && !spec.host_only.contains(&a.name.as_str()))
        .collect();
    if tests.is_empty() {
        bail!("cargo built no test executable for {}", spec.test_package);
    }
    let workdir = tests[0].manifest.parent().map(Path::to_path_buf);
    for t in &tests {
        eprintln!("test executable: {}", t.executable.display());
    }
    Ok(Payload {
        tests: tests.into_iter().map(|a| a.executable).collect(),
        files,
        workdir,
    })
}

/// Build `package`'s binaries and its test target `test`; (the test
/// executable, the binaries).
pub fn test_and_bins(root: &Path, package: &str, test: &str) -> Result<(PathBuf, Vec<PathBuf>)> {
    let mut build = util::cargo();
    build.args(["build", "-p", package, "--bins"]);
    let bins = artifacts(&mut build, root)?
        .into_iter()
        .map(|a| a.executable)
        .collect();
    let mut t = util::cargo();
    t.args(["test", "-p", package, "--test", test, "--no-run"]);
    let exe = artifacts(&mut t, root)?
        .into_iter()
        .find(|a| a.test && a.name == test)
        .map(|a| a.executable)
        .with_context(|| format!("cargo built no test executable {test} in {package}"))?;
    Ok((exe, bins))
}

struct Artifact {
    executable: PathBuf,
    /// The target's name (a test file's stem).
    name: String,
    /// Built with the test profile: a libtest harness.
    test: bool,
    manifest: PathBuf,
}

/// Run a cargo build command and collect the executables it reports.
/// Diagnostics still go to the terminal as text (json-render-diagnostics).
fn artifacts(cmd: &mut Command, root: &Path) -> Result<Vec<Artifact>> {
    cmd.arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stderr(Stdio::inherit());
    let shown: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    eprintln!("+ cargo {}", shown.join(" "));
    let out = util::output(cmd)?;
    let mut found = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        found.push(Artifact {
            executable: PathBuf::from(exe),
            name: msg["target"]["name"].as_str().unwrap_or("").to_string(),
            test: msg["profile"]["test"] == true,
            manifest: PathBuf::from(msg["manifest_path"].as_str().unwrap_or("/")),
        });
    }
    Ok(found)
}
