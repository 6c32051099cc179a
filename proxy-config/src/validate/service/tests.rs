//! Service, cluster and namespace rules, each with a good and a bad case.

use crate::test_support::{check, ok, one, svc, web_td};

#[test]
fn service_name_rules() {
    let file = format!("[{}, {}]", web_td(), svc(&"S_-9".repeat(63), "[]"));
    assert_eq!(ok(&[("s.json", &file)]).services.len(), 1);
    let file = format!("[{}, {}]", web_td(), svc("web.app", "[]"));
    check(
        &one(&[("s.json", &file)]),
        "$[1].serviceName",
        "contains '.'",
        "\"web-app\"",
    );
    let file = format!("[{}, {}]", web_td(), svc(&"a".repeat(256), "[]"));
    check(
        &one(&[("s.json", &file)]),
        "$[1].serviceName",
        "at most 255",
        "rename it",
    );
}

#[test]
fn task_definition_reference_forms() {
    for reference in [
        "web",
        "web:3",
        "arn:aws:ecs:ap-northeast-1:123456789012:task-definition/web:1",
    ] {
        let file = format!(
            r#"[{}, {{"serviceName": "s", "taskDefinition": "{reference}"}}]"#,
            web_td()
        );
        assert_eq!(
            ok(&[("s.json", &file)]).services[0].task_definition,
            "web",
            "{reference}"
        );
    }
    let file = format!(
        r#"[{}, {{"serviceName": "s", "taskDefinition": "web:latest"}}]"#,
        web_td()
    );
    check(
        &one(&[("s.json", &file)]),
        "$[1].taskDefinition",
        "revision \"latest\"",
        "family:REVISION",
    );
    let file = r#"{"serviceName": "s", "taskDefinition": "arn:aws:ecs:r:1:service/x"}"#;
    check(
        &one(&[("s.json", file)]),
        "$.taskDefinition",
        "not of a task definition",
        "ARN",
    );
    let file = r#"{"serviceName": "s"}"#;
    check(
        &one(&[("s.json", file)]),
        "$.taskDefinition",
        "missing",
        "\"taskDefinition\"",
    );
}

#[test]
fn enabled_is_required_and_false_means_no_endpoints() {
    let file = format!(
        r#"[{}, {{"serviceName": "s", "taskDefinition": "web", "serviceConnectConfiguration": {{"services": []}}}}]"#,
        web_td()
    );
    check(
        &one(&[("s.json", &file)]),
        "$[1].serviceConnectConfiguration.enabled",
        "missing",
        "\"enabled\": true",
    );
    // Disabled: the entries are not looked at (portName "nope" would fail).
    let file = format!(
        r#"[{}, {{"serviceName": "s", "taskDefinition": "web", "serviceConnectConfiguration": {{"enabled": false, "services": [{{"portName": "nope"}}]}}}}]"#,
        web_td()
    );
    let p = ok(&[("s.json", &file)]);
    assert!(p.services[0].endpoints.is_empty());
    assert_eq!(p.services[0].namespace, "default");
}

#[test]
fn discovery_name_rules() {
    let file = format!(
        "[{}, {}]",
        web_td(),
        svc(
            "s",
            r#"[{"portName": "http", "discoveryName": "api_v2-x"}]"#
        )
    );
    assert_eq!(
        ok(&[("s.json", &file)]).services[0].endpoints[0].discovery_name,
        "api_v2-x"
    );
    let file = format!(
        "[{}, {}]",
        web_td(),
        svc("s", r#"[{"portName": "http", "discoveryName": "Api"}]"#)
    );
    check(
        &one(&[("s.json", &file)]),
        "$[1].serviceConnectConfiguration.services[0].discoveryName",
        "contains 'A'",
        "\"api\"",
    );
    let file = format!(
        "[{}, {}]",
        web_td(),
        svc("s", r#"[{"portName": "http", "discoveryName": "-api"}]"#)
    );
    check(
        &one(&[("s.json", &file)]),
        "$[1].serviceConnectConfiguration.services[0].discoveryName",
        "starts with",
        "leave it out",
    );
}

#[test]
fn port_name_required() {
    let file = format!(
        "[{}, {}]",
        web_td(),
        svc("s", r#"[{"discoveryName": "api"}]"#)
    );
    check(
        &one(&[("s.json", &file)]),
        "$[1].serviceConnectConfiguration.services[0]",
        "portName is missing",
        "portMappings[].name",
    );
}

#[test]
fn client_alias_rules() {
    let at = "$[1].serviceConnectConfiguration.services[0].clientAliases";
    let case = |aliases: &str| {
        let file = format!(
            "[{}, {}]",
            web_td(),
            svc(
                "s",
                &format!(r#"[{{"portName": "http", "clientAliases": {aliases}}}]"#)
            )
        );
        one(&[("s.json", &file)])
    };
    check(
        &case(r#"[{"port": 80}, {"port": 81}]"#),
        at,
        "at most 1",
        "keep one alias",
    );
    check(
        &case(r#"[{"dnsName": "web"}]"#),
        &format!("{at}[0].port"),
        "port is missing",
        "\"port\"",
    );
    check(
        &case(r#"[{"port": 0}]"#),
        &format!("{at}[0].port"),
        "port 0 is out of range",
        "use a port between 1 and 65535",
    );
    check(
        &case(r#"[{"port": 70000}]"#),
        &format!("{at}[0].port"),
        "port 70000 is out of range",
        "use a port between 1 and 65535",
    );
    check(
        &case(r#"[{"port": 80, "dnsName": "Web.Internal"}]"#),
        &format!("{at}[0].dnsName"),
        "contains 'W'",
        "\"web.internal\"",
    );
    check(
        &case(r#"[{"port": 80, "dnsName": "-web"}]"#),
        &format!("{at}[0].dnsName"),
        "starts with",
        "leave dnsName out",
    );
    let long = "a".repeat(128);
    check(
        &case(&format!(r#"[{{"port": 80, "dnsName": "{long}"}}]"#)),
        &format!("{at}[0].dnsName"),
        "at most 127",
        "dnsName",
    );
}

#[test]
fn ingress_port_override_and_timeouts() {
    let at = "$[1].serviceConnectConfiguration.services[0]";
    let case = |extra: &str| {
        let file = format!(
            "[{}, {}]",
            web_td(),
            svc("s", &format!(r#"[{{"portName": "http", {extra}}}]"#))
        );
        crate::test_support::run(&[("s.json", &file)], &crate::Existing::default())
    };
    let good = case(
        r#""ingressPortOverride": 9000, "timeout": {"idleTimeoutSeconds": 0, "perRequestTimeoutSeconds": 2147483647}"#,
    );
    let ep = good
        .map(|p| p.services[0].endpoints[0].clone())
        .map_err(|e| e.to_string());
    let ep = ep.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            ep.ingress_port_override,
            ep.idle_timeout_s,
            ep.per_request_timeout_s
        ),
        (Some(9000), Some(0), Some(2147483647))
    );
    let zero = case(r#""ingressPortOverride": 0"#)
        .map(|p| p.services[0].endpoints[0].ingress_port_override);
    assert_eq!(zero, Ok(None));
    let bad = |extra: &str| case(extra).map_err(|e| e.0).err().unwrap_or_default();
    let e = bad(r#""ingressPortOverride": 65536"#);
    check(
        &e[0],
        &format!("{at}.ingressPortOverride"),
        "port 65536 is out of range",
        "use a port between 1 and 65535",
    );
    let e = bad(r#""timeout": {"idleTimeoutSeconds": 2147483648}"#);
    check(
        &e[0],
        &format!("{at}.timeout.idleTimeoutSeconds"),
        "2147483648 is out of range",
        "2147483647",
    );
    let e = bad(r#""timeout": {"perRequestTimeoutSeconds": -5}"#);
    check(
        &e[0],
        &format!("{at}.timeout.perRequestTimeoutSeconds"),
        "-5 is out of range",
        "0 (no timeout)",
    );
}

#[test]
fn cluster_and_namespace_objects() {
    let p = ok(&[(
        "c.json",
        r#"[{"clusterName": "tutorial", "serviceConnectDefaults": {"namespace": "service-connect"}}, {"Name": "prod", "Description": "x"}, {"clusterName": "plain"}]"#,
    )]);
    assert_eq!(p.default_namespace.as_deref(), Some("service-connect"));
    assert_eq!(p.namespaces, vec!["service-connect", "prod"]);
    check(
        &one(&[("c.json", r#"{"clusterName": "a b"}"#)]),
        "$.clusterName",
        "contains ' '",
        "\"a-b\"",
    );
    check(
        &one(&[("c.json", r#"{"serviceConnectDefaults": {}}"#)]),
        "$.serviceConnectDefaults.namespace",
        "missing",
        "created if new",
    );
    check(
        &one(&[("n.json", r#"{"Name": "a/b"}"#)]),
        "$.Name",
        "contains '/'",
        "\"service-connect\"",
    );
    check(
        &one(&[("n.json", r#"{"Name": null}"#)]),
        "$.Name",
        "null",
        "\"Name\"",
    );
    let arn = "arn:aws:servicediscovery:ap-northeast-1:123456789012:namespace/ns-vdpucf3aztj23ecw";
    let e = one(&[(
        "c.json",
        &format!(r#"{{"serviceConnectDefaults": {{"namespace": "{arn}"}}}}"#),
    )]);
    check(
        &e,
        "$.serviceConnectDefaults.namespace",
        "is an ARN",
        "service-connect",
    );
}

#[test]
fn outlier_detection_per_service() {
    let at = "$[1].serviceConnectConfiguration.services[0]";
    let case = |extra: &str| {
        let file = format!(
            "[{}, {}]",
            web_td(),
            svc("s", &format!(r#"[{{"portName": "http", {extra}}}]"#))
        );
        crate::test_support::run(&[("s.json", &file)], &crate::Existing::default())
    };
    let good = case(
        r#""outlierDetection": {"consecutiveFailures": 3, "baseEjectionSeconds": 2, "maxEjectionPercent": 50}"#,
    )
    .map(|p| p.services[0].endpoints[0].outlier.clone());
    assert_eq!(
        good,
        Ok(Some(crate::OutlierSpec {
            consecutive_failures: Some(3),
            base_ejection_s: Some(2),
            max_ejection_s: None,
            max_ejection_percent: Some(50),
        }))
    );
    let none = case("\"discoveryName\": \"d\"").map(|p| p.services[0].endpoints[0].outlier.clone());
    assert_eq!(none, Ok(None));
    let bad = |extra: &str| case(extra).map_err(|e| e.0).err().unwrap_or_default();
    let e = bad(r#""outlierDetection": {"consecutiveFailures": 0}"#);
    check(
        &e[0],
        &format!("{at}.outlierDetection.consecutiveFailures"),
        "0 is out of range",
        "use 1 to 1000",
    );
    let e = bad(r#""outlierDetection": {"maxEjectionPercent": 101}"#);
    check(
        &e[0],
        &format!("{at}.outlierDetection.maxEjectionPercent"),
        "101 is out of range",
        "0 to 100",
    );
    let e = bad(r#""outlierDetection": {"baseEjectionSeconds": 60, "maxEjectionSeconds": 10}"#);
    check(
        &e[0],
        &format!("{at}.outlierDetection.maxEjectionSeconds"),
        "below baseEjectionSeconds",
        "at least",
    );
}

#[test]
fn access_log_configuration_rules() {
    let with = |block: &str| {
        format!(
            r#"[{}, {{"serviceName": "s", "taskDefinition": "web",
                "serviceConnectConfiguration": {{"enabled": true, "accessLogConfiguration": {block}}}}}]"#,
            web_td()
        )
    };
    let p = ok(&[(
        "s.json",
        &with(r#"{"format": "JSON", "includeQueryParameters": "ENABLED"}"#),
    )]);
    let al = p.services[0].access_log.expect("access log");
    assert_eq!(al.format, crate::AccessLogFormat::Json);
    assert!(al.include_query);
    let p = ok(&[("s.json", &with(r#"{"format": "TEXT"}"#))]);
    assert_eq!(
        p.services[0]
            .access_log
            .map(|a| (a.format, a.include_query)),
        Some((crate::AccessLogFormat::Text, false))
    );
    check(
        &one(&[("s.json", &with(r#"{"format": "XML"}"#))]),
        "$[1].serviceConnectConfiguration.accessLogConfiguration.format",
        "is not TEXT or JSON",
        "\"TEXT\"",
    );
    check(
        &one(&[("s.json", &with(r#"{"includeQueryParameters": "ENABLED"}"#))]),
        "$[1].serviceConnectConfiguration.accessLogConfiguration.format",
        "format is missing",
        "\"JSON\"",
    );
    check(
        &one(&[(
            "s.json",
            &with(r#"{"format": "JSON", "includeQueryParameters": "yes"}"#),
        )]),
        "$[1].serviceConnectConfiguration.accessLogConfiguration.includeQueryParameters",
        "not ENABLED or DISABLED",
        "\"DISABLED\"",
    );
}
