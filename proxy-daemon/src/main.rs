//! `knit`: ECS Service Connect for any fleet of Linux hosts.
//!
//! The CLI only: every subcommand but `daemon` talks to the local daemon over
//! its unix socket. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use knit::cli;

const DEFAULT_CONFIG: &str = "/etc/knit/knit.toml";
const DEFAULT_SOCKET: &str = "/run/knit/knit.sock";

#[derive(Parser)]
#[command(
    name = "knit",
    version,
    about = "Service Connect for any fleet of Linux hosts: logical service names, balancing and metrics for every task, no sidecar",
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad input."
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "KNIT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the per-host daemon (one per host; it serves the CLI on --socket).
    Daemon {
        /// Daemon config (TOML); a missing default file means all defaults.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take over from the daemon running on the same socket, without
        /// downtime: its listeners, state and datapath pass to this one, and
        /// it drains and exits (an upgrade).
        #[arg(long)]
        takeover: bool,
        /// Turn same-host acceleration (sockhash + sk_msg) off, whatever
        /// the config's `[datapath] accelerate` says.
        #[arg(long)]
        no_accelerate: bool,
    },
    /// Run the signer: the only holder of the CA key. It publishes the trust
    /// bundle in etcd (`[registry]` of --config) and issues each host the
    /// certificates of the services it runs (`[tls] certificate_ttl_s`,
    /// default 24 h; daemons renew at half life). Run one per fleet, or
    /// several with the same files (they answer the same requests alike).
    Signer {
        /// Config with `[registry]` (etcd) and `[tls]`, as the daemons'.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The CA certificate (PEM): a root from `knit ca create`, or your
        /// intermediate followed by the certificates above it up to the root.
        #[arg(long)]
        ca_cert: PathBuf,
        /// The CA's private key (PEM). Keep it readable by root only; it
        /// never leaves this process.
        #[arg(long)]
        ca_key: PathBuf,
        /// More trusted roots (PEM) published with the CA's: during a root
        /// rollover, the other root.
        #[arg(long)]
        trust_bundle: Option<PathBuf>,
        /// Where this signer pins each host's key on its first request
        /// (JSON; default: beside the CA key, `<ca key>.hosts.json`). A
        /// reinstalled host: remove its entry and restart the signer.
        #[arg(long)]
        host_keys: Option<PathBuf>,
    },
    /// Make a CA for `knit signer`.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Register task definitions, services, clusters and namespaces (ECS JSON).
    ///
    /// Fields that change nothing in knit (cpu, memory, image,
    /// logConfiguration, networkConfiguration, ...) are accepted and listed
    /// once on stderr ("not used by knit: FILE: PATHS"). Anything wrong, and
    /// a field knit cannot honour (tls on a TCP port), refuses the whole apply
    /// with the file, the JSON path and a fix; so does an
    /// ingressPortOverride that cannot be bound for a task already running.
    Apply {
        /// JSON files: an object or an array of objects each.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Run CMD as one task of service NAME; exits with CMD's status.
    ///
    /// SIGTERM or SIGINT stops the task as ECS does: it drains first (out
    /// of rotation on every host, in-flight requests finish, up to [proxy]
    /// drain_timeout_ms), then the app gets SIGTERM, and SIGKILL after its
    /// task definition's stopTimeout (30 s). A second signal goes to the
    /// app at once; SIGHUP is passed on.
    Run {
        /// The service this task belongs to.
        #[arg(long)]
        service: String,
        /// Run this revision of the service's task definition (FAMILY:N)
        /// instead of the one the service pins (its taskDefinition
        /// "FAMILY:N"; the newest when it names the family alone).
        #[arg(long, value_name = "FAMILY:N")]
        task_definition: Option<String>,
        /// The command (default: the task definition's entryPoint + command).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// List services and their client aliases.
    ///
    /// A client-only service shows as "(client only)"; one applied with
    /// "enabled": false as "(not in Service Connect)" (its tasks get no
    /// names and no routes through knit).
    Services {
        #[arg(long)]
        json: bool,
    },
    /// List endpoints (task ports) and their kernel counters.
    Endpoints {
        /// Only this service's.
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Live rates per service and the service graph, redrawn every interval.
    Top {
        /// How often to read the counters.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many frames; 0: until Ctrl-C (the default on a
        /// terminal; into a pipe or a file the default is one frame).
        #[arg(long, conflicts_with = "once")]
        iterations: Option<u64>,
        /// One frame, then exit (what a pipe or a file gets by default).
        #[arg(long)]
        once: bool,
        /// One JSON object per frame.
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Set the daemon's log filter now (e.g. `debug`, `knit=debug,warn`); SIGHUP restores the config's.
    LogLevel { filter: String },
    /// Delete a service, a task definition revision or a namespace (ECS's rules).
    #[command(subcommand)]
    Delete(DeleteCmd),
    /// Stop new traffic to a service's or a task's endpoints; once their connections end, deregister and stop them.
    Drain {
        #[arg(long, conflicts_with = "task", required_unless_present = "task")]
        service: Option<String>,
        #[arg(long)]
        task: Option<String>,
    },
}

#[derive(clap::Subcommand)]
enum DeleteCmd {
    /// A service: its names stop resolving and its VIPs stop routing at
    /// once; its tasks drain on every host (in-flight requests and
    /// connections finish, up to [proxy] drain_timeout_ms) and stop; then
    /// it is gone and its VIPs and ids can be reused.
    Service { name: String },
    /// One revision (FAMILY:N), unless a service runs it.
    TaskDefinition {
        #[arg(value_name = "FAMILY:N")]
        revision: String,
    },
    /// A namespace without services (not the default one).
    Namespace { name: String },
}

/// `knit ca`.
#[derive(clap::Subcommand)]
enum CaCmd {
    /// A new self-signed root CA (ECDSA P-256): the certificate (public)
    /// and its key (written readable by its owner only).
    Create {
        /// Where to write the certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the private key (PEM, mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "knit root CA")]
        name: String,
        /// How long it is valid, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate for one identity straight from the CA's files,
    /// with a new key: for a peer outside knit, or (with --expired) one
    /// that peers must refuse. Services get theirs from `knit signer`.
    Issue {
        #[arg(long)]
        ca_cert: PathBuf,
        #[arg(long)]
        ca_key: PathBuf,
        /// The URI SAN, e.g. spiffe://knit.local/ns/default/svc/web.
        #[arg(long)]
        id: String,
        /// Where to write the certificate chain (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the new private key (PEM, mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// Valid for this many hours from now.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// Make it expired an hour ago instead (to test refusals).
        #[arg(long)]
        expired: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Daemon {
            config,
            takeover,
            no_accelerate,
        } => cli::daemon(config, DEFAULT_CONFIG, takeover, no_accelerate),
        Cmd::Signer {
            config,
            ca_cert,
            ca_key,
            trust_bundle,
            host_keys,
        } => cli::signer(
            config,
            DEFAULT_CONFIG,
            knit::tls::signer::SignerArgs {
                ca_cert,
                ca_key,
                trust_bundle,
                host_keys,
            },
        ),
        Cmd::Ca(CaCmd::Create {
            cert,
            key,
            name,
            days,
        }) => cli::ca_create(&cert, &key, &name, days),
        Cmd::Ca(CaCmd::Issue {
            ca_cert,
            ca_key,
            id,
            cert,
            key,
            hours,
            expired,
        }) => cli::ca_issue(&ca_cert, &ca_key, &id, &cert, &key, hours, expired),
        Cmd::Apply { files } => cli::apply(&cli.socket, &files),
        Cmd::Run {
            service,
            task_definition,
            cmd,
        } => cli::run::run(&cli.socket, &service, task_definition, cmd),
        Cmd::Services { json } => cli::services(&cli.socket, json),
        Cmd::Endpoints { service, json } => cli::endpoints(&cli.socket, service, json),
        Cmd::Status { json } => cli::status(&cli.socket, json),
        Cmd::Drain { service, task } => cli::drain(&cli.socket, service, task),
        Cmd::Delete(d) => cli::delete(
            &cli.socket,
            match d {
                DeleteCmd::Service { name } => cli::DeleteTarget::Service(name),
                DeleteCmd::TaskDefinition { revision } => {
                    cli::DeleteTarget::TaskDefinition(revision)
                }
                DeleteCmd::Namespace { name } => cli::DeleteTarget::Namespace(name),
            },
        ),
        Cmd::LogLevel { filter } => cli::log_level(&cli.socket, filter),
        Cmd::Top {
            interval_ms,
            iterations,
            once,
            json,
        } => cli::top::top(
            &cli.socket,
            interval_ms,
            if once { Some(1) } else { iterations },
            json,
        ),
    };
    std::process::exit(code);
}
