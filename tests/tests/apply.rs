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
