//! The control socket: one task per CLI connection, one JSON line in, one out.
use std::sync::Arc;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};
use tracing::{debug, warn};

use super::{engine::Engine, error::respond, read::Reader};
use crate::control::{Request, Response};

/// Longest request line accepted (an apply of many large files fits).
const MAX_LINE: usize = 64 << 20;

pub async fn accept(listener: UnixListener, engine: Arc<Mutex<Engine>>, reader: Arc<Reader>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, engine.clone(), reader.clone()));
            }
            Err(e) => {
                warn!(error = %e, "accepting on the control socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(stream: UnixStream, engine: Arc<Mutex<Engine>>, reader: Arc<Reader>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        // Bounded read: a peer cannot make the daemon buffer without end.
        let mut limited = (&mut lines).take(MAX_LINE as u64 + 1);
        match limited.read_line(&mut line).await {
            Ok(0) => return,
            Ok(n) if n > MAX_LINE => {
                drop(std::mem::take(&mut line));
                release_memory();
                let _ = reply(
                    &mut w,
                    &Response::bad_input(format!(
                        "request too large: the daemon reads at most {} MiB per request\n  fix: apply fewer or smaller files at a time",
                        MAX_LINE >> 20
                    )),
                )
                .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "control connection");
                return;
            }
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Handover) => {
                handover(&w, &engine).await;
                return;
            }
            Ok(req) => handle(req, &engine, &reader).await,
            Err(e) => Response::bad_input(format!(
                "malformed request: {e} (is the knit CLI the same version as the daemon?)"
            )),
        };
        if line.capacity() > BIG_REQUEST {
            // A large apply (refused or not) left large blocks behind:
            // give them back to the system instead of keeping the peak.
            line = String::new();
            release_memory();
        }
        if reply(&mut w, &resp).await.is_err() {
            return;
        }
    }
}

/// A request line past this size is followed by [`release_memory`].
const BIG_REQUEST: usize = 1 << 20;

/// Allocations from this size on get pages of their own (mmap), returned
/// to the system when freed.
const MMAP_FROM: i32 = 1 << 20;

/// At start: large blocks (a big apply's request line and files) are
/// mapped on their own, at a fixed threshold. glibc's default threshold
/// grows to the largest block freed (up to 32 MiB), after which such
/// blocks come from a thread's arena, whose free top it never gives back
/// (`malloc_trim` trims only the main arena's): refused 25 MB applies
/// left the daemon tens of MB larger each time a new thread served one.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets a glibc tunable; called before the runtime
    // allocates much, and safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM);
    }
}

/// Return freed heap memory to the system: what a large request left in
/// glibc's bins (below [`MMAP_FROM`]) is released.
fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas; no pointer is
    // passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn reply(w: &mut tokio::net::unix::OwnedWriteHalf, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

/// A new daemon takes over: pass the sockets, retire, say `released`.
async fn handover(w: &tokio::net::unix::OwnedWriteHalf, engine: &Mutex<Engine>) {
    use std::os::fd::AsRawFd;
    let raw = w.as_ref().as_raw_fd();
    let sent = {
        let mut e = engine.lock().await;
        if e.retired {
            Err(anyhow::anyhow!("this daemon already handed over"))
        } else {
            let (names, fds) = e.handover_fds();
            let r = super::handover::send(raw, &names, &fds);
            drop(fds);
            if r.is_ok() {
                tracing::info!(sockets = ?names, "handing over to a new daemon");
                e.retire();
            }
            r
        }
    };
    match sent {
        Ok(()) => {
            if let Err(err) = super::handover::write_all(raw, b"released\n") {
                warn!(error = %err, "telling the new daemon the state is released");
            }
        }
        Err(err) => {
            warn!(error = %format!("{err:#}"), "handover");
            let resp = Response::failure(format!("{err:#}"));
            let mut line = serde_json::to_vec(&resp).unwrap_or_default();
            line.push(b'\n');
            let _ = super::handover::write_all(raw, &line);
        }
    }
}

/// A handed-over daemon's answer to anything but a handover.
fn handed_over() -> Response {
    Response::failure("this daemon handed over to a new one; run the command again".to_string())
}

async fn handle(req: Request, engine: &Mutex<Engine>, reader: &Reader) -> Response {
    tracing::debug!(request = req.name(), "control request");
    // Reads answer from the published state, without the engine's lock.
    let read = match &req {
        Request::Services => Some(Response::ok(&reader.service_rows())),
        Request::Endpoints { service } => {
            Some(Response::ok(&reader.endpoint_rows(service.as_deref())))
        }
        Request::Status => Some(match reader.status() {
            Some(s) => Response::ok(&s),
            None => Response::failure("the daemon is still starting".to_string()),
        }),
        Request::Stats => Some(Response::ok(&reader.stats())),
        _ => None,
    };
    if let Some(r) = read {
        return if reader.retired() { handed_over() } else { r };
    }
    let mut e = engine.lock().await;
    // With etcd, an apply plans and commits without the engine's lock
    // (etcd may be slow or stalled; nothing else should wait for it), then
    // takes it to route by the result.
    let etcd = match &req {
        Request::Apply { .. } | Request::Delete { .. } if !e.retired => e.etcd_apply_handle(),
        _ => None,
    };
    let req = match (req, etcd) {
        (Request::Apply { files }, Some((etcd, default, snapshot))) => {
            drop(e);
            let files: Vec<(String, Vec<u8>)> = files
                .into_iter()
                .map(|(n, c)| (n, c.into_bytes()))
                .collect();
            let planner = super::engine::Planner::new(files, default, snapshot);
            let result = etcd.apply(|state: &crate::registry::ConfigState| planner.plan(state));
            return respond(engine.lock().await.applied(result, planner.prebound()));
        }
        (Request::Delete { target }, Some((etcd, _, _))) => {
            drop(e);
            let result = etcd.mutate(|state| Ok(((), state.delete(&target)?)));
            return respond(engine.lock().await.deleted(&target, result));
        }
        (req, _) => req,
    };
    if e.retired {
        return handed_over();
    }
    match req {
        Request::Apply { files } => respond(e.apply(files)),
        Request::Services | Request::Endpoints { .. } | Request::Status | Request::Stats => {
            Response::bad_input("reads are answered from the published state")
        }
        Request::Handover => Response::bad_input("handover is answered on its own"),
        Request::TaskStart {
            service,
            task_definition,
        } => respond(e.task_start(&service, task_definition.as_deref())),
        Request::TaskRunning { task_id, pid } => respond(e.task_running(&task_id, pid)),
        Request::TaskExited { task_id, status } => {
            match e.task_gone(&task_id, &format!("its main process exited with {status}")) {
                Ok(()) => Response::ok(&()),
                Err(err) => Response::failure(format!("{err:#}")),
            }
        }
        Request::Drain { service, task } => respond(e.drain(service.as_deref(), task.as_deref())),
        Request::Delete { target } => respond(e.delete(&target)),
        Request::SetLogLevel { filter } => match crate::logging::set_level(&filter) {
            Ok(()) => {
                tracing::info!(filter, "log level set");
                Response::ok(&())
            }
            Err(msg) => Response::bad_input(msg),
        },
    }
}
