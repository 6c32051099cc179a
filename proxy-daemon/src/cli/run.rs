//! `knit run --service NAME [-- CMD]`: one task of a service.
//!
//! The daemon prepares the task (id, ports, cgroup); the child joins the
//! task's cgroup between fork and exec, so its very first connect already
//! goes through knit's hooks. The exit status is the child's (128+N for a
//! signal N).
//!
//! Stopping is draining, as ECS stops a task: the first SIGTERM or SIGINT
//! to `knit run` (what systemd or any supervisor sends) asks the daemon to
//! drain the task. Its endpoints leave rotation on every host at once,
//! in-flight requests and connections finish (up to `[proxy]
//! drain_timeout_ms`, 20 s by default), then the daemon sends the app
//! SIGTERM and, after its task definition's `stopTimeout` (30 s by
//! default), SIGKILL. The app runs in a process group of its own, so a
//! terminal's Ctrl-C reaches `knit run` first, not the app. A second
//! SIGTERM or SIGINT goes straight to the app,
//! as does every signal when the daemon cannot be reached. SIGHUP is
//! always passed on.
use std::{ffi::CString, os::unix::ffi::OsStrExt, os::unix::process::ExitStatusExt, path::Path};

use tokio::signal::unix::{SignalKind, signal};

use super::{Client, Failure, report};
use crate::control::{EXIT_BAD_INPUT, EXIT_FAILURE, Request, TaskPlan};

pub fn run(socket: &Path, service: &str, task_definition: Option<String>, cmd: Vec<String>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(Failure::new(
                EXIT_FAILURE,
                format!("starting the runtime: {e}"),
            ));
        }
    };
    match rt.block_on(run_task(socket, service, task_definition, cmd)) {
        Ok(code) => code,
        Err(f) => report(f),
    }
}

/// In the child, before exec: a mount namespace of its own in which the
/// task's namespace's view of the hosts file covers the hosts file, so it
/// resolves only its namespace's aliases. Mounts do not propagate back.
///
/// # Safety
/// Runs between fork and exec: syscalls only, no allocation.
unsafe fn namespace_hosts(view: &CString, target: &CString) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            view.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))
    }
}

async fn exited(socket: &Path, client: &mut Client, task_id: &str, status: i32) {
    let req = Request::TaskExited {
        task_id: task_id.to_string(),
        status,
    };
    if client.call::<()>(&req).is_ok() {
        return;
    }
    // The daemon may have restarted while the task ran.
    if let Err(f) = Client::connect(socket).and_then(|mut c| c.call::<()>(&req)) {
        eprintln!(
            "knit run: could not tell the daemon that task {task_id} ended: {}",
            f.message
        );
    }
}

/// Ask the daemon to drain this task (a connection of its own: the task's
/// connection may be gone with a restarted daemon).
fn drain(socket: &Path, task_id: &str) -> Result<(), Failure> {
    // A daemon that does not answer within seconds: the signal goes to the
    // app instead.
    let ids: Vec<String> = Client::connect_within(socket, std::time::Duration::from_secs(5))?
        .call(&Request::Drain {
            service: None,
            task: Some(task_id.to_string()),
        })?;
    if ids.iter().any(|id| id == task_id) {
        Ok(())
    } else {
        Err(Failure::new(
            EXIT_FAILURE,
            format!("the daemon drained {ids:?}, not {task_id}"),
        ))
    }
}

async fn run_task(
    socket: &Path,
    service: &str,
    task_definition: Option<String>,
    cmd: Vec<String>,
) -> Result<i32, Failure> {
    let mut client = Client::connect(socket)?;
    let plan: TaskPlan = client.call(&Request::TaskStart {
        service: service.to_string(),
        task_definition,
    })?;
    let argv = if cmd.is_empty() {
        plan.command.clone()
    } else {
        cmd
    };
    let Some((prog, args)) = argv.split_first() else {
        exited(socket, &mut client, &plan.task_id, EXIT_BAD_INPUT).await;
        return Err(Failure::new(
            EXIT_BAD_INPUT,
            format!(
                "service {service:?}: its task definition has no entryPoint or command\n  fix: give the command after --, e.g. knit run --service {service} -- ./server"
            ),
        ));
    };
    let procs = CString::new(plan.cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))
    };
    let hosts = match &plan.hosts_view {
        Some((view, target)) => Some((cstr(view)?, cstr(target)?)),
        None => None,
    };
    let mut command = tokio::process::Command::new(prog);
    // A process group of its own: a terminal's Ctrl-C reaches `knit run`
    // (which drains first), not the app directly.
    command.args(args).envs(&plan.env).process_group(0);
    // SAFETY: cgroup::join and namespace_hosts only make async-signal-safe
    // syscalls on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            crate::cgroup::join(&procs)?;
            if let Some((view, target)) = &hosts {
                namespace_hosts(view, target)?;
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            exited(socket, &mut client, &plan.task_id, EXIT_FAILURE).await;
            return Err(Failure::new(
                EXIT_FAILURE,
                format!("cannot start {prog:?}: {e}"),
            ));
        }
    };
    let pid = child.id().unwrap_or(0);
    if let Err(f) = client.call::<()>(&Request::TaskRunning {
        task_id: plan.task_id.clone(),
        pid,
    }) {
        eprintln!("knit run: the daemon did not take the task: {}", f.message);
    }
    let io = |e: std::io::Error| Failure::new(EXIT_FAILURE, e.to_string());
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let mut hup = signal(SignalKind::hangup()).map_err(io)?;
    let forward = |sig: nix::sys::signal::Signal| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    };
    let mut draining = false;
    let status = loop {
        let sig = tokio::select! {
            s = child.wait() => break s.map_err(io)?,
            _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
            _ = int.recv() => nix::sys::signal::Signal::SIGINT,
            _ = hup.recv() => {
                forward(nix::sys::signal::Signal::SIGHUP);
                continue;
            }
        };
        if draining {
            eprintln!("knit run: {sig} again: passing it to the app now");
            forward(sig);
            continue;
        }
        draining = true;
        match drain(socket, &plan.task_id) {
            Ok(()) => eprintln!(
                "knit run: {sig}: draining task {}: out of rotation now; the app gets SIGTERM \
                 once its requests and connections are done ({sig} again to pass it on now)",
                plan.task_id
            ),
            Err(f) => {
                eprintln!(
                    "knit run: {sig}: could not drain task {} ({}); passing {sig} to the app",
                    plan.task_id, f.message
                );
                forward(sig);
            }
        }
    };
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    exited(socket, &mut client, &plan.task_id, code).await;
    Ok(code)
}
