//! `cargo xtask bench tls`: what mutual TLS between hosts costs.
//!
//! Two hosts (network namespaces sharing etcd, `knit signer` on host 1),
//! the same HTTP service twice on host 2: `plain` (no `tls`) and `secure`
//! (ECS's `tls` block: mutual TLS between the two daemons), each one task
//! of `knit-testbin http`. wrk runs as a task of a client service on host
//! 1, HTTP/1.1 keep-alive to each alias's VIP, in alternating rounds, so
//! each request crosses host 1's egress, the wire (veth) and host 2's
//! ingress: the path ECS's two sidecars take. Reported per path: req/s,
//! p50 and p99, and both daemons' CPU per 1,000 requests. Goal (#18):
//! mutual TLS costs at most 15% of plaintext req/s.
//!
//! TCP too, on two more pairs of services (plaintext goes host to host in
//! the kernel; with `tls` through both daemons over mutual TLS): one
//! stream's throughput (`knit-testbin blast` to a sink) with both
//! daemons' CPU per GB, and new connections one at a time (`knit-testbin
//! client`: connect, the server's first line, one echo), each of which is
//! a new mutual TLS handshake between the daemons.
use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, fleet::Fleet};

use super::{
    cpu, knit,
    markdown::{Align, Table},
    report::{self, Machine},
    stats,
    summary::{self, Bar, Entry, Goal, Kind, Panel, Reference},
    wrk,
};

/// mTLS req/s at least this share of plaintext's.
const GOAL_RATIO: f64 = 0.85;
const CONNECTIONS: u32 = 32;

struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Both daemons' CPU seconds per 1,000 requests.
    cpu_ms_per_k: f64,
    /// Mutual TLS handshakes host 1's egress made during the run.
    handshakes: f64,
}

/// One TCP round of one path.
struct TcpRun {
    /// One stream, bytes per second.
    bytes_per_s: f64,
    /// Both daemons' CPU seconds per GB (10^9 bytes) of that stream.
    cpu_s_per_gb: f64,
    /// New connections per second, one at a time (connect, first byte
    /// from the server, one echo).
    conns_per_s: f64,
}

struct Outcome {
    quick: bool,
    machine: Machine,
    date: String,
    version: String,
    secs: u32,
    plain: Vec<Run>,
    secure: Vec<Run>,
    /// TCP bytes per stream run, and connections per connection run.
    tcp_bytes: u64,
    tcp_conns: u32,
    tcp_plain: Vec<TcpRun>,
    tcp_secure: Vec<TcpRun>,
    /// The daemons handed TCP connections to the kernel's TLS.
    ktls: bool,
}

pub fn run(quick: bool) -> Result<()> {
    let (rounds, secs) = if quick { (1, 2) } else { (5, 10) };
    let bin = knit::binary()?;
    let testbin = knit::testbin(&bin)?;
    println!("starting 2 hosts (network namespaces) sharing etcd, and a signer");
    let mut fleet = Fleet::start_full("tlsb", 2, "", bin.path.clone())?;
    let version = knit::version(&fleet.hosts[0], &bin)?;
    let dir = tempfile::tempdir()?;
    let (ca, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let path = |p: &std::path::Path| p.display().to_string();
    fleet.hosts[0].ok(&["ca", "create", "--cert", &path(&ca), "--key", &path(&key)])?;
    let mut signer = fleet.hosts[0]
        .in_netns(&bin.path)?
        .args(["signer", "--config", &path(&fleet.hosts[0].config)])
        .args(["--ca-cert", &path(&ca), "--ca-key", &path(&key)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting knit signer")?;
    let outcome = measure(&mut fleet, &testbin, rounds, secs, quick, version);
    let _ = signer.kill();
    let _ = signer.wait();
    let outcome = outcome?;
    summary::publish(
        quick,
        "tls",
        &outcome.machine,
        &outcome.date,
        &outcome.render(),
        outcome.entry(),
        || Ok(outcome.headline()),
    )
}

/// The TCP services on host 2: (name, with tls).
const TCP_SERVICES: [(&str, bool); 4] = [
    ("plain-sink", false),
    ("secure-sink", true),
    ("plain-echo", false),
    ("secure-echo", true),
];

fn service(name: &str, port: u16, tls: bool) -> String {
    service_on(name, "web", port, tls)
}

fn tcp_service(name: &str, port: u16, tls: bool) -> String {
    service_on(name, "tcp", port, tls)
}

/// A service whose entry on port mapping `port_name` is `name:port`, with
/// ECS's tls block or not.
fn service_on(name: &str, port_name: &str, port: u16, tls: bool) -> String {
    let tls = if tls {
        r#", "tls": {"issuerCertificateAuthority": {"awsPcaAuthorityArn": "arn:aws:acm-pca:bench"}}"#
    } else {
        ""
    };
    format!(
        r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
            "serviceConnectConfiguration": {{"enabled": true,
              "services": [{{"portName": "{port_name}", "discoveryName": "{name}",
                             "clientAliases": [{{"dnsName": "{name}", "port": {port}}}]{tls}}}]}}}}"#
    )
}

/// The VIP of `name` as `k` lists it.
fn vip(k: &Knit, name: &str) -> Result<String> {
    let list = k.json(&["services"])?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|s| s["service"] == name)
        .and_then(|s| s["vip"].as_str().map(String::from))
        .with_context(|| format!("no VIP of {name}: {list}"))
}

fn measure(
    fleet: &mut Fleet,
    testbin: &std::path::Path,
    rounds: usize,
    secs: u32,
    quick: bool,
    version: String,
) -> Result<Outcome> {
    let (ctd, csvc) = knit_tests::client_service("client");
    fleet.hosts[0].apply(&[
        ("plain-td.json", &knit_tests::http_task_definition("plain")),
        ("plain.json", &service("plain", 8080, false)),
        (
            "secure-td.json",
            &knit_tests::http_task_definition("secure"),
        ),
        ("secure.json", &service("secure", 8081, true)),
        ("c-td.json", &ctd),
        ("c.json", &csvc),
    ])?;
    // TCP: a sink (throughput) and an echo server (new connections), each
    // plaintext and with tls.
    let mut tcp_files = Vec::new();
    for (i, (name, tls)) in TCP_SERVICES.iter().enumerate() {
        tcp_files.push((
            format!("{name}-td.json"),
            knit_tests::tcp_task_definition(name),
        ));
        tcp_files.push((
            format!("{name}.json"),
            tcp_service(name, 9000 + i as u16, *tls),
        ));
    }
    let files: Vec<(&str, &str)> = tcp_files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    fleet.hosts[0].apply(&files)?;
    knit_tests::wait_for("the services on host 2", Duration::from_secs(10), || {
        (fleet.hosts[1].json(&["services"]).ok()?.as_array()?.len() >= 3 + TCP_SERVICES.len())
            .then_some(())
    })?;
    let tb = testbin.display().to_string();
    for svc in ["plain", "secure"] {
        fleet.hosts[1].run(
            svc,
            &[&tb, "http", "--id", svc, "--port-env", "KNIT_PORT_WEB"],
        )?;
    }
    for (name, _) in TCP_SERVICES {
        let server = if name.ends_with("sink") {
            "sink-server"
        } else {
            "echo"
        };
        fleet.hosts[1].run(name, &[&tb, server, "--port-env", "KNIT_PORT_TCP"])?;
    }
    for svc in ["plain", "secure"]
        .into_iter()
        .chain(TCP_SERVICES.iter().map(|(n, _)| *n))
    {
        fleet.hosts[0].wait_healthy(svc, 1)?;
    }
    knit_tests::wait_for(
        "host 2's identity of secure",
        Duration::from_secs(30),
        || {
            let s = fleet.hosts[1].json(&["status"]).ok()?;
            s["tls"]["identities"]
                .as_array()?
                .iter()
                .any(|i| i["name"] == "spiffe://knit.local/ns/default/svc/secure")
                .then_some(())
        },
    )?;
    let urls = [
        format!("http://{}:8080/", vip(&fleet.hosts[0], "plain")?),
        format!("http://{}:8081/", vip(&fleet.hosts[0], "secure")?),
    ];
    let daemons: Vec<u32> = fleet
        .hosts
        .iter()
        .map(|h| h.daemon_pid().context("a daemon's pid"))
        .collect::<Result<_>>()?;
    let ticks = || -> Result<u64> {
        let mut t = 0;
        for pid in &daemons {
            t += cpu::tree_ticks(*pid)?.context("a daemon is gone")?;
        }
        Ok(t)
    };
    // Warm both paths (pools, the first handshakes).
    for url in &urls {
        one(&fleet.hosts[0], url, 1)?;
    }
    let (mut plain, mut secure) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for (i, url) in urls.iter().enumerate() {
            let handshakes = || fleet.hosts[0].metric_sum("knit_tls_client_handshakes_total", "");
            let (before, shakes) = (ticks()?, handshakes()?);
            let r = one(&fleet.hosts[0], url, secs)?;
            let cpu_s = cpu::ticks_to_secs(ticks()? - before);
            let shakes = handshakes()? - shakes;
            ensure!(
                r.errors() == 0,
                "round {round}, {url}: {}",
                r.describe_errors()
            );
            let run = Run {
                rps: r.rps,
                p50_us: r.p50_us,
                p99_us: r.p99_us,
                cpu_ms_per_k: cpu_s * 1000.0 / (r.requests.max(1) as f64) * 1000.0,
                handshakes: shakes,
            };
            println!(
                "  round {}: {} {} req/s, p50 {}, p99 {}, {} handshakes",
                round + 1,
                if i == 0 { "plaintext" } else { "mutual TLS" },
                stats::rate(run.rps),
                stats::micros(run.p50_us),
                stats::micros(run.p99_us),
                run.handshakes
            );
            if i == 0 { &mut plain } else { &mut secure }.push(run);
        }
    }
    // TCP, alternating too.
    let (tcp_bytes, tcp_conns): (u64, u32) = if quick {
        (64 << 20, 200)
    } else {
        (1 << 30, 2000)
    };
    let target = |name: &str, i: usize| -> Result<String> {
        Ok(format!("{}:{}", vip(&fleet.hosts[0], name)?, 9000 + i))
    };
    let sinks = [target("plain-sink", 0)?, target("secure-sink", 1)?];
    let echoes = [target("plain-echo", 2)?, target("secure-echo", 3)?];
    let (mut tcp_plain, mut tcp_secure) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for i in 0..2 {
            let before = ticks()?;
            let r = fleet.hosts[0].run_json(
                "client",
                &[
                    &tb,
                    "blast",
                    "--target",
                    &sinks[i],
                    "--bytes",
                    &tcp_bytes.to_string(),
                    "--timeout-s",
                    "120",
                ],
            )?;
            let cpu_s = cpu::ticks_to_secs(ticks()? - before);
            let received = r["received"].as_u64().context("blast: received")?;
            let secs = r["elapsed_s"].as_f64().context("blast: elapsed_s")?;
            ensure!(
                received == tcp_bytes && secs > 0.0,
                "the sink read {received} of {tcp_bytes} bytes: {r}"
            );
            let r = fleet.hosts[0].run_json(
                "client",
                &[
                    &tb,
                    "client",
                    "--target",
                    &echoes[i],
                    "--count",
                    &tcp_conns.to_string(),
                ],
            )?;
            ensure!(
                r["failed"] == 0 && r["ok"] == tcp_conns,
                "new connections to {}: {r}",
                echoes[i]
            );
            let ms = r["elapsed_ms"].as_f64().context("client: elapsed_ms")?;
            let run = TcpRun {
                bytes_per_s: tcp_bytes as f64 / secs,
                cpu_s_per_gb: cpu_s / (tcp_bytes as f64 / 1e9),
                conns_per_s: f64::from(tcp_conns) / (ms / 1000.0).max(1e-9),
            };
            println!(
                "  round {}: TCP {} {:.2} Gbit/s ({:.2} CPU s per GB), {} new connections/s",
                round + 1,
                if i == 0 { "plaintext" } else { "mutual TLS" },
                run.bytes_per_s * 8.0 / 1e9,
                run.cpu_s_per_gb,
                stats::rate(run.conns_per_s),
            );
            if i == 0 {
                &mut tcp_plain
            } else {
                &mut tcp_secure
            }
            .push(run);
        }
    }
    let ktls = fleet.hosts[0].metric_sum("knit_tls_ktls_connections_total", "")? > 0.0;
    Ok(Outcome {
        quick,
        machine: Machine::probe(),
        date: report::now_utc(),
        version,
        secs,
        plain,
        secure,
        tcp_bytes,
        tcp_conns,
        tcp_plain,
        tcp_secure,
        ktls,
    })
}

fn tmed(runs: &[TcpRun], f: impl Fn(&TcpRun) -> f64) -> f64 {
    stats::median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
}

/// One wrk run of `secs` from a task of `client` on host 1.
fn one(k: &Knit, url: &str, secs: u32) -> Result<wrk::Report> {
    let load = wrk::Load {
        url: url.to_string(),
        connections: CONNECTIONS,
        secs,
        close: false,
        script: None,
    };
    let args = load.args();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = k.spawn_task("client", &a, Stdio::piped())?;
    let out = knit_tests::wait_output(
        child,
        "wrk on host 1",
        Duration::from_secs(u64::from(secs) + 60),
    )?;
    ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wrk::parse(&String::from_utf8_lossy(&out.stdout))
}

fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    stats::median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
}

impl Outcome {
    fn ratio(&self) -> f64 {
        let p = med(&self.plain, |r| r.rps);
        if p > 0.0 {
            med(&self.secure, |r| r.rps) / p
        } else {
            0.0
        }
    }

    fn ratios(&self) -> Vec<f64> {
        self.plain
            .iter()
            .zip(&self.secure)
            .filter(|(p, _)| p.rps > 0.0)
            .map(|(p, s)| s.rps / p.rps)
            .collect()
    }

    fn verdict(&self) -> stats::Verdict {
        let r = self.ratio();
        let rs = self.ratios();
        let lo = rs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rs.iter().copied().fold(0.0, f64::max);
        stats::Verdict::new(r >= GOAL_RATIO, hi - lo, (r - GOAL_RATIO).abs(), || {
            format!("the rounds' ratios spread {lo:.2}–{hi:.2}")
        })
    }

    fn render(&self) -> String {
        let mut t = Table::new(&[
            ("host 1 -> host 2, HTTP/1.1 keep-alive", Align::Left),
            ("req/s", Align::Right),
            ("p50", Align::Right),
            ("p99", Align::Right),
            ("CPU per 1k requests (both daemons)", Align::Right),
            ("new mutual TLS connections per run", Align::Right),
        ]);
        for (name, runs) in [("plaintext", &self.plain), ("mutual TLS", &self.secure)] {
            t.row([
                name.to_string(),
                stats::rate(med(runs, |r| r.rps)),
                stats::micros(med(runs, |r| r.p50_us)),
                stats::micros(med(runs, |r| r.p99_us)),
                format!("{:.0} ms", med(runs, |r| r.cpu_ms_per_k)),
                format!("{:.0}", med(runs, |r| r.handshakes)),
            ]);
        }
        format!(
            "## TLS (mutual, between hosts)\n\n\
             knit {}. Two hosts in network namespaces joined by veth, sharing etcd, \
             `knit signer` on host 1; one `knit-testbin http` task behind each of two services \
             on host 2, `plain` and `secure` (ECS's `tls` block); wrk (1 thread, {} connections, \
             {} s) as a task on host 1 to each alias's VIP, alternating, {} round(s), medians. \
             Every request crosses host 1's egress, the wire and host 2's ingress: the path \
             ECS's two sidecars take. CPU is both daemons' (user + system) over the run.\n\n\
             {t}\n\
             Mutual TLS ÷ plaintext req/s: **{:.3}** (per round {}); goal ≥ {GOAL_RATIO} \
             (costs at most 15%): {}.\n\n\
             {tcp}\n\
             TCP with `tls` goes through both daemons (mutual TLS; bytes copied in \
             userspace); plaintext TCP goes host to host in the kernel, with no daemon on the \
             path, so its daemons' CPU is about nil. Each new TCP connection with `tls` is a \
             new mutual TLS handshake between the daemons (HTTP reuses pooled ones). {ktls}\n",
            self.version,
            CONNECTIONS,
            self.secs,
            self.plain.len(),
            self.ratio(),
            self.ratios()
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.verdict().long(),
            tcp = self.render_tcp(),
            ktls = if self.ktls {
                "The daemons handed those connections to the kernel's TLS (kTLS) after the \
                 handshake."
            } else {
                "This kernel has no kTLS (no `tls` upper layer protocol), so the daemons \
                 encrypt in userspace (rustls); where the kernel has it (Debian's 6.1 and 6.12, \
                 the VM tests' kernels) they hand the keys to it after the handshake."
            },
        )
    }

    fn render_tcp(&self) -> String {
        let mut t = Table::new(&[
            ("host 1 -> host 2, TCP", Align::Left),
            ("one stream", Align::Right),
            ("CPU per GB (both daemons)", Align::Right),
            ("new connections/s, one at a time", Align::Right),
        ]);
        let secure = if self.ktls {
            "mutual TLS (daemons, then kTLS)"
        } else {
            "mutual TLS (daemons, userspace)"
        };
        for (name, runs) in [
            ("plaintext (kernel)", &self.tcp_plain),
            (secure, &self.tcp_secure),
        ] {
            t.row([
                name.to_string(),
                format!("{:.2} Gbit/s", tmed(runs, |r| r.bytes_per_s) * 8.0 / 1e9),
                format!("{:.2} s", tmed(runs, |r| r.cpu_s_per_gb)),
                stats::rate(tmed(runs, |r| r.conns_per_s)),
            ]);
        }
        format!(
            "TCP: `knit-testbin blast` of {} MiB to a sink per run, and {} connections one \
             at a time (`knit-testbin client`: connect, the server's first line, one echo) \
             to an echo server, both as tasks on host 1, alternating, medians.\n\n{t}",
            self.tcp_bytes >> 20,
            self.tcp_conns
        )
    }

    fn entry(&self) -> Entry {
        let (p, s) = (med(&self.plain, |r| r.rps), med(&self.secure, |r| r.rps));
        Entry {
            date: self.date.clone(),
            quick: self.quick,
            goals: vec![Goal::new(
                "mutual TLS between hosts costs ≤ 15% of plaintext req/s (HTTP/1.1 keep-alive)",
                format!("{:.3}", self.ratio()),
                self.verdict().short(),
            )],
            panels: vec![Panel {
                title: "Host to host over mutual TLS (higher is better)".into(),
                caption: format!(
                    "req/s, HTTP/1.1 keep-alive, {CONNECTIONS} connections, from a task on one \
                     host (network namespace) to a task on another."
                ),
                bars: vec![
                    Bar::new("plaintext", p, stats::rate(p), Kind::Other),
                    Bar::new("mutual TLS", s, stats::rate(s), Kind::Knit),
                ],
                reference: Some(Reference {
                    value: p * GOAL_RATIO,
                    label: "goal: 0.85 × plaintext".into(),
                }),
            }],
        }
    }

    fn headline(&self) -> String {
        format!(
            "- `tls`: host to host over mutual TLS {} req/s vs {} plaintext ({:.3}; goal ≥ {GOAL_RATIO}), HTTP/1.1 keep-alive. Measured {}. See [BENCHMARKS.md](BENCHMARKS.md#tls-mutual-between-hosts).",
            stats::rate(med(&self.secure, |r| r.rps)),
            stats::rate(med(&self.plain, |r| r.rps)),
            self.ratio(),
            self.date,
        )
    }
}
