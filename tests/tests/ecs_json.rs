//! ECS JSON without surprises: a field that would change routing or
//! security and that knit cannot honour (`tls` on a TCP port, or malformed) is refused; fields that
//! change nothing are accepted and listed once; the seeds' examples apply
//! as written; every services[] entry gets its own ingress listener, and a
//! listener that cannot be bound fails the apply (or the task's start);
//! `"enabled": false` puts a service outside Service Connect.
use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, client_service, http_task_definition, tcp_service, tcp_task_definition};
use serde_json::Value;

fn tb() -> String {
    knit_tests::testbin().display().to_string()
}

/// A port nothing listens on now on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `knit apply` of the given files; (exit code, stdout, stderr).
fn apply(k: &Knit, docs: &[(&str, &str)]) -> Result<(Option<i32>, String, String)> {
    let mut args = vec!["apply".to_string()];
    for (name, json) in docs {
        args.push("-f".into());
        args.push(k.file(name, json)?.display().to_string());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = k.cli(&a)?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// An HTTP client task of `client` calling `url` `count` times.
fn call(k: &Knit, client: &str, url: &str, count: u32) -> Result<Value> {
    let hosts = k.hosts.display().to_string();
    k.run_json(
        client,
        &[
            &tb(),
            "http-client",
            "--hosts",
            &hosts,
            "--url",
            url,
            "--count",
            &count.to_string(),
        ],
    )
}

#[test]
fn a_malformed_tls_block_is_refused_and_fields_knit_does_not_use_are_listed_once() -> Result<()> {
    let k = Knit::start("ecstls", "")?;
    let td = r#"{"family": "web", "cpu": "256", "memory": "512", "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "executionRoleArn": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
        "taskRoleArn": "arn:aws:iam::123456789012:role/app",
        "containerDefinitions": [{"name": "web", "image": "nginx", "essential": true,
            "environment": [{"name": "A", "value": "1"}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/web"}},
            "portMappings": [{"name": "web", "containerPort": 0, "appProtocol": "http"}]}]}"#;
    let svc = |extra: &str| {
        format!(
            r#"{{"serviceName": "web", "taskDefinition": "web", "cluster": "prod",
                "desiredCount": 3, "launchType": "FARGATE",
                "networkConfiguration": {{"awsvpcConfiguration": {{"subnets": ["subnet-1"]}}}},
                "loadBalancers": [], "deploymentConfiguration": {{"maximumPercent": 200}},
                "serviceConnectConfiguration": {{"enabled": true,
                  "logConfiguration": {{"logDriver": "awslogs"}},
                  "services": [{{"portName": "web", "discoveryName": "web",
                    "clientAliases": [{{"dnsName": "web", "port": 8080}}],
                    "timeout": {{"perRequestTimeoutSeconds": 20, "futureKey": 1}}{extra}}}]}}}}"#
        )
    };
    // A tls block without its CA: refused whole, with the file, the JSON
    // path and the fix (a well-formed one turns on mutual TLS: tls.rs).
    let tls = svc(r#", "tls": {"kmsKey": "arn:aws:kms:us-east-1:123456789012:key/x"}"#);
    let (code, _, err) = apply(&k, &[("web-td.json", td), ("web-svc.json", &tls)])?;
    ensure!(code == Some(2), "tls refused with exit 2: {code:?} {err}");
    for want in [
        "web-svc.json at $.serviceConnectConfiguration.services[0].tls.issuerCertificateAuthority",
        "fix: use \"tls\": {\"issuerCertificateAuthority\"",
    ] {
        ensure!(err.contains(want), "{want:?} in: {err}");
    }
    let rows = k.json(&["services"])?;
    ensure!(rows.as_array().is_some_and(|r| r.is_empty()), "{rows}");

    // Without tls: applied, and what knit does not use is listed once.
    let (code, out, err) = apply(&k, &[("web-td.json", td), ("web-svc.json", &svc(""))])?;
    ensure!(code == Some(0), "applied: {code:?} {out} {err}");
    ensure!(out.contains("service/web created"), "{out}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("not used by knit: "))
        .collect();
    ensure!(lines.len() == 2, "one line per file: {err}");
    let line = |file: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("{file}: ")))
            .copied()
            .unwrap_or_default()
    };
    let td_line = line("web-td.json");
    for path in [
        "$.cpu",
        "$.memory",
        "$.networkMode",
        "$.requiresCompatibilities",
        "$.executionRoleArn",
        "$.taskRoleArn",
        "$.containerDefinitions[0].image",
        "$.containerDefinitions[0].essential",
        "$.containerDefinitions[0].environment",
        "$.containerDefinitions[0].logConfiguration",
        "$.containerDefinitions[0].name",
    ] {
        ensure!(td_line.contains(path), "{path} in: {td_line}");
        ensure!(td_line.matches(path).count() == 1, "once: {td_line}");
    }
    // Only the key itself, not what is inside it.
    ensure!(!td_line.contains("logDriver"), "{td_line}");
    let svc_line = line("web-svc.json");
    for path in [
        "$.cluster",
        "$.desiredCount",
        "$.launchType",
        "$.networkConfiguration",
        "$.loadBalancers",
        "$.deploymentConfiguration",
        "$.serviceConnectConfiguration.logConfiguration",
        "$.serviceConnectConfiguration.services[0].timeout.futureKey",
    ] {
        ensure!(svc_line.contains(path), "{path} in: {svc_line}");
    }
    // What knit uses is not listed.
    ensure!(!svc_line.contains("perRequestTimeoutSeconds"), "{svc_line}");
    let rows = k.json(&["services"])?;
    ensure!(rows[0]["dns_name"] == "web", "{rows}");
    Ok(())
}

#[test]
fn seed_001_example_applies_and_every_entry_answers_with_its_own_ingress_listener() -> Result<()> {
    let mut k = Knit::start("seed001", "")?;
    let app_port = free_port()?;
    // seeds/001's service (line 50) as valid JSON, with a task definition
    // whose one port mapping "http" speaks HTTP.
    let td = format!(
        r#"{{"family": "app", "containerDefinitions": [{{"name": "app", "image": "app",
            "portMappings": [{{"name": "http", "containerPort": {app_port}, "appProtocol": "http"}}]}}]}}"#
    );
    let service = r#"{"serviceName": "app", "taskDefinition": "app",
        "serviceConnectConfiguration": {"enabled": true, "namespace": "internal", "services": [
            {"portName": "http"},
            {"discoveryName": "http-second", "portName": "http"},
            {"clientAliases": [{"dnsName": "db", "port": 81}], "discoveryName": "http-three",
             "portName": "http"},
            {"clientAliases": [{"dnsName": "", "port": 81}], "discoveryName": "http-four",
             "portName": "http", "ingressPortOverride": 99}]}}"#;
    let (ctd, _) = client_service("client");
    let client = r#"{"serviceName": "client", "taskDefinition": "client",
        "serviceConnectConfiguration": {"enabled": true, "namespace": "internal"}}"#;
    k.apply(&[
        ("ns.json", r#"{"Name": "internal"}"#),
        ("app-td.json", &td),
        ("app-svc.json", service),
        ("c-td.json", &ctd),
        ("c-svc.json", client),
    ])?;
    let rows = k.json(&["services"])?;
    let mut names: Vec<String> = rows
        .as_array()
        .context("rows")?
        .iter()
        .filter(|r| r["service"] == "app")
        .map(|r| format!("{}:{}", r["dns_name"].as_str().unwrap_or("?"), r["port"]))
        .collect();
    names.sort();
    let want = [
        "db:81".to_string(),
        "http-four.internal:81".into(),
        format!("http-second.internal:{app_port}"),
        format!("http.internal:{app_port}"),
    ];
    ensure!(names == want, "{names:?}");
    k.run(
        "app",
        &[&tb(), "http", "--id", "a0", "--port-env", "KNIT_PORT_HTTP"],
    )?;
    k.wait_healthy("app", 1)?;
    for name in &want {
        let r = call(&k, "client", &format!("http://{name}/"), 3)?;
        ensure!(r["ok"] == 3 && r["by_backend"]["a0"] == 3, "{name}: {r}");
    }
    // Four entries, four ingress listeners; http-four's on port 99.
    let eps = k.json(&["endpoints", "app"])?;
    let ingress = &eps[0]["ingress_ports"];
    ensure!(
        ingress.as_object().is_some_and(|m| m.len() == 4),
        "one listener per entry: {eps}"
    );
    ensure!(ingress["http-four"] == 99, "{eps}");
    let mut ports: Vec<u64> = ingress
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, p)| p.as_u64())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ensure!(ports.len() == 4, "four ports: {eps}");
    for port in ports {
        let out = std::process::Command::new(tb())
            .args([
                "http-client",
                "--url",
                &format!("http://127.0.0.1:{port}/"),
                "--count",
                "2",
            ])
            .output()?;
        let r: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
        ensure!(
            r["ok"] == 2 && r["by_backend"]["a0"] == 2,
            "port {port}: {r}"
        );
    }
    Ok(())
}

#[test]
fn an_ingress_port_that_cannot_be_bound_fails_the_apply_and_the_task_start() -> Result<()> {
    let mut k = Knit::start("ingressbind", "")?;
    let held = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken = held.local_addr()?.port();
    let svc = |name: &str, override_: Option<u16>| {
        let o = override_.map_or(String::new(), |p| {
            format!(r#", "ingressPortOverride": {p}"#)
        });
        format!(
            r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
                "serviceConnectConfiguration": {{"enabled": true,
                  "services": [{{"portName": "web", "discoveryName": "{name}",
                    "clientAliases": [{{"dnsName": "{name}", "port": 8080}}]{o}}}]}}}}"#
        )
    };
    k.apply(&[
        ("web-td.json", &http_task_definition("web")),
        ("web-svc.json", &svc("web", None)),
    ])?;
    k.run(
        "web",
        &[&tb(), "http", "--id", "w0", "--port-env", "KNIT_PORT_WEB"],
    )?;
    k.wait_healthy("web", 1)?;
    let before = k.json(&["endpoints", "web"])?[0]["ingress_ports"]["web"].clone();
    ensure!(before.as_u64().is_some(), "a listener: {before}");

    // The task runs: moving its listener to a port the test holds is refused.
    let (code, _, err) = apply(&k, &[("web-svc.json", &svc("web", Some(taken)))])?;
    ensure!(code == Some(2), "refused: {code:?} {err}");
    for want in [
        "web-svc.json at $.serviceConnectConfiguration.services[0].ingressPortOverride",
        &format!("ingress port {taken} cannot be bound on 127.0.0.1"),
        "in use",
        "fix: free port",
    ] {
        ensure!(err.contains(want), "{want:?} in: {err}");
    }
    // Nothing stored: same listener, and the service as it was.
    let eps = k.json(&["endpoints", "web"])?;
    ensure!(eps[0]["ingress_ports"]["web"] == before, "{eps}");
    let again = k.ok(&[
        "apply",
        "-f",
        &k.file("same.json", &svc("web", None))?
            .display()
            .to_string(),
    ])?;
    ensure!(again.contains("service/web unchanged"), "{again}");

    // Once the port is free the same apply moves the running task's listener.
    drop(held);
    k.apply(&[("web-svc.json", &svc("web", Some(taken)))])?;
    let eps = k.json(&["endpoints", "web"])?;
    ensure!(eps[0]["ingress_ports"]["web"] == taken, "{eps}");
    let out = std::process::Command::new(tb())
        .args([
            "http-client",
            "--url",
            &format!("http://127.0.0.1:{taken}/"),
            "--count",
            "2",
        ])
        .output()?;
    let r: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(r["ok"] == 2, "{r}");

    // No task yet: the apply is fine, and the task's start fails with the reason.
    let held = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken2 = held.local_addr()?.port();
    k.apply(&[
        ("api-td.json", &http_task_definition("api")),
        ("api-svc.json", &svc("api", Some(taken2))),
    ])?;
    let out = k.cli(&["run", "--service", "api", "--", &tb(), "http", "--id", "x"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "start failed: {:?} {err}",
        out.status
    );
    ensure!(
        err.contains(&format!("ingressPortOverride {taken2}")) && err.contains("in use"),
        "{err}"
    );
    let eps = k.json(&["endpoints", "api"])?;
    ensure!(
        eps.as_array().is_some_and(|e| e.is_empty()),
        "no task left: {eps}"
    );
    drop(held);
    Ok(())
}

#[test]
fn a_service_with_enabled_false_is_not_in_service_connect() -> Result<()> {
    let mut k = Knit::start("scoff", "")?;
    let (on_td, on) = client_service("on");
    let off_td = r#"{"family": "off", "containerDefinitions": [{"name": "c"}]}"#;
    let off = r#"{"serviceName": "off", "taskDefinition": "off",
        "serviceConnectConfiguration": {"enabled": false, "namespace": "default",
          "services": [{"portName": "x"}]}}"#;
    let (code, _, err) = apply(
        &k,
        &[
            ("db-td.json", &tcp_task_definition("db")),
            ("db-svc.json", &tcp_service("db", "db", 7400)),
            ("on-td.json", &on_td),
            ("on-svc.json", &on),
            ("off-td.json", off_td),
            ("off-svc.json", off),
        ],
    )?;
    ensure!(code == Some(0), "{err}");
    // Its services[] change nothing: listed, not checked (portName "x" is no port).
    ensure!(
        err.contains("off-svc.json: $.serviceConnectConfiguration.services"),
        "{err}"
    );
    k.run(
        "db",
        &[&tb(), "echo", "--id", "d0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.wait_healthy("db", 1)?;
    let hosts = k.hosts.display().to_string();
    let tcp = |client: &str, target: &str| {
        k.run_json(
            client,
            &[
                &tb(),
                "client",
                "--target",
                target,
                "--hosts",
                &hosts,
                "--count",
                "3",
            ],
        )
    };
    let ok = tcp("on", "db:7400")?;
    ensure!(ok["ok"] == 3, "a client-only service reaches db: {ok}");
    // Its task does not resolve the name...
    let err = tcp("off", "db:7400").expect_err("a task outside Service Connect resolved db");
    ensure!(format!("{err:#}").contains("db is not in"), "{err:#}");
    // ...nor reach the VIP.
    let rows = k.json(&["services"])?;
    let rows = rows.as_array().context("rows")?;
    let vip = rows
        .iter()
        .find(|r| r["service"] == "db")
        .and_then(|r| r["vip"].as_str())
        .context("db's VIP")?;
    let denied = tcp("off", &format!("{vip}:7400"))?;
    ensure!(denied["failed"] == 3, "reached db's VIP: {denied}");
    ensure!(
        denied["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused")),
        "{denied}"
    );
    // knit services says so.
    let row = rows
        .iter()
        .find(|r| r["service"] == "off")
        .context("a row for off")?;
    ensure!(
        row["service_connect"] == false && row["dns_name"] == "(not in Service Connect)",
        "{row}"
    );
    let on_row = rows.iter().find(|r| r["service"] == "on").context("on")?;
    ensure!(on_row["service_connect"] == true, "{on_row}");
    let table = k.ok(&["services"])?;
    ensure!(table.contains("(not in Service Connect)"), "{table}");
    Ok(())
}
