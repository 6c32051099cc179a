//! `cargo xtask install [--root DIR]`: put knit in place on this machine
//! (or under DIR, a staging root for packaging):
//!
//! - `/usr/local/bin/knit`, the release build;
//! - `/etc/systemd/system/knit.service` (`packaging/knit.service`:
//!   Type=notify, watchdog, the capabilities it needs, hardening);
//! - `/etc/systemd/system/knit-task@.service` (`packaging/knit-task@.service`):
//!   a task of a service as a unit (`systemctl start knit-task@web`),
//!   restarted on failure, drained on stop;
//! - `/etc/knit/knit.toml`, every key commented out at its default
//!   (`packaging/knit.toml`); an existing config is never overwritten;
//! - `/usr/local/share/doc/knit/README.md`.
//!
//! Then, on a machine that runs systemd, `systemctl daemon-reload`; it
//! prints how to enable and start the service.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{build, util};

/// What goes where, relative to the root.
const FILES: &[(&str, &str, u32)] = &[
    ("target/release/knit", "usr/local/bin/knit", 0o755),
    (
        "packaging/knit.service",
        "etc/systemd/system/knit.service",
        0o644,
    ),
    (
        "packaging/knit-task@.service",
        "etc/systemd/system/knit-task@.service",
        0o644,
    ),
    ("README.md", "usr/local/share/doc/knit/README.md", 0o644),
];
const CONFIG: (&str, &str) = ("packaging/knit.toml", "etc/knit/knit.toml");

pub fn run(root: Option<PathBuf>) -> Result<()> {
    build::all(true)?;
    let root = root.unwrap_or_else(|| PathBuf::from("/"));
    for line in place(&util::root(), &root)? {
        println!("{line}");
    }
    let systemd = root == Path::new("/") && Path::new("/run/systemd/system").exists();
    if systemd {
        util::run(std::process::Command::new("systemctl").arg("daemon-reload"))?;
        println!("next: systemctl enable --now knit   (then: knit status)");
        println!("tasks as units: systemctl start knit-task@SERVICE (stop drains them)");
    } else {
        println!(
            "next, on a machine that runs systemd: systemctl daemon-reload && systemctl enable --now knit"
        );
    }
    Ok(())
}

/// Copy the files from `src` (a checkout with a release build) under
/// `root`; what was done, a line each.
pub fn place(src: &Path, root: &Path) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut done = Vec::new();
    let copy = |from: &str, to: &str, mode: u32| -> Result<PathBuf> {
        let (from, to) = (src.join(from), root.join(to));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Write beside, then rename: a running binary is replaced, not
        // rewritten under the process that runs it.
        let tmp = to.with_extension("knit-install");
        std::fs::copy(&from, &tmp)
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &to).with_context(|| format!("replacing {}", to.display()))?;
        Ok(to)
    };
    for (from, to, mode) in FILES {
        let to = copy(from, to, *mode)?;
        done.push(format!("installed {}", to.display()));
    }
    let config = root.join(CONFIG.1);
    if config.exists() {
        done.push(format!("kept {} (it exists)", config.display()));
    } else {
        copy(CONFIG.0, CONFIG.1, 0o644)?;
        done.push(format!(
            "installed {} (every key commented out at its default)",
            config.display()
        ));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_files_and_keeps_an_existing_config() -> Result<()> {
        let src = tempfile::tempdir()?;
        for (from, _, _) in FILES.iter().chain(&[(CONFIG.0, "", 0)]) {
            let p = src.path().join(from);
            std::fs::create_dir_all(p.parent().context("parent")?)?;
            std::fs::write(&p, from)?;
        }
        let root = tempfile::tempdir()?;
        let first = place(src.path(), root.path())?;
        assert_eq!(first.len(), FILES.len() + 1, "{first:?}");
        let bin = root.path().join("usr/local/bin/knit");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&bin)?.permissions().mode() & 0o777, 0o755);
        let cfg = root.path().join("etc/knit/knit.toml");
        std::fs::write(&cfg, "# mine")?;
        let second = place(src.path(), root.path())?;
        assert!(second.iter().any(|l| l.starts_with("kept")), "{second:?}");
        assert_eq!(std::fs::read_to_string(&cfg)?, "# mine");
        Ok(())
    }

    #[test]
    fn the_shipped_config_is_the_defaults() -> Result<()> {
        let path = util::root().join(CONFIG.0);
        let text = std::fs::read_to_string(&path)?;
        // Every commented key, uncommented, must parse and equal the default.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let without_name: String = uncommented
            .lines()
            .filter(|l| !l.starts_with("name = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed = proxy_config::parse_daemon_config(&without_name, &path)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(parsed, proxy_config::DaemonConfig::default());
        Ok(())
    }

    #[test]
    fn the_unit_is_type_notify_with_a_watchdog() -> Result<()> {
        let unit = std::fs::read_to_string(util::root().join("packaging/knit.service"))?;
        for line in [
            "Type=notify",
            "WatchdogSec=",
            "ExecReload=/bin/sh -c 'kill -HUP ${MAINPID}'",
            "ExecStart=/usr/local/bin/knit daemon --config /etc/knit/knit.toml",
        ] {
            assert!(unit.contains(line), "{line}");
        }
        Ok(())
    }

    #[test]
    fn the_task_unit_drains_on_stop() -> Result<()> {
        let unit = std::fs::read_to_string(util::root().join("packaging/knit-task@.service"))?;
        for line in [
            "Wants=knit.service",
            "KillMode=process",
            "Restart=on-failure",
            "TimeoutStopSec=",
        ] {
            assert!(unit.contains(line), "{line}");
        }
        // What systemd runs for knit-task@web.2: %i is "web.2", `%%` is a
        // literal `%` and `$$` a literal `$`; the shell strips ".2".
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .context("ExecStart")?;
        let expanded = exec
            .replace("%%", "\u{0}")
            .replace("%i", "web.2")
            .replace("\u{0}", "%")
            .replace("$$", "$");
        let argv = ["-c", "printf %s \"${1%%.*}\"", "knit-run", "web.2"];
        assert!(
            expanded.contains(argv[1].trim_start_matches("printf %s ")),
            "{expanded}"
        );
        let out = std::process::Command::new("/bin/sh").args(argv).output()?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "web");
        Ok(())
    }
}
