//! Namespaces: a task reaches only the aliases of its own service's
//! namespace; the kernel does not route another namespace's VIP for it.
use anyhow::{Context, Result};
use knit_tests::{Knit, tcp_task_definition, testbin};

#[test]
fn a_task_reaches_only_its_namespaces_aliases() -> Result<()> {
    let mut k = Knit::start("ns", "")?;
    let svc = |name: &str, ns: &str, alias: &str| {
        format!(
            r#"{{"serviceName": "{name}", "taskDefinition": "{name}",
                "serviceConnectConfiguration": {{"enabled": true, "namespace": "{ns}",
                  "services": [{{"portName": "tcp", "clientAliases": [{{"dnsName": "{alias}", "port": 7300}}]}}]}}}}"#
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
        ("db-td.json", &tcp_task_definition("dba")),
        ("db.json", &svc("dba", "a", "dba")),
        ("cat.json", &ca_td),
        ("ca.json", &ca),
        ("cbt.json", &cb_td),
        ("cb.json", &cb),
    ])?;
    let tb = testbin().display().to_string();
    k.run(
        "dba",
        &[&tb, "echo", "--id", "a0", "--port-env", "KNIT_PORT_TCP"],
    )?;
    k.wait_healthy("dba", 1)?;
    let hosts = k.hosts.display().to_string();
    let ok = k.run_json(
        "client-a",
        &[
            &tb, "client", "--target", "dba:7300", "--hosts", &hosts, "--count", "5",
        ],
    )?;
    assert_eq!(ok["ok"], 5, "namespace a reaches its own alias: {ok}");
    let denied = k.run_json(
        "client-b",
        &[
            &tb, "client", "--target", "dba:7300", "--hosts", &hosts, "--count", "3",
        ],
    )?;
    assert_eq!(
        denied["failed"], 3,
        "namespace b must not reach a's alias: {denied}"
    );
    let err = denied["errors"][0].as_str().context("an error")?;
    assert!(err.contains("Connection refused"), "{err}");
    Ok(())
}
