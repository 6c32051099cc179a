//! Child processes for benchmarks: every one bounded in time, and every
//! long-running one killed when its guard drops, also on an early return.
use std::{
    io::{Read, Seek},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A server process that is killed (and reaped) when this drops.
pub struct Guard {
    child: Child,
    what: String,
    /// SIGTERM first, and SIGKILL only after a grace period: for servers
    /// whose workers must be stopped by their master (nginx).
    graceful: bool,
}

impl Guard {
    /// Start `cmd` with stdout and stderr into `log`.
    pub fn spawn(what: &str, cmd: &mut Command, log: &std::path::Path) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self {
            child,
            what: what.to_string(),
            graceful: false,
        })
    }

    /// As [`Guard::spawn`]; on drop the process gets SIGTERM and up to 5 s
    /// to stop its own children (an nginx master its workers) before
    /// SIGKILL, and any descendant left then is killed too.
    pub fn spawn_graceful(what: &str, cmd: &mut Command, log: &std::path::Path) -> Result<Self> {
        let mut g = Self::spawn(what, cmd, log)?;
        g.graceful = true;
        Ok(g)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fail when the process has already exited (a bad config, a port taken).
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited early: {status}", self.what),
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.graceful && matches!(self.child.try_wait(), Ok(None)) {
            let pid = self.child.id() as i32;
            let left = descendants(pid);
            // SAFETY: kill(2) on our own child, which is not reaped yet
            // (try_wait saw it running), so the pid is still its.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            for p in left {
                // A worker that outlived its master was re-parented; a pid
                // that was reused since would have a live parent of its own.
                if still_orphan_of(p) {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live descendants of `pid` (from /proc's parent links).
pub fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: i32 = e.file_name().to_str()?.parse().ok()?;
            Some((p, ppid_of(p)?))
        })
        .collect();
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// The parent of `pid`, from /proc (None: gone).
pub fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` exists and was re-parented to init, or its parent is gone.
fn still_orphan_of(pid: i32) -> bool {
    ppid_of(pid).is_some_and(|pp| pp == 1 || !std::path::Path::new(&format!("/proc/{pp}")).exists())
}

/// What a bounded command printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` to its end, killing it if it takes longer than `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Finished> {
    // Anonymous files rather than pipes: nothing has to drain them while we
    // poll, and a chatty child can never block on a full pipe.
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} still ran after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Finished {
        status,
        stdout: read_all(&mut out)?,
        stderr: read_all(&mut err)?,
    })
}

fn read_all(f: &mut std::fs::File) -> Result<String> {
    f.rewind()?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// A TCP port on 127.0.0.1 that is free now (the kernel's pick).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Wait until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {limit:?}")
}

/// The output of an informational command (`wrk -v`, `nginx -v`), whatever
/// its exit status (wrk exits 1 after printing its version), both streams.
pub fn banner(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => String::new(),
    }
}
