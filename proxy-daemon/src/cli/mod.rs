//! The CLI side of each subcommand: build a request, print the answer.
pub mod run;
mod tables;
pub mod top;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

use crate::control::{
    EXIT_BAD_INPUT, EXIT_FAILURE, EndpointRow, Request, Response, ServiceRow, StatusReport,
};

/// An open connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// An error with the exit code it maps to.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Self, Failure> {
        let s = UnixStream::connect(socket).map_err(|e| {
            Failure::new(
                EXIT_FAILURE,
                format!(
                    "cannot reach the knit daemon at {}: {e}\n  fix: start it (systemctl start knit, or knit daemon), or point --socket / KNIT_SOCKET at a running one",
                    socket.display()
                ),
            )
        })?;
        let writer = s
            .try_clone()
            .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
        Ok(Self {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// As [`Client::connect`], giving up on an answer after `timeout` (a
    /// caller that must not hang on a stuck daemon).
    pub fn connect_within(socket: &Path, timeout: std::time::Duration) -> Result<Self, Failure> {
        let c = Self::connect(socket)?;
        let set = |r: std::io::Result<()>| r.map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()));
        set(c.writer.set_write_timeout(Some(timeout)))?;
        set(c.reader.get_ref().set_read_timeout(Some(timeout)))?;
        Ok(c)
    }

    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, Failure> {
        let io =
            |e: std::io::Error| Failure::new(EXIT_FAILURE, format!("talking to the daemon: {e}"));
        let mut line =
            serde_json::to_vec(req).map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
        line.push(b'\n');
        let sent = self.writer.write_all(&line);
        let mut answer = String::new();
        let read = self.reader.read_line(&mut answer);
        // The daemon may refuse a request before reading all of it (too
        // large) and close: its answer is still there to read.
        if let Err(e) = sent
            && answer.is_empty()
        {
            return Err(io(e));
        }
        if read.map_err(io)? == 0 {
            return Err(Failure::new(
                EXIT_FAILURE,
                "the daemon closed the connection",
            ));
        }
        match serde_json::from_str::<Response>(&answer) {
            Ok(Response::Ok { body }) => serde_json::from_value(body).map_err(|e| {
                Failure::new(
                    EXIT_FAILURE,
                    format!("unexpected answer from the daemon: {e}"),
                )
            }),
            Ok(Response::Error { code, message }) => Err(Failure::new(code, message)),
            Err(e) => Err(Failure::new(
                EXIT_FAILURE,
                format!("unreadable answer from the daemon: {e}"),
            )),
        }
    }
}

/// Write to stdout; a closed pipe (`knit services --json | head`) ends
/// the process quietly with status 0: the reader has all it wanted.
pub fn out(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let r = o.write_fmt(args).and_then(|()| o.flush());
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(EXIT_FAILURE);
    }
}

/// `print!` through [`out`].
macro_rules! say {
    ($($t:tt)*) => { $crate::cli::out(format_args!($($t)*)) };
}
/// `println!` through [`out`].
macro_rules! sayln {
    ($($t:tt)*) => { $crate::cli::out(format_args!("{}\n", format_args!($($t)*))) };
}
pub(crate) use {say, sayln};

/// One request, one answer.
pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, Failure> {
    Client::connect(socket)?.call(req)
}

/// Print a failure and return its exit code.
pub fn report(f: Failure) -> i32 {
    eprintln!("error: {}", f.message);
    f.code
}

fn finish(r: Result<(), Failure>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(f) => report(f),
    }
}

/// Every proxied connection holds descriptors: take all the hard limit
/// allows (systemd's unit sets it to 1048576), not the soft 1024 default,
/// so that one task's flood of connections meets its own limit, not ours.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// `knit signer`: issue service certificates (see [`crate::tls::signer`]).
pub fn signer(config: PathBuf, default: &str, args: crate::tls::signer::SignerArgs) -> i32 {
    let explicit = config != Path::new(default);
    let cfg = match proxy_config::load_daemon_config(&config, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    if cfg.registry.backend != proxy_config::RegistryBackend::Etcd {
        eprintln!(
            "error: {}: [registry] backend is not \"etcd\"\n  fix: the signer serves a fleet \
             through etcd; give it the config the daemons use (one host alone needs no TLS: \
             its traffic never crosses a wire)",
            config.display()
        );
        return EXIT_BAD_INPUT;
    }
    if let Err(e) = crate::logging::init(&cfg.log) {
        eprintln!("error: {} [log] level: {e}", config.display());
        return EXIT_BAD_INPUT;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    match rt.block_on(crate::tls::signer::run(cfg, args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<crate::tls::TlsError>()
                .is_some_and(|t| matches!(t, crate::tls::TlsError::File { .. }))
            {
                EXIT_BAD_INPUT
            } else {
                EXIT_FAILURE
            }
        }
    }
}

/// `knit ca issue`.
pub fn ca_issue(
    ca_cert: &Path,
    ca_key: &Path,
    id: &str,
    cert: &Path,
    key: &Path,
    hours: u32,
    expired: bool,
) -> i32 {
    let ca = match crate::tls::ca::Ca::load(ca_cert, ca_key) {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let (from, to) = if expired {
        (
            now - time::Duration::hours(2),
            now - time::Duration::hours(1),
        )
    } else {
        (
            now - time::Duration::minutes(1),
            now + time::Duration::hours(i64::from(hours)),
        )
    };
    match ca.issue(id, from, to) {
        Ok((chain, k)) => write_pair(cert, &chain, key, &k.serialize_pem(), &format!("{id:?}")),
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_BAD_INPUT
        }
    }
}

/// `knit ca create`.
pub fn ca_create(cert: &Path, key: &Path, name: &str, days: u32) -> i32 {
    let (cert_pem, key_pem) = match crate::tls::ca::create(name, days) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    write_pair(
        cert,
        &cert_pem,
        key,
        &key_pem,
        &format!("CA {name:?} (valid {days} days)"),
    )
}

/// Write a certificate and its key (0600), never over existing files.
fn write_pair(cert: &Path, cert_pem: &str, key: &Path, key_pem: &str, what: &str) -> i32 {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
    };
    for (path, text, mode) in [(key, key_pem, 0o600), (cert, cert_pem, 0o644)] {
        if let Err(e) = write(path, text, mode) {
            eprintln!(
                "error: {}: {e}\n  fix: name a file that does not exist yet (knit never \
                 overwrites a key or certificate)",
                path.display()
            );
            return if e.kind() == std::io::ErrorKind::AlreadyExists {
                EXIT_BAD_INPUT
            } else {
                EXIT_FAILURE
            };
        }
    }
    println!(
        "{what}: certificate {}, key {} (keep the key private)",
        cert.display(),
        key.display()
    );
    0
}

pub fn daemon(config: PathBuf, default: &str, takeover: bool, no_accelerate: bool) -> i32 {
    let explicit = config != Path::new(default);
    let mut cfg = match proxy_config::load_daemon_config(&config, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    if no_accelerate {
        cfg.datapath.accelerate = false;
        crate::datapath::force_accelerate_off();
    }
    raise_fd_limit();
    crate::daemon::tune_allocator();
    if let Err(e) = crate::logging::init(&cfg.log) {
        eprintln!("error: {} [log] level: {e}", config.display());
        return EXIT_BAD_INPUT;
    }
    // The control plane's runtime (the engine, the registry, health checks,
    // the admin listener); the proxy runs on threads of its own
    // (`[proxy] threads`, see proxy::dataplane).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("knit-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    match rt.block_on(crate::daemon::run(cfg, config, explicit, takeover)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILURE
        }
    }
}

pub fn apply(socket: &Path, files: &[PathBuf]) -> i32 {
    let mut contents = Vec::new();
    for f in files {
        match std::fs::read(f) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => contents.push((f.display().to_string(), s)),
                Err(e) => {
                    return report(Failure::new(
                        EXIT_BAD_INPUT,
                        format!(
                            "{} at $: not UTF-8 text ({e})\n  fix: save the file as UTF-8 JSON",
                            f.display()
                        ),
                    ));
                }
            },
            Err(e) => {
                return report(Failure::new(
                    EXIT_BAD_INPUT,
                    format!(
                        "{}: cannot read it: {e}\n  fix: check the path",
                        f.display()
                    ),
                ));
            }
        }
    }
    finish(
        call::<serde_json::Value>(socket, &Request::Apply { files: contents }).map(|v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            for i in items {
                sayln!(
                    "{}/{} {}",
                    i["kind"].as_str().unwrap_or("?"),
                    i["name"].as_str().unwrap_or("?"),
                    i["action"].as_str().unwrap_or("?")
                );
            }
            // Accepted, changing nothing: said once, on stderr, so that the
            // lines above stay the apply's result.
            let not_used: Vec<proxy_config::NotUsed> =
                serde_json::from_value(v["not_used"].clone()).unwrap_or_default();
            for n in not_used {
                eprintln!("not used by knit: {}: {}", n.file, n.paths.join(", "));
            }
        }),
    )
}

fn print_json<T: serde::Serialize>(v: &T) {
    sayln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn services(socket: &Path, json: bool) -> i32 {
    finish(
        call::<Vec<ServiceRow>>(socket, &Request::Services).map(|rows| {
            if json {
                print_json(&rows)
            } else {
                say!("{}", tables::services(&rows))
            }
        }),
    )
}

pub fn endpoints(socket: &Path, service: Option<String>, json: bool) -> i32 {
    finish(
        call::<Vec<EndpointRow>>(socket, &Request::Endpoints { service }).map(|rows| {
            if json {
                print_json(&rows)
            } else {
                say!("{}", tables::endpoints(&rows))
            }
        }),
    )
}

pub fn status(socket: &Path, json: bool) -> i32 {
    finish(call::<StatusReport>(socket, &Request::Status).map(|s| {
        if json {
            print_json(&s)
        } else {
            say!("{}", tables::status(&s))
        }
    }))
}

pub fn drain(socket: &Path, service: Option<String>, task: Option<String>) -> i32 {
    finish(
        call::<Vec<String>>(socket, &Request::Drain { service, task }).map(|ids| {
            for id in ids {
                sayln!("task/{id} draining");
            }
        }),
    )
}

/// What `knit delete` removes.
pub use crate::registry::state::DeleteTarget;

pub fn delete(socket: &Path, target: DeleteTarget) -> i32 {
    finish(call::<String>(socket, &Request::Delete { target }).map(|said| sayln!("{said}")))
}

pub fn log_level(socket: &Path, filter: String) -> i32 {
    finish(
        call::<()>(
            socket,
            &Request::SetLogLevel {
                filter: filter.clone(),
            },
        )
        .map(|()| sayln!("log level: {filter}")),
    )
}
