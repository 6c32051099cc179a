//! Privilege: a task running as an unprivileged user cannot reach the
//! control socket (root only, 0600), open a pinned map (root-only pins and
//! directories), or connect to another namespace's VIP (the kernel refuses
//! it); the same probe as root shows the first two are the user's limits.
use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result, ensure};
use knit_tests::{Knit, tcp_task_definition, testbin};
use serde_json::Value;

#[test]
fn an_unprivileged_task_cannot_change_routing_or_reach_other_namespaces() -> Result<()> {
    let mut k = Knit::start("priv", "")?;
    let svc = |name: &str, ns: &str, port: u16| {
        format!(
            r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
                "serviceConnectConfiguration": {{"enabled": true, "namespace": "{ns}",
                  "services": [{{"portName": "tcp", "clientAliases": [{{"dnsName": "{name}", "port": {port}}}]}}]}}}}"#
        )
    };
    k.apply(&[
        ("ns.json", r#"[{"Name": "a"}, {"Name": "b"}]"#),
        ("dba-td.json", &tcp_task_definition("dba")),
        ("dba.json", &svc("dba", "a", 7300)),
        ("dbb-td.json", &tcp_task_definition("dbb")),
        ("dbb.json", &svc("dbb", "b", 7301)),
        (
            "cb-td.json",
            r#"{"family": "client-b", "containerDefinitions": [{"name": "c"}]}"#,
        ),
        (
            "cb.json",
            r#"{"serviceName": "client-b", "taskDefinition": "client-b",
                "serviceConnectConfiguration": {"enabled": true, "namespace": "b"}}"#,
        ),
    ])?;
    let tb = testbin().display().to_string();
    k.run(
        "dba",
        &[&tb, "echo", "--id", "a0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.run(
        "dbb",
        &[&tb, "echo", "--id", "b0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.wait_healthy("dba", 1)?;
    k.wait_healthy("dbb", 1)?;
    // Only the socket's own mode may stand in the way: its directory is
    // opened for traversal, and the probe is a binary anyone may run.
    std::fs::set_permissions(k.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let bin_dir = tempfile::tempdir()?;
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let probe = bin_dir.path().join("knit-testbin");
    std::fs::copy(testbin(), &probe)?;
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755))?;
    let vip = |service: &str| -> Result<String> {
        let rows = k.json(&["services"])?;
        rows.as_array()
            .and_then(|r| r.iter().find(|r| r["service"] == service))
            .and_then(|r| r["vip"].as_str().map(String::from))
            .context("a VIP")
    };
    let (other, own) = (
        format!("{}:7300", vip("dba")?),
        format!("{}:7301", vip("dbb")?),
    );
    let pin = std::fs::read_dir(&k.pin_dir)?
        .flatten()
        .map(|e| e.path().join("KNIT_BACKENDS"))
        .find(|p| p.exists())
        .context("a pinned map")?;
    let (socket, pin) = (k.socket.display().to_string(), pin.display().to_string());
    let p = probe.display().to_string();
    let args = [
        p.as_str(),
        "privileges",
        "--socket",
        &socket,
        "--pin",
        &pin,
        "--connect",
        &other,
        "--connect",
        &own,
    ];
    let mut as_nobody = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    as_nobody.extend_from_slice(&args);
    let r: Value = k.run_json("client-b", &as_nobody)?;
    eprintln!("as nobody: {r}");
    ensure!(r["uid"] == 65534, "{r}");
    ensure!(
        r["socket"]
            .as_str()
            .is_some_and(|s| s.contains("Permission denied")),
        "the control socket let an unprivileged task in: {r}"
    );
    ensure!(
        r["pin"].as_str().is_some_and(
            |s| s.contains("Permission denied") || s.contains("Operation not permitted")
        ),
        "a pinned map opened for an unprivileged task: {r}"
    );
    ensure!(
        r["connect"][&other]
            .as_str()
            .is_some_and(|s| s.contains("Connection refused")),
        "namespace b reached namespace a's VIP: {r}"
    );
    ensure!(r["connect"][&own] == "ok", "its own namespace's VIP: {r}");
    // As root, in the same namespace: the socket and the pin open (so the
    // refusals above were the user's), another namespace's VIP still not.
    let root: Value = k.run_json("client-b", &args)?;
    ensure!(root["socket"] == "ok" && root["pin"] == "ok", "{root}");
    ensure!(
        root["connect"][&other]
            .as_str()
            .is_some_and(|s| s.contains("Connection refused")),
        "{root}"
    );
    Ok(())
}
