//! `knit daemon`: start-up checks, the control socket, the monitor loop and
//! clean shutdown.
mod admin;
pub mod desired;
pub mod edges;
mod engine;
mod error;
mod handover;
pub mod history;
pub mod read;
mod server;
pub use server::tune_allocator;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use engine::Engine;
use proxy_config::{DaemonConfig, RegistryBackend};
use tokio::{net::UnixListener, signal::unix::SignalKind, sync::Mutex};
use tracing::{info, warn};

use crate::{
    cgroup,
    datapath::Datapath,
    proxy::Proxy,
    registry::{Registry, Store, etcd::Etcd},
};

/// Run the daemon with `cfg`, read from `config_path` (SIGHUP reads it
/// again; `explicit`: the operator named it, so it must exist).
pub async fn run(
    cfg: DaemonConfig,
    config_path: PathBuf,
    explicit: bool,
    takeover: bool,
) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "knit daemon needs root: it loads eBPF programs (CAP_BPF, CAP_NET_ADMIN) and manages cgroups (CAP_SYS_ADMIN)"
        );
    }
    // Before anything is created: a binary built without its eBPF object
    // (build.rs's stub) can do nothing useful.
    if !crate::datapath::has_object() {
        return Err(crate::datapath::DatapathError::NoObject.into());
    }
    // A new daemon taking over gets the running one's sockets and state
    // before it opens anything (see `handover`).
    let mut inherited = if takeover {
        let socket = cfg.socket.clone();
        let got =
            tokio::task::block_in_place(|| handover::take_over(&socket, Duration::from_secs(30)))?;
        info!(
            ingress = got.ingress.len(),
            "took over the running daemon's listeners and state"
        );
        got
    } else {
        handover::Inherited::default()
    };
    let mount = cgroup::cgroup2_mount()?;
    let cgroup_root = mount.join(&cfg.cgroup);
    let cgroup_is_new = cgroup::ensure(&cgroup_root)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.state_dir.display()))?;
    // Root only (0700): the store, and the hosts views (read by tasks
    // through their bind mount, which does not walk this directory).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making state_dir {} root only", cfg.state_dir.display()))?;
    }
    let store = Store::open(&cfg.state_dir)?;
    let registry = match cfg.registry.backend {
        RegistryBackend::Embedded => Registry::embedded(store),
        RegistryBackend::Etcd => {
            let host = match &cfg.host.name {
                Some(n) => n.clone(),
                None => nix::unistd::gethostname()?.into_string().map_err(|_| {
                    anyhow::anyhow!(
                        "this machine's host name is not UTF-8: set [host] name in the config"
                    )
                })?,
            };
            let etcd = Etcd::new(&cfg, host.clone()).await?;
            match etcd.initial_sync().await {
                Ok(()) => info!(host, endpoints = ?cfg.registry.endpoints, "etcd registry"),
                Err(e) => {
                    warn!(error = %e, "starting without the shared registry; it is read as soon as etcd answers")
                }
            }
            Registry::fleet(store, etcd)
        }
    };
    let dp = Datapath::open(
        &cfg.bpf_pin_dir,
        &cgroup_root,
        cgroup_is_new,
        crate::datapath::daemon_cgroup(&mount, &cgroup_root),
    )?;
    info!(
        cgroup = %cgroup_root.display(),
        pins = %dp.dir.display(),
        adopted = dp.adopted,
        accelerate = cfg.datapath.accelerate,
        "datapath ready"
    );
    let mut dp = dp;
    let listener = match inherited.control.take() {
        Some(l) => {
            l.set_nonblocking(true)?;
            crate::listen::widen(&l)?;
            UnixListener::from_std(l)?
        }
        None => bind_socket(&cfg.socket)?,
    };
    // At most 500 ms: readiness probes and the watchdog run on this tick.
    let interval = Duration::from_millis(cfg.outlier.interval_ms.clamp(10, 500));
    // The egress listener: the connect hook sends tasks' L7 connects here.
    let egress = egress_group(
        std::mem::take(&mut inherited.egress),
        cfg.host.address,
        cfg.proxy.threads_for(crate::listen::cpus()),
    )?;
    let egress_count = egress.len();
    let egress_addr = match egress[0].local_addr()? {
        std::net::SocketAddr::V4(a) => a,
        a => bail!("the egress listener must be IPv4, got {a}"),
    };
    let orig = dp
        .maps
        .take_orig()
        .context("the map of proxied connections was already taken")?;
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let threads = cfg.proxy.threads_for(crate::listen::cpus());
    let dataplane =
        crate::proxy::DataPlane::start(threads).context("starting the data-plane threads")?;
    let identities = Arc::new(crate::tls::Identities::new(&cfg.tls.trust_domain));
    let proxy = Arc::new(Proxy::new(orig, events_tx, dataplane, identities));
    let heartbeat;
    let engine = Arc::new(Mutex::new(Engine::new(
        cfg.clone(),
        registry,
        dp,
        cgroup_root,
        proxy.clone(),
        std::mem::take(&mut inherited.ingress),
    )?));
    {
        let mut e = engine.lock().await;
        e.dp.maps.set_egress(egress_addr)?;
        // Every member closes with this daemon: one is enough to watch.
        if let Err(err) = e.dp.maps.publish_listener(&egress[0]) {
            warn!(error = %err, "L7 services fail open only once the heartbeat is stale");
        }
        e.dp.maps.set_accelerate(cfg.datapath.accelerate)?;
        e.dp.maps.heartbeat(true)?;
        heartbeat = e.dp.maps.heartbeat_handle();
        // The maps are filled (Engine::new reconciled): an older version's
        // programs can go.
        e.dp.retire_other_versions();
    }
    info!(
        egress = %egress_addr,
        listeners = egress.len(),
        threads = proxy.dataplane.threads(),
        "L7 egress listener, served by the data-plane threads"
    );
    // Tasks that end when this daemon hands over.
    let mut background = Vec::new();
    let etcd = engine.lock().await.registry.etcd().cloned();
    if let Some(etcd) = &etcd {
        // The session keeps the view; every change of it is routed at once.
        background.push(tokio::spawn(etcd.clone().run()));
        // Identities of this host's services (mutual TLS with other hosts).
        let socks = match engine.lock().await.dp.maps.sock_remover() {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "a handle on the sockhash for the kTLS probe");
                None
            }
        };
        let tcp_path = crate::proxy::choose_tunnel_path(&proxy, cfg.tls.ktls, socks).await;
        info!(
            trust_domain = %cfg.tls.trust_domain,
            %tcp_path,
            "mutual TLS between hosts for services with tls (HTTP, HTTP/2, gRPC by the proxy; TCP \
             to other hosts through the daemon, same-host TCP in the kernel)"
        );
        // The key this host signs its certificate requests with.
        let host_key =
            crate::tls::hostkey::HostKey::load_or_create(&cfg.state_dir.join("tls/host.key"))
                .context("the host key")?;
        background.push(tokio::spawn(crate::tls::agent::run(
            etcd.clone(),
            proxy.clone(),
            host_key,
        )));
        let changed = etcd.changed.clone();
        let on_change = engine.clone();
        background.push(tokio::spawn(async move {
            loop {
                changed.notified().await;
                if let Err(e) = on_change.lock().await.refresh_shared() {
                    warn!(error = %format!("{e:#}"), "routing by the registry's new state");
                }
            }
        }));
    }
    let wanted = cfg.admin.listen;
    let admin = match inherited.admin.take().filter(|l| {
        l.local_addr()
            .is_ok_and(|a| a.ip() == wanted.ip() && (wanted.port() == 0 || a.port() == wanted.port()))
    }) {
        Some(l) => {
            l.set_nonblocking(true)?;
            crate::listen::widen(&l)?;
            tokio::net::TcpListener::from_std(l)?
        }
        None => tokio::net::TcpListener::from_std(crate::listen::tcp(wanted).with_context(|| {
            format!(
                "binding the admin listener on {wanted}: set [admin] listen in the config to a free address"
            )
        })?)?,
    };
    {
        use std::os::fd::AsFd;
        let mut e = engine.lock().await;
        let mut fds = vec![
            ("admin".into(), admin.as_fd().try_clone_to_owned()?),
            ("control".into(), listener.as_fd().try_clone_to_owned()?),
        ];
        for (i, l) in egress.iter().enumerate() {
            let name = if i == 0 {
                "egress".to_string()
            } else {
                format!("egress/{i}")
            };
            fds.push((name, l.as_fd().try_clone_to_owned()?));
        }
        e.listener_fds = fds;
    }
    let admin_addr = admin.local_addr()?;
    {
        let mut e = engine.lock().await;
        e.admin = admin_addr.to_string();
        e.egress = (egress_addr.to_string(), egress_count);
        e.publish();
    }
    info!(admin = %admin_addr, "admin HTTP (metrics, API)");
    let reader = engine.lock().await.reader.clone();
    // The dashboard's last 15 minutes: a point per alias every 5 s.
    let sampler = reader.clone();
    background.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(history::EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let stats = sampler.stats();
            sampler.history.sample(stats);
        }
    }));
    background.push(tokio::spawn(admin::serve(
        admin,
        reader.clone(),
        proxy.clone(),
    )));
    background.extend(crate::proxy::start_egress(egress, &proxy));
    // An endpoint the proxy sees failing is looked at at once, not at the next tick.
    let on_events = engine.clone();
    background.push(tokio::spawn(async move {
        while events.recv().await.is_some() {
            if let Err(e) = on_events.lock().await.tick() {
                warn!(error = %format!("{e:#}"), "outlier check");
            }
        }
    }));
    crate::systemd::ready(&engine.lock().await.status_line());
    info!(socket = %cfg.socket.display(), "knit daemon ready");

    // The kernel's heartbeat has a task of its own: nothing the control
    // plane holds (the engine's lock over a slow etcd, say) can make L7
    // connects fail open while the proxy is serving.
    let beating = tokio::spawn(beat(heartbeat.clone()));
    let monitor = tokio::spawn(monitor(engine.clone(), interval));
    let accept = tokio::spawn(server::accept(listener, engine.clone(), reader));
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut monitor = monitor;
    let retire = engine.lock().await.retire_signal.clone();
    let mut handed_over = false;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { info!("SIGINT: shutting down"); break }
            _ = hup.recv() => reload(&engine, &config_path, explicit).await,
            () = retire.notified() => { handed_over = true; break }
            r = &mut monitor => { warn!(?r, "monitor stopped"); break }
        }
    }
    crate::systemd::stopping();
    accept.abort();
    if handed_over {
        // The new daemon accepts on our sockets, keeps the heartbeat and
        // the hosts file; ours only finish what they have.
        monitor.abort();
        beating.abort();
        for t in &background {
            t.abort();
        }
        proxy.retire();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(cfg.proxy.drain_timeout_ms);
        info!(connections = proxy.live(), "handed over; draining");
        while proxy.live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        info!(left = proxy.live(), "handed over; exiting");
        return Ok(());
    }
    beating.abort();
    let mut e = engine.lock().await;
    // L7 connects go straight to endpoints from now on (the egress
    // listener closes with this process).
    if let Err(err) = heartbeat.beat(false) {
        warn!(error = %err, "clearing the heartbeat");
    }
    e.clear_hosts();
    let _ = std::fs::remove_file(&cfg.socket);
    // Programs, maps and links stay pinned: tasks keep balancing while the
    // daemon is away, and the next daemon adopts them.
    info!("stopped; the datapath stays in the kernel");
    Ok(())
}

fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another knit daemon is listening on {}: take over from it without downtime with `knit daemon --takeover`, stop it first, or give this one another `socket` in its config",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // Root only: every change to routing goes through this socket. The
    // umask makes it so from its creation (no window before a chmod).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()));
    nix::sys::stat::umask(old);
    let l = l?;
    crate::listen::widen(&l)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// SIGHUP: read the config again and apply what can change while running;
/// a config with errors is refused whole (the running one stays).
async fn reload(engine: &Arc<Mutex<Engine>>, path: &Path, explicit: bool) {
    crate::systemd::reloading();
    let new = match proxy_config::load_daemon_config(path, explicit) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "SIGHUP: the config has errors; keeping the running one");
            let e = engine.lock().await;
            crate::systemd::ready(&e.status_line());
            return;
        }
    };
    if let Err(e) = crate::logging::set_level(&new.log.level) {
        warn!(error = %e, "SIGHUP: keeping the running log level");
    }
    let mut e = engine.lock().await;
    let report = e.reload(new);
    info!(
        applied = ?report.applied,
        at_next_start = ?report.need_restart,
        "SIGHUP: config reloaded"
    );
    crate::systemd::ready(&e.status_line());
}

/// How often [`beat`] writes the heartbeat; the connect hook calls it stale
/// after 1.5 s.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

/// Write the kernel heartbeat every [`HEARTBEAT_EVERY`], whatever the
/// control plane is doing.
async fn beat(heartbeat: crate::datapath::Heartbeat) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = heartbeat.beat(true) {
            warn!(error = %err, "heartbeat");
        }
    }
}

/// Readiness, draining, outliers and the watchdog, every `interval`.
async fn monitor(engine: Arc<Mutex<Engine>>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = crate::systemd::Watchdog::from_env();
    let mut swept = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let (probes, addr) = {
            let mut e = engine.lock().await;
            // An older version's sockhash stays pinned while it holds
            // sockets; look again now and then.
            if swept.elapsed() >= Duration::from_secs(60) {
                swept = tokio::time::Instant::now();
                e.dp.retire_other_versions();
            }
            // A pass that completes is what the watchdog vouches for.
            watchdog.pass(e.status_line());
            if let Err(err) = e.tick() {
                warn!(error = %format!("{err:#}"), "monitor");
            }
            // Health checks run outside the lock; each records its verdict.
            for (task, spec, cgroup, env) in e.due_health_checks() {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let passed = crate::health::run_check(&spec, &cgroup, &env).await;
                    if let Err(err) = engine.lock().await.record_health(&task, passed) {
                        warn!(error = %format!("{err:#}"), task, "recording a health check");
                    }
                });
            }
            (e.unready_ports(), e.cfg.host.address)
        };
        if probes.is_empty() {
            continue;
        }
        let mut ready = Vec::new();
        for (task, name, port) in probes {
            let probe = tokio::net::TcpStream::connect((addr, port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), probe).await {
                ready.push((task, name));
            }
        }
        if !ready.is_empty() {
            let mut e = engine.lock().await;
            if let Err(err) = e.mark_ready(&ready) {
                warn!(error = %format!("{err:#}"), "marking endpoints ready");
            }
        }
    }
}

/// The egress listener's sockets: those an older daemon passed on (when on
/// `address`), grown to a SO_REUSEPORT group of one per CPU, or a new group.
/// A listener an older version made without SO_REUSEPORT is served alone.
/// The egress listeners: an SO_REUSEPORT group of `want` members (one per
/// data-plane thread), the handed-over ones first; nonblocking.
fn egress_group(
    inherited: Vec<std::net::TcpListener>,
    address: std::net::Ipv4Addr,
    want: usize,
) -> Result<Vec<std::net::TcpListener>> {
    let mut group: Vec<std::net::TcpListener> = inherited
        .into_iter()
        .filter(|l| l.local_addr().is_ok_and(|a| a.ip() == address))
        .collect();
    match group.first() {
        None => {
            group = crate::listen::tcp_group((address, 0).into(), want)
                .with_context(|| format!("binding the egress listener on {address}"))?;
        }
        Some(first) if crate::listen::is_reuseport(first) => {
            let addr = first.local_addr()?;
            if let Err(e) = crate::listen::grow(&mut group, addr, want) {
                warn!(error = %e, have = group.len(), "growing the egress listener group");
            }
        }
        Some(_) => {}
    }
    group
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            crate::listen::widen(&l)?;
            Ok(l)
        })
        .collect()
}
