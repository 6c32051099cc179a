//! `knit apply` with bad input: exit 2, a message naming the file, the JSON
//! path and the fix, and nothing half-applied.
use anyhow::Result;
use knit_tests::{Knit, tcp_service, tcp_task_definition};

fn services(k: &Knit) -> Result<String> {
    Ok(k.json(&["services"])?.to_string())
}

#[test]
fn bad_input_is_refused_whole_with_file_path_and_fix() -> Result<()> {
    let k = Knit::start("apply", "")?;
    k.apply(&[
        ("db-td.json", &tcp_task_definition("db")),
        ("db-svc.json", &tcp_service("db", "db", 6379)),
    ])?;
    let before = services(&k)?;
    let other = tcp_task_definition("web");
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("malformed", r#"{"family": "x", "containerDefinitions": [}"#.to_string(), &["line 1", "$"]),
        (
            "unknown-port",
            r#"{"serviceName": "web", "taskDefinition": "db", "serviceConnectConfiguration": {"enabled": true, "services": [{"portName": "http"}]}}"#.to_string(),
            &["$.serviceConnectConfiguration.services[0].portName", "tcp"],
        ),
        (
            "port-range",
            r#"{"family": "big", "containerDefinitions": [{"name": "a", "portMappings": [{"name": "tcp", "containerPort": 70000}]}]}"#.to_string(),
            &["$.containerDefinitions[0].portMappings[0].containerPort", "70000"],
        ),
        ("duplicate-alias", tcp_service("web", "db", 6379).replace("\"taskDefinition\": \"web\"", "\"taskDefinition\": \"db\""), &["db", "6379"]),
        (
            "unknown-namespace",
            r#"{"serviceName": "web", "taskDefinition": "db", "serviceConnectConfiguration": {"enabled": true, "namespace": "prod", "services": [{"portName": "tcp", "discoveryName": "w2", "clientAliases": [{"port": 7000, "dnsName": "w2"}]}]}}"#.to_string(),
            &["$.serviceConnectConfiguration.namespace", "prod"],
        ),
    ];
    for (name, json, expect) in cases {
        let good = k.file("web-td.json", &other)?;
        let bad = k.file(&format!("{name}.json"), &json)?;
        let out = k.cli(&[
            "apply",
            "-f",
            &good.display().to_string(),
            "-f",
            &bad.display().to_string(),
        ])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}.json")),
            "{name}: the file is named: {err}"
        );
        assert!(err.contains("fix"), "{name}: a fix is given: {err}");
        for e in expect {
            assert!(err.contains(e), "{name}: {e:?} in: {err}");
        }
        // The good file in the same apply was not applied either.
        assert_eq!(services(&k)?, before, "{name}: half-applied");
        let tds = k.ok(&["services"])?;
        assert!(!tds.contains("web"), "{name}: {tds}");
    }
    // A missing file is bad input too.
    let out = k.cli(&["apply", "-f", "/nonexistent/knit.json"])?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

/// kill -9 of the daemon at random points during `knit apply`: after a
/// restart each apply is either all there or not at all, and the store opens.
#[test]
fn apply_is_atomic_across_daemon_crashes() -> Result<()> {
    let mut k = Knit::start("crashapply", "")?;
    k.apply(&[("db-td.json", &tcp_task_definition("db"))])?;
    let mut cut_off = 0;
    for round in 0..ROUNDS {
        // Three services in one apply, spread over three files.
        let docs: Vec<(String, String)> = ["a", "b", "c"]
            .iter()
            .map(|x| {
                let name = format!("r{round}{x}");
                let json = tcp_service(&name, &name, 7000).replace(
                    &format!("\"taskDefinition\": \"{name}\""),
                    "\"taskDefinition\": \"db\"",
                );
                (format!("{name}.json"), json)
            })
            .collect();
        let mut cmd = k.cmd();
        cmd.arg("apply");
        for (f, json) in &docs {
            cmd.arg("-f").arg(k.file(f, json)?);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        // A pseudo-random delay from the round number (0..20 ms).
        std::thread::sleep(std::time::Duration::from_micros((round * 7919) % 20_000));
        k.kill_daemon()?;
        let _ = child.wait();
        k.start_daemon()?;
        let names = services(&k)?;
        let present = ["a", "b", "c"]
            .iter()
            .filter(|x| names.contains(&format!("\"r{round}{x}\"")))
            .count();
        assert!(
            present == 0 || present == 3,
            "round {round}: {present} of 3 services applied: {names}"
        );
        if present == 0 {
            cut_off += 1;
        }
    }
    eprintln!("{cut_off} of {ROUNDS} applies were cut off by the kill");
    Ok(())
}

/// kill -9 rounds of `apply_is_atomic_across_daemon_crashes`.
const ROUNDS: u64 = 50;

/// Re-applying is a diff: what is equal is left alone, what changed is
/// updated in place, and traffic to the service never stops.
#[test]
fn reapplying_is_a_diff_and_drops_no_traffic() -> Result<()> {
    let mut k = Knit::start("reapply", "")?;
    let (ctd, csvc) = knit_tests::client_service("client");
    let td = tcp_task_definition("db");
    let svc = tcp_service("db", "db", 7100);
    let first = k.apply(&[
        ("td.json", &td),
        ("svc.json", &svc),
        ("c.json", &ctd),
        ("cs.json", &csvc),
    ])?;
    assert!(first.contains("service/db created"), "{first}");
    assert!(first.contains("task-definition/db:1 registered"), "{first}");
    let tb = knit_tests::testbin().display().to_string();
    for id in ["a", "b"] {
        k.run(
            "db",
            &[&tb, "echo", "--id", id, "--port-env", "KNIT_PORT_TCP"],
        )?;
    }
    k.wait_healthy("db", 2)?;
    let vip_before = k.json(&["services"])?;
    let hosts = k.hosts.display().to_string();
    let load = k.spawn_task(
        "client",
        &[
            &tb,
            "client",
            "--target",
            "db:7100",
            "--hosts",
            &hosts,
            "--duration-ms",
            "3000",
            "--interval-ms",
            "2",
        ],
        std::process::Stdio::piped(),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let same = k.apply(&[("td.json", &td), ("svc.json", &svc)])?;
    assert!(same.contains("service/db unchanged"), "{same}");
    assert!(same.contains("task-definition/db:1 unchanged"), "{same}");
    // A real change: the service's own outlier detection.
    let changed = svc.replace(
        r#""discoveryName": "db","#,
        r#""discoveryName": "db", "outlierDetection": {"consecutiveFailures": 3},"#,
    );
    assert_ne!(changed, svc);
    let upd = k.apply(&[("svc2.json", &changed)])?;
    assert!(upd.contains("service/db updated"), "{upd}");
    let out = knit_tests::wait_output(load, "load", knit_tests::TASK_TIMEOUT)?;
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["failed"], 0, "traffic dropped during re-apply: {r}");
    assert!(r["ok"].as_u64().unwrap_or(0) > 100, "{r}");
    let vip_after = k.json(&["services"])?;
    assert_eq!(
        vip_before[0]["vip"], vip_after[0]["vip"],
        "the alias kept its VIP"
    );
    Ok(())
}
