//! Namespaces: a task resolves and reaches only the aliases of its own
//! service's namespace. Resolving: `knit run` gives the task its
//! namespace's view of the hosts file. Reaching: the kernel does not route
//! another namespace's VIP for it.
use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, tcp_task_definition, testbin};

#[test]
fn a_task_resolves_and_reaches_only_its_namespaces_aliases() -> Result<()> {
    let mut k = Knit::start("ns", "")?;
    // Two services with the same dnsName `db`, one per namespace; a's has a
    // second port, `tcp2`, with alias `dba` (nothing listens there).
    let svc = |name: &str, ns: &str, services: &str| {
        format!(
            r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
                "serviceConnectConfiguration": {{"enabled": true, "namespace": "{ns}",
                  "services": [{services}]}}}}"#
        )
    };
    let client = |name: &str, ns: &str| {
        (
            format!(r#"{{"family": "{name}", "containerDefinitions": [{{"name": "c"}}]}}"#),
            format!(
                r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
                    "serviceConnectConfiguration": {{"enabled": true, "namespace": "{ns}"}}}}"#
            ),
        )
    };
    let (ca_td, ca) = client("client-a", "a");
    let (cb_td, cb) = client("client-b", "b");
    k.apply(&[
        ("ns.json", r#"[{"Name": "a"}, {"Name": "b"}]"#),
        (
            "dba-td.json",
            r#"{"family": "dba", "containerDefinitions": [{"name": "app",
                "portMappings": [{"name": "tcp"}, {"name": "tcp2"}]}]}"#,
        ),
        (
            "dba.json",
            &svc(
                "dba",
                "a",
                r#"{"portName": "tcp", "clientAliases": [{"dnsName": "db", "port": 7300}]},
                   {"portName": "tcp2", "clientAliases": [{"dnsName": "dba", "port": 7301}]}"#,
            ),
        ),
        ("dbb-td.json", &tcp_task_definition("dbb")),
        (
            "dbb.json",
            &svc(
                "dbb",
                "b",
                r#"{"portName": "tcp", "clientAliases": [{"dnsName": "db", "port": 7300}]}"#,
            ),
        ),
        ("cat.json", &ca_td),
        ("ca.json", &ca),
        ("cbt.json", &cb_td),
        ("cb.json", &cb),
    ])?;
    let tb = testbin().display().to_string();
    for (service, id) in [("dba", "a0"), ("dbb", "b0")] {
        k.run(
            service,
            &[&tb, "echo", "--id", id, "--port-env", "KNIT_PORT_TCP"],
        )?;
    }
    k.wait_healthy("dbb", 1)?;
    knit_tests::wait_for(
        "dba's tcp port to be healthy",
        std::time::Duration::from_secs(30),
        || {
            let v = k.json(&["endpoints", "dba"]).ok()?;
            v.as_array()?
                .iter()
                .any(|e| e["port_name"] == "tcp" && e["state"] == "healthy")
                .then_some(())
        },
    )?;
    let hosts = k.hosts.display().to_string();
    let call = |client: &str, target: &str| {
        k.run_json(
            client,
            &[
                &tb, "client", "--target", target, "--hosts", &hosts, "--count", "3",
            ],
        )
    };
    // The same name, each namespace its own service.
    let a = call("client-a", "db:7300")?;
    ensure!(a["ok"] == 3 && a["by_backend"]["a0"] == 3, "{a}");
    let b = call("client-b", "db:7300")?;
    ensure!(b["ok"] == 3 && b["by_backend"]["b0"] == 3, "{b}");
    // Namespace a resolves its second alias (nothing listens: refused)...
    let a2 = call("client-a", "dba:7301")?;
    ensure!(
        a2["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused")),
        "{a2}"
    );
    // ...namespace b cannot resolve it...
    let err = call("client-b", "dba:7301").expect_err("b resolved a's alias");
    ensure!(format!("{err:#}").contains("dba is not in"), "{err:#}");
    // ...nor reach a's VIP by address.
    let rows = k.json(&["services"])?;
    let vip = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["service"] == "dba"))
        .and_then(|r| r["vip"].as_str())
        .context("dba's VIP")?
        .to_string();
    let denied = call("client-b", &format!("{vip}:7300"))?;
    ensure!(
        denied["failed"] == 3,
        "namespace b reached a's VIP: {denied}"
    );
    let err = denied["errors"][0].as_str().context("an error")?;
    ensure!(err.contains("Connection refused"), "{err}");
    // Outside any task, the hosts file holds every namespace's names.
    let text = std::fs::read_to_string(&k.hosts)?;
    ensure!(
        text.contains("\tdba\n") && text.contains("\tdb\n"),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_running_task_sees_services_created_after_it_started() -> Result<()> {
    let mut k = Knit::start("nslive", "")?;
    let (ctd, csvc) = knit_tests::client_service("client");
    k.apply(&[("c-td.json", &ctd), ("c.json", &csvc)])?;
    let tb = testbin().display().to_string();
    let hosts = k.hosts.display().to_string();
    // The task starts now and looks `late` up only after a while.
    let script = format!("sleep 3; exec {tb} client --target late:7400 --hosts {hosts} --count 3");
    let task = k.spawn_task(
        "client",
        &["sh", "-c", &script],
        std::process::Stdio::piped(),
    )?;
    let started = std::time::Instant::now();
    k.apply(&[
        ("late-td.json", &tcp_task_definition("late")),
        ("late.json", &knit_tests::tcp_service("late", "late", 7400)),
    ])?;
    k.run(
        "late",
        &[&tb, "echo", "--id", "l0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.wait_healthy("late", 1)?;
    ensure!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "setting up took longer than the task's sleep; the test proves nothing"
    );
    let out = knit_tests::wait_output(task, "task", knit_tests::TASK_TIMEOUT)?;
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    ensure!(r["ok"] == 3 && r["by_backend"]["l0"] == 3, "{r}");
    Ok(())
}
