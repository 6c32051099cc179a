//! The managed block in /etc/hosts: aliases -> VIPs.
//!
//! Only the lines between knit's markers are ever changed; every other line
//! is kept byte for byte. The file is rewritten atomically (temp file in the
//! same directory, fsync, rename); where /etc/hosts is a bind mount that
//! cannot be renamed over, or its directory is read-only while the file is
//! not (knit.service's `ProtectSystem=full` with `ReadWritePaths=/etc/hosts`),
//! it is rewritten in place.
//!
//! Each namespace also gets a view, `<state_dir>/hosts/<namespace>`: the
//! hosts file with only that namespace's aliases in the block. `knit run`
//! bind-mounts its task's view over the hosts file in a mount namespace of
//! the task's own, so a task resolves only its namespace's aliases (as the
//! kernel lets it reach only those). Views are rewritten in place, since a
//! bind mount holds on to the file it was made from.
use std::{
    io::{self, Write},
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

pub struct HostsFile {
    path: PathBuf,
    begin: String,
    end: String,
}

impl HostsFile {
    /// `instance` tells two daemons' blocks apart (their cgroup name).
    pub fn new(path: PathBuf, instance: &str) -> Self {
        Self {
            path,
            begin: format!("# BEGIN knit {instance}: managed by knit, do not edit"),
            end: format!("# END knit {instance}"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `text` without our block.
    fn strip<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let mut inside = false;
        for line in text.lines() {
            if line == self.begin {
                inside = true;
            } else if inside && line == self.end {
                inside = false;
            } else if !inside {
                out.push(line);
            }
        }
        out
    }

    /// Render the file with `entries` (name, VIP) as our block; no block
    /// when `entries` is empty.
    pub fn render(&self, current: &str, entries: &[(String, Ipv4Addr)]) -> String {
        let mut out = String::new();
        for l in self.strip(current) {
            out.push_str(l);
            out.push('\n');
        }
        if !entries.is_empty() {
            out.push_str(&self.begin);
            out.push('\n');
            for (name, vip) in entries {
                out.push_str(&format!("{vip}\t{name}\n"));
            }
            out.push_str(&self.end);
            out.push('\n');
        }
        out
    }

    fn current(&self) -> io::Result<String> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// Write a namespace's view at `view`: the hosts file with `entries`
    /// as our block, in place (the file keeps its inode).
    pub fn write_view(&self, view: &Path, entries: &[(String, Ipv4Addr)]) -> io::Result<()> {
        let next = self.render(&self.current()?, entries);
        if std::fs::read_to_string(view).is_ok_and(|v| v == next) {
            return Ok(());
        }
        if let Some(dir) = view.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A view is made again from the state at every start: no fsync.
        in_place(view, &next, Some(0o644), false)
    }

    /// Write `entries` as our block (an empty list removes it).
    pub fn write(&self, entries: &[(String, Ipv4Addr)]) -> io::Result<()> {
        let current = self.current()?;
        let next = self.render(&current, entries);
        if next == current {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let mode = std::fs::metadata(&self.path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o644);
        let mut tmp = match tempfile::NamedTempFile::new_in(dir) {
            Ok(t) => t,
            // The directory is read-only but the file is not: systemd's
            // ProtectSystem= with ReadWritePaths=/etc/hosts (knit.service).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied
                ) =>
            {
                return in_place(&self.path, &next, None, true);
            }
            Err(e) => return Err(e),
        };
        tmp.write_all(next.as_bytes())?;
        tmp.as_file().sync_all()?;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
        match tmp.persist(&self.path) {
            Ok(_) => Ok(()),
            // A bind-mounted /etc/hosts (containers) cannot be replaced.
            Err(e) if matches!(e.error.raw_os_error(), Some(libc::EBUSY | libc::EXDEV)) => {
                in_place(&self.path, &next, None, true)
            }
            Err(e) => Err(e.error),
        }
    }
}

/// Rewrite `path` in place (it keeps its inode): the new bytes first, then
/// the length, so a reader never sees it empty (at worst, for a moment,
/// the new lines followed by the old file's tail).
fn in_place(path: &Path, next: &str, mode: Option<u32>, sync: bool) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if let Some(mode) = mode {
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    f.write_all(next.as_bytes())?;
    f.set_len(next.len() as u64)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_other_lines_and_replaces_block() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n# mine\n::1 ip6-localhost")?;
        let h = HostsFile::new(path.clone(), "knit");
        h.write(&[("db".into(), Ipv4Addr::new(127, 255, 0, 1))])?;
        h.write(&[
            ("db".into(), Ipv4Addr::new(127, 255, 0, 1)),
            ("web".into(), Ipv4Addr::new(127, 255, 0, 2)),
        ])?;
        let text = std::fs::read_to_string(&path)?;
        assert!(text.starts_with("127.0.0.1 localhost\n# mine\n::1 ip6-localhost\n"));
        assert_eq!(text.matches("# BEGIN knit").count(), 1);
        assert!(text.contains("127.255.0.2\tweb\n"));
        h.write(&[])?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "127.0.0.1 localhost\n# mine\n::1 ip6-localhost\n"
        );
        Ok(())
    }

    #[test]
    fn a_view_keeps_its_inode() -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n")?;
        let h = HostsFile::new(path.clone(), "knit");
        h.write(&[("db".into(), Ipv4Addr::new(127, 255, 0, 1))])?;
        let view = dir.path().join("views/a");
        h.write_view(
            &view,
            &[("long-name".into(), Ipv4Addr::new(127, 255, 0, 2))],
        )?;
        let ino = std::fs::metadata(&view)?.ino();
        h.write_view(&view, &[("x".into(), Ipv4Addr::new(127, 255, 0, 3))])?;
        assert_eq!(std::fs::metadata(&view)?.ino(), ino);
        let text = std::fs::read_to_string(&view)?;
        assert!(text.starts_with("127.0.0.1 localhost\n# BEGIN knit knit"));
        assert!(
            text.contains("127.255.0.3\tx\n") && !text.contains("db") && !text.contains("long")
        );
        Ok(())
    }

    #[test]
    fn two_instances_do_not_touch_each_other() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hosts");
        let a = HostsFile::new(path.clone(), "a");
        let b = HostsFile::new(path.clone(), "b");
        a.write(&[("x".into(), Ipv4Addr::new(127, 255, 0, 1))])?;
        b.write(&[("y".into(), Ipv4Addr::new(127, 255, 0, 9))])?;
        a.write(&[])?;
        let text = std::fs::read_to_string(&path)?;
        assert!(text.contains("y\n") && !text.contains("\tx\n"));
        Ok(())
    }
}
