//! Helpers for knit's integration tests: a daemon of the test's own (its own
//! cgroup, pin dir, state dir, socket and hosts file), tasks started with
//! `knit run`, and cleanup of all of it on drop, also when the test fails.
//!
//! Safety rule: traffic goes only to 127.0.0.0/8 and the VIP range.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub mod fleet;

/// How long [`Knit::run_json`] and [`json_output`] wait for a task before
/// they kill it and fail: longer than any task a test or benchmark runs
/// (the longest run for under a minute), short enough that a hung task
/// fails its test instead of hanging the suite.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(180);

/// How many lines of the daemon's log a failed test prints.
const LOG_TAIL_LINES: usize = 60;

/// Where cargo put the binaries: the running executable's directory, or its
/// parent for test executables (target/<profile>/deps/<test>).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    if under_test_harness() {
        dir.parent().unwrap_or(&dir).to_path_buf()
    } else {
        dir
    }
}

/// True in a test executable (cargo puts them in target/<profile>/deps/),
/// whose harness captures what a test prints and shows it only when the
/// test fails; false in the demo and the benchmarks.
fn under_test_harness() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .is_some_and(|d| d.file_name().is_some_and(|n| n == "deps"))
}

/// Milliseconds since the Unix epoch (what the test binary's timelines say).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `knit` binary: $KNIT_BIN, else next to this executable.
pub fn knit_bin() -> PathBuf {
    std::env::var_os("KNIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("knit"))
}

/// The test peer binary (echo server and clients).
pub fn testbin() -> PathBuf {
    bin_dir().join("knit-testbin")
}

fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 mount")
}

/// Wait until `f` returns Some, polling every 20 ms, at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The body of `GET url`, fetched by `knit-testbin http-client` from the
/// test's own process (outside knit's cgroup: never rewritten). `url` must
/// be on loopback.
pub fn http_get(url: &str) -> Result<String> {
    http_get_in(None, url)
}

/// As [`http_get`], from inside network namespace `netns` (a fleet's host).
fn http_get_in(netns: Option<&str>, url: &str) -> Result<String> {
    let host = url
        .strip_prefix("http://")
        .context("an http:// URL")?
        .split('/')
        .next()
        .unwrap_or_default();
    if !host.starts_with("127.") {
        bail!("{url}: tests only talk to loopback");
    }
    let out = command_in(netns, testbin())
        .args(["http-client", "--url", url, "--count", "1", "--dump-body"])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{url}: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(v["body"].as_str().context("a body")?.to_string())
}

/// A command for `prog`, run in network namespace `netns` (under
/// /run/netns) when one is given.
fn command_in(netns: Option<&str>, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

/// A knit daemon owned by one test.
pub struct Knit {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub hosts: PathBuf,
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    /// The daemon's own cgroup (a sibling of knit's, as systemd would give
    /// it one): knit attaches its daemon-side sockops program there.
    pub daemon_cgroup: PathBuf,
    daemon: Option<Child>,
    /// `knit run` processes to kill at the end (see [`Knit::run`]).
    pub tasks: Vec<Child>,
    /// The `knit` binary this daemon and its CLI calls run.
    bin: PathBuf,
    /// The network namespace (under /run/netns) the daemon and its tasks
    /// run in; None: the test's own.
    netns: Option<String>,
    /// Extra environment of the daemon.
    env: Vec<(String, String)>,
    /// Print the daemon's log tail when dropped (see [`Knit::show_log_on_drop`]).
    log_on_drop: bool,
}

impl Knit {
    /// Write a config for test `name` (plus `extra` TOML) and start a daemon.
    pub fn start(name: &str, extra: &str) -> Result<Self> {
        Self::start_with(name, extra, None)
    }

    /// As [`Knit::start`], with the hosts file to manage (default: a file of
    /// the test's own).
    pub fn start_with(name: &str, extra: &str, hosts_file: Option<PathBuf>) -> Result<Self> {
        Self::start_full(name, extra, hosts_file, knit_bin())
    }

    /// As [`Knit::start`], with the daemon, the CLI and so every task in
    /// network namespace `netns` (a "host" of a [`fleet::Fleet`]).
    pub fn start_in(name: &str, extra: &str, netns: &str, bin: PathBuf) -> Result<Self> {
        let mut k = Self::prepare(name, extra, None, bin)?;
        k.netns = Some(netns.to_string());
        k.start_daemon()?;
        Ok(k)
    }

    /// As [`Knit::start_with`], running the `knit` binary at `bin` (for
    /// the daemon and every CLI call), e.g. a release build for benchmarks.
    pub fn start_full(
        name: &str,
        extra: &str,
        hosts_file: Option<PathBuf>,
        bin: PathBuf,
    ) -> Result<Self> {
        let mut k = Self::prepare(name, extra, hosts_file, bin)?;
        k.start_daemon()?;
        Ok(k)
    }

    fn prepare(name: &str, extra: &str, hosts_file: Option<PathBuf>, bin: PathBuf) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("knit's integration tests need root (cgroups, bpffs, eBPF)");
        }
        let unique = format!("knit-test-{name}-{}", std::process::id());
        let dir = tempfile::Builder::new().prefix(&unique).tempdir()?;
        let socket = dir.path().join("knit.sock");
        let hosts = match hosts_file {
            Some(h) => h,
            None => {
                let h = dir.path().join("hosts");
                std::fs::write(&h, "127.0.0.1\tlocalhost\n# a line knit must keep\n")?;
                h
            }
        };
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&unique);
        let cgroup = cgroup2_mount()?.join(&unique);
        let daemon_cgroup = cgroup2_mount()?.join(format!("{unique}-daemon"));
        std::fs::create_dir_all(&daemon_cgroup)
            .with_context(|| format!("creating {}", daemon_cgroup.display()))?;
        let config = dir.path().join("knit.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\nbpf_pin_dir = {:?}\ncgroup = {:?}\nsocket = {:?}\nhosts_file = {:?}\n{extra}\n{}",
                dir.path().join("state"),
                pin_dir,
                unique,
                socket,
                hosts,
                // Side by side with other daemons: any free admin port.
                if extra.contains("[admin]") {
                    ""
                } else {
                    "[admin]\nlisten = \"127.0.0.1:0\"\n"
                },
            ),
        )?;
        Ok(Self {
            dir,
            name: unique,
            socket,
            config,
            hosts,
            pin_dir,
            cgroup,
            daemon_cgroup,
            daemon: None,
            tasks: Vec::new(),
            bin,
            netns: None,
            env: Vec::new(),
            log_on_drop: under_test_harness(),
        })
    }

    /// Whether dropping this daemon prints the tail of its log to stderr.
    /// On by default in tests, whose harness shows it only for a test that
    /// fails, whether it panicked or returned `Err`; off elsewhere (the
    /// demo and benchmarks turn it on while they run and off once they
    /// succeed). A panic always prints it.
    pub fn show_log_on_drop(&mut self, show: bool) {
        self.log_on_drop = show;
    }

    /// The last `n` lines of the daemon's log.
    pub fn daemon_log_tail(&self, n: usize) -> String {
        let log = self.daemon_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// As [`Knit::start`], with extra environment for the daemon.
    pub fn start_env(name: &str, extra: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut k = Self::prepare(name, extra, None, knit_bin())?;
        k.env = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        k.start_daemon()?;
        Ok(k)
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.daemon_pid().context("no daemon")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// A command for the `knit` binary, in the daemon's network namespace.
    fn knit_command(&self) -> Command {
        command_in(self.netns.as_deref(), &self.bin)
    }

    /// A command for the daemon: in its own cgroup, from before exec, so
    /// that every socket it opens belongs to that cgroup.
    fn daemon_command(&self) -> Result<Command> {
        use std::os::{fd::AsRawFd, unix::process::CommandExt};
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.daemon_cgroup.join("cgroup.procs"))
            .with_context(|| format!("opening {}", self.daemon_cgroup.display()))?;
        let mut c = self.knit_command();
        // SAFETY: between fork and exec only async-signal-safe calls: one
        // write(2) to an fd opened before the fork (which `procs`, moved
        // into the closure, keeps open).
        unsafe {
            c.pre_exec(move || {
                let n = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if n == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Ok(c)
    }

    pub fn start_daemon(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))?;
        let child = self
            .daemon_command()?
            .args(["daemon", "--config"])
            .arg(&self.config)
            .env("KNIT_LOG", "info")
            .envs(self.env.iter().map(|(a, b)| (a, b)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting knit daemon")?;
        self.daemon = Some(child);
        let sock = self.socket.clone();
        let res = wait_for("the daemon's socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        });
        if res.is_err() {
            bail!("daemon did not start:\n{}", self.daemon_log());
        }
        Ok(())
    }

    /// Start a new daemon with `--takeover` (an upgrade without downtime);
    /// returns once the old one has drained and exited (its exit status).
    pub fn take_over(&mut self) -> Result<std::process::ExitStatus> {
        let mut old = self.daemon.take().context("no daemon")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))?;
        let child = self
            .daemon_command()?
            .args(["daemon", "--takeover", "--config"])
            .arg(&self.config)
            .env("KNIT_LOG", "info")
            .envs(self.env.iter().map(|(a, b)| (a, b)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting knit daemon --takeover")?;
        let new_pid = child.id();
        self.daemon = Some(child);
        let status = wait_for(
            "the old daemon to drain and exit",
            Duration::from_secs(40),
            || old.try_wait().ok().flatten(),
        );
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = old.kill();
                let _ = old.wait();
                bail!("{e}:\n{}", self.daemon_log());
            }
        };
        wait_for("the new daemon to answer", Duration::from_secs(30), || {
            let v = self.json(&["status"]).ok()?;
            (v["pid"].as_u64()? == u64::from(new_pid)).then_some(())
        })
        .with_context(|| self.daemon_log())?;
        Ok(status)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// kill -9 the daemon (the datapath stays in the kernel).
    pub fn kill_daemon(&mut self) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.kill()?;
            d.wait()?;
        }
        Ok(())
    }

    /// SIGTERM the daemon and wait for its clean exit.
    pub fn stop_daemon(&mut self) -> Result<std::process::ExitStatus> {
        let mut d = self.daemon.take().context("no daemon")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        wait_for("the daemon to exit", Duration::from_secs(10), || {
            d.try_wait().ok().flatten()
        })
    }

    /// A command for `prog` in this fleet host's network namespace, which
    /// must exist: the fleet's addresses lead nowhere else, and a daemon
    /// without a namespace of its own would send from the machine's.
    pub fn in_netns(&self, prog: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let ns = self
            .netns
            .as_deref()
            .context("this daemon runs in the test's own network namespace, not a fleet host's")?;
        if !Path::new("/run/netns").join(ns).exists() {
            bail!("network namespace {ns} is gone");
        }
        Ok(command_in(Some(ns), prog))
    }

    pub fn cmd(&self) -> Command {
        let mut c = self.knit_command();
        c.env("KNIT_SOCKET", &self.socket);
        c
    }

    /// Run a CLI command and return its output, whatever its status.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(self.cmd().args(args).output()?)
    }

    /// Run a CLI command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "knit {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        Ok(serde_json::from_str(&self.ok(&a)?)?)
    }

    /// Write `json` to a file named `file` in the test dir; its path.
    pub fn file(&self, file: &str, json: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(file);
        std::fs::write(&p, json)?;
        Ok(p)
    }

    /// Apply documents; each (file name, JSON).
    pub fn apply(&self, docs: &[(&str, &str)]) -> Result<String> {
        let mut args = vec!["apply".to_string()];
        for (name, json) in docs {
            args.push("-f".into());
            args.push(self.file(name, json)?.display().to_string());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&a)
    }

    /// Start `knit run --service S -- CMD` in the background.
    pub fn run(&mut self, service: &str, cmd: &[&str]) -> Result<()> {
        let child = self.spawn_task(service, cmd, Stdio::null())?;
        self.tasks.push(child);
        Ok(())
    }

    /// Start a task whose stdout the caller reads.
    pub fn spawn_task(&self, service: &str, cmd: &[&str], stdout: Stdio) -> Result<Child> {
        Ok(self
            .cmd()
            .args(["run", "--service", service, "--"])
            .args(cmd)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()?)
    }

    /// Run a task to its end (at most [`TASK_TIMEOUT`]) and parse its
    /// stdout as JSON (the clients).
    pub fn run_json(&self, service: &str, cmd: &[&str]) -> Result<Value> {
        let child = self
            .cmd()
            .args(["run", "--service", service, "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let what = format!("task of {service}: {}", cmd.join(" "));
        let out = wait_output(child, &what, TASK_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("task output: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Where the daemon's admin HTTP listens (`knit status`).
    pub fn admin_address(&self) -> Result<String> {
        Ok(self.json(&["status"])?["admin"]
            .as_str()
            .context("admin address")?
            .to_string())
    }

    /// The daemon's `/metrics` text (fetched from the daemon's network
    /// namespace: its admin listener is on that namespace's loopback).
    pub fn metrics(&self) -> Result<String> {
        let admin = self.admin_address()?;
        http_get_in(self.netns.as_deref(), &format!("http://{admin}/metrics"))
    }

    /// The sum of the samples of `name` (e.g. `knit_request_count_total`)
    /// in `/metrics` whose labels contain `label` (e.g.
    /// `discovery_name="web"`).
    pub fn metric_sum(&self, name: &str, label: &str) -> Result<f64> {
        Ok(self
            .metrics()?
            .lines()
            .filter(|l| {
                (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                    && l.contains(label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// `count` GETs of `path` on the daemon's admin listener, from the
    /// daemon's network namespace, with `knit-testbin http-client`: its
    /// report (statuses, p50_us, p99_us, ...).
    pub fn admin_requests(&self, path: &str, count: u64) -> Result<Value> {
        let admin = self.admin_address()?;
        if !admin.starts_with("127.") {
            bail!("the admin listener {admin} is not on loopback");
        }
        let child = command_in(self.netns.as_deref(), testbin())
            .args(["http-client", "--url", &format!("http://{admin}{path}")])
            .args(["--count", &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        json_output(child)
    }

    /// Endpoints of a service whose state is `state`.
    pub fn endpoints_in(&self, service: &str, state: &str) -> Result<usize> {
        let v = self.json(&["endpoints", service])?;
        Ok(v.as_array()
            .map(|a| a.iter().filter(|e| e["state"] == state).count())
            .unwrap_or(0))
    }

    /// Wait until `n` endpoints of `service` are healthy.
    pub fn wait_healthy(&self, service: &str, n: usize) -> Result<()> {
        wait_for(
            &format!("{n} healthy endpoints of {service}"),
            Duration::from_secs(30),
            || (self.endpoints_in(service, "healthy").ok()? == n).then_some(()),
        )
    }
}

impl Drop for Knit {
    fn drop(&mut self) {
        for t in &mut self.tasks {
            let _ = t.kill();
            let _ = t.wait();
        }
        let _ = self.kill_daemon();
        kill_cgroup(&self.cgroup);
        kill_cgroup(&self.daemon_cgroup);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if self.log_on_drop || std::thread::panicking() {
            eprintln!(
                "--- the last {LOG_TAIL_LINES} lines of the daemon log of {} ({}) ---\n{}\n--- end of the daemon log ---",
                self.name,
                self.dir.path().join("daemon.log").display(),
                self.daemon_log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

/// Wait for a task started with [`Knit::spawn_task`] (stdout piped), at
/// most [`TASK_TIMEOUT`], and parse the JSON report it printed; its stderr
/// (when piped) explains a bad one.
pub fn json_output(child: Child) -> Result<Value> {
    json_output_within(child, TASK_TIMEOUT)
}

/// As [`json_output`], waiting at most `timeout`.
pub fn json_output_within(child: Child, timeout: Duration) -> Result<Value> {
    let out = wait_output(child, "a task's JSON report", timeout)?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the task's report ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Wait for `child` at most `timeout`, collecting what it writes to its
/// piped stdout and stderr; past the timeout, kill it and fail with what it
/// wrote so far. (The pipes are read on threads of their own: a process the
/// child left behind may hold them open after the child is gone.)
pub fn wait_output(mut child: Child, what: &str, timeout: Duration) -> Result<Output> {
    use std::{
        io::Read,
        sync::{Arc, Mutex},
    };
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Arc<Mutex<Vec<u8>>> {
        let buf = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut p) = pipe {
            let b = Arc::clone(&buf);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = p.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock().map(|mut v| v.extend_from_slice(&chunk[..n])).ok();
                }
            });
        }
        buf
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let taken = |b: &Arc<Mutex<Vec<u8>>>| b.lock().map(|v| v.clone()).unwrap_or_default();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what}: still running after {timeout:?}; killed. It wrote:\n{}{}",
                String::from_utf8_lossy(&taken(&out)),
                String::from_utf8_lossy(&taken(&err))
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The child is gone; its pipes close once whatever it left behind exits
    // too. Give the readers a moment to reach the end.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2)
        && (Arc::strong_count(&out) > 1 || Arc::strong_count(&err) > 1)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Output {
        status,
        stdout: taken(&out),
        stderr: taken(&err),
    })
}

/// Kill everything in a cgroup tree and remove it.
fn kill_cgroup(path: &Path) {
    if !path.exists() {
        return;
    }
    for _ in 0..50 {
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        remove_tree(path);
        if !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_tree(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// A task definition with one TCP port mapping named `tcp` (knit picks the port).
pub fn tcp_task_definition(family: &str) -> String {
    format!(
        r#"{{"family": "{family}", "containerDefinitions": [{{"name": "app", "image": "unused",
            "portMappings": [{{"name": "tcp", "protocol": "tcp"}}]}}]}}"#
    )
}

/// A service exposing port `tcp` as `alias:port`.
pub fn tcp_service(name: &str, alias: &str, port: u16) -> String {
    format!(
        r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
            "serviceConnectConfiguration": {{"enabled": true,
              "services": [{{"portName": "tcp", "discoveryName": "{name}",
                             "clientAliases": [{{"dnsName": "{alias}", "port": {port}}}]}}]}}}}"#
    )
}

/// A client-only service.
pub fn client_service(name: &str) -> (String, String) {
    (
        format!(
            r#"{{"family": "{name}", "containerDefinitions": [{{"name": "app", "image": "unused"}}]}}"#
        ),
        format!(
            r#"{{"serviceName": "{name}", "taskDefinition": "{name}", "serviceConnectConfiguration": {{"enabled": true}}}}"#
        ),
    )
}

/// A task definition with one HTTP port mapping named `web`.
pub fn http_task_definition(family: &str) -> String {
    format!(
        r#"{{"family": "{family}", "containerDefinitions": [{{"name": "app", "image": "unused",
            "portMappings": [{{"name": "web", "appProtocol": "http"}}]}}]}}"#
    )
}

/// A service exposing port `web` as `alias:port`, discovery name `name`.
pub fn http_service(name: &str, alias: &str, port: u16) -> String {
    format!(
        r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
            "serviceConnectConfiguration": {{"enabled": true,
              "services": [{{"portName": "web", "discoveryName": "{name}",
                             "clientAliases": [{{"dnsName": "{alias}", "port": {port}}}]}}]}}}}"#
    )
}

/// Headless Chromium as root on a closed network (Debian's `chromium`),
/// with a profile of its own in `profile`; the URL and any action flag
/// (`--dump-dom`, `--screenshot=...`) come after.
pub fn chromium(profile: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A child process killed (and reaped) when this is dropped: background
/// load that must not outlive a failed test.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
