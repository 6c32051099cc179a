//! Service, cluster and namespace rules, each with a good and a bad case.

use crate::test_support::{E0, check, endpoint, ok, one, svc, web_td, with_web};

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
    assert!(!p.services[0].enabled);
    assert_eq!(p.services[0].namespace, "default");
    // ... and listed as not used, once (not each key inside them).
    assert_eq!(
        p.not_used[0].paths.last().map(String::as_str),
        Some("$[1].serviceConnectConfiguration.services")
    );
}

const ARN: &str = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/x";

#[test]
fn tls_turns_on_mutual_tls_and_lists_what_it_does_not_use() {
    let file = with_web(&format!(
        r#"[{{"portName": "http", "tls": {{"issuerCertificateAuthority":
                {{"awsPcaAuthorityArn": "{ARN}"}}, "kmsKey": "k", "roleArn": "r"}}}}]"#
    ));
    let p = ok(&[("web-svc.json", &file)]);
    assert!(p.services[0].endpoints[0].tls);
    let unused: Vec<&str> = p
        .not_used
        .iter()
        .flat_map(|n| n.paths.iter().map(String::as_str))
        .collect();
    assert!(unused.contains(&"$[1].serviceConnectConfiguration.services[0].tls.kmsKey"));
    assert!(unused.contains(&"$[1].serviceConnectConfiguration.services[0].tls.roleArn"));
    // Without the block: no TLS.
    assert!(!endpoint(&[("s.json", &with_web(r#"[{"portName": "http"}]"#))]).tls);
}

#[test]
fn a_malformed_tls_block_is_refused_with_its_path_and_a_fix() {
    let e = one(&[(
        "web-svc.json",
        &with_web(r#"[{"portName": "http", "tls": {"kmsKey": "k"}}]"#),
    )]);
    assert_eq!(e.file, "web-svc.json");
    check(
        &e,
        "$[1].serviceConnectConfiguration.services[0].tls.issuerCertificateAuthority",
        "issuerCertificateAuthority is missing",
        "awsPcaAuthorityArn",
    );
    let e = one(&[(
        "web-svc.json",
        &with_web(&format!(
            r#"[{{"portName": "http", "tls": {{"issuerCertificateAuthority":
                {{"awsPcaAuthorityArn": "{ARN}"}}, "mode": "strict"}}}}]"#
        )),
    )]);
    check(
        &e,
        "$[1].serviceConnectConfiguration.services[0].tls.mode",
        "tls has no field \"mode\"",
        "issuerCertificateAuthority",
    );
}

#[test]
fn tls_on_a_tcp_port_is_taken_and_so_is_its_ingress_port_override() {
    let file = with_web(&format!(
        r#"[{{"portName": "db", "ingressPortOverride": 17000, "tls": {{"issuerCertificateAuthority":
                {{"awsPcaAuthorityArn": "{ARN}"}}}}, "allowedClients": ["web"]}}]"#
    ));
    let p = ok(&[("web-svc.json", &file)]);
    let svc = &p.services[0];
    let ep = &svc.endpoints[0];
    assert!(ep.tls, "tls on a TCP port: mutual TLS between hosts");
    assert!(!ep.app_protocol.is_l7());
    assert_eq!(ep.ingress_port_override, Some(17000));
    assert_eq!(
        ep.allowed_clients.as_deref(),
        Some(&["web".to_string()][..])
    );
    assert!(
        !p.not_used
            .iter()
            .any(|n| n.paths.iter().any(|x| x.contains("ingressPortOverride"))),
        "with tls a TCP entry has an ingress listener: {:?}",
        p.not_used
    );
}

#[test]
fn an_empty_dns_name_is_the_default_name() {
    let ep = endpoint(&[(
        "s.json",
        &with_web(
            r#"[{"portName": "http", "discoveryName": "four", "clientAliases": [{"dnsName": "", "port": 81}]}]"#,
        ),
    )]);
    assert_eq!((ep.dns_name.as_str(), ep.port), ("four.default", 81));
}

#[test]
fn unknown_keys_are_listed_not_refused_and_test_traffic_rules_are_not_among_them() {
    let p = ok(&[(
        "s.json",
        &with_web(
            r#"[{"portName": "http", "someFutureKey": 1, "timeout": {"perRequestTimeoutSeconds": 5, "other": 2},
                 "clientAliases": [{"port": 80, "testTrafficRules": {"header": {"name": "x", "value": {"exact": "1"}}}}]}]"#,
        ),
    )]);
    assert_eq!(
        p.not_used[0].paths,
        vec![
            "$[0].containerDefinitions[0].image",
            "$[0].containerDefinitions[0].name",
            "$[1].serviceConnectConfiguration.services[0].someFutureKey",
            "$[1].serviceConnectConfiguration.services[0].timeout.other",
        ]
    );
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

#[test]
fn limits_per_service() {
    let at = "$[1].serviceConnectConfiguration.services[0].limits";
    let case = |extra: &str| {
        let file = format!(
            "[{}, {}]",
            web_td(),
            svc("s", &format!(r#"[{{"portName": "http", {extra}}}]"#))
        );
        crate::test_support::run(&[("s.json", &file)], &crate::Existing::default())
    };
    let limits = |extra: &str| case(extra).map(|p| p.services[0].endpoints[0].limits);
    // Every key, at the ends of its range.
    assert_eq!(
        limits(
            r#""limits": {"maxConnections": 1, "maxPendingRequests": 0, "maxRequestBytes": 0, "maxHeaderBytes": 1024}"#
        ),
        Ok(Some(crate::LimitsSpec {
            max_connections: Some(1),
            max_pending_requests: Some(0),
            max_request_bytes: Some(0),
            max_header_bytes: Some(1024),
        }))
    );
    let top = limits(
        r#""limits": {"maxConnections": 100000, "maxPendingRequests": 100000, "maxRequestBytes": 9007199254740991, "maxHeaderBytes": 65536}"#,
    );
    assert_eq!(
        top.map(|l| l.map(|l| (
            l.max_connections(),
            l.max_pending_requests(),
            l.max_request_bytes(),
            l.max_header_bytes()
        ))),
        Ok(Some((100_000, 100_000, Some((1 << 53) - 1), 65536)))
    );
    // Each key optional; the rest take their defaults.
    let some = limits(r#""limits": {"maxConnections": 2}"#);
    assert_eq!(
        some.map(|l| l.map(|l| (
            l.max_connections(),
            l.max_pending_requests(),
            l.max_request_bytes(),
            l.max_header_bytes()
        ))),
        Ok(Some((2, 1024, None, 65536)))
    );
    assert_eq!(
        limits(r#""limits": {}"#),
        Ok(Some(crate::LimitsSpec::default()))
    );
    assert_eq!(limits(r#""discoveryName": "d""#), Ok(None));
    let d = crate::LimitsSpec::default();
    assert_eq!(
        (
            d.max_connections(),
            d.max_pending_requests(),
            d.max_request_bytes(),
            d.max_header_bytes()
        ),
        (1024, 1024, None, 65536)
    );
    // Out of range: the key's path, the value, and the range in the fix.
    let bad = |extra: &str| case(extra).map_err(|e| e.0).err().unwrap_or_default();
    for (extra, key, message, fix) in [
        (
            r#"{"maxConnections": 0}"#,
            "maxConnections",
            "maxConnections 0 is out of range",
            "use 1 to 100000",
        ),
        (
            r#"{"maxConnections": 100001}"#,
            "maxConnections",
            "100001 is out of range",
            "use 1 to 100000",
        ),
        (
            r#"{"maxPendingRequests": -1}"#,
            "maxPendingRequests",
            "maxPendingRequests -1 is out of range",
            "use 0 (never wait) to 100000",
        ),
        (
            r#"{"maxRequestBytes": 9007199254740992}"#,
            "maxRequestBytes",
            "9007199254740992 is out of range",
            "leave it out for no limit",
        ),
        (
            r#"{"maxHeaderBytes": 1023}"#,
            "maxHeaderBytes",
            "maxHeaderBytes 1023 is out of range",
            "use 1024 to 65536 bytes",
        ),
        (
            r#"{"maxHeaderBytes": 65537}"#,
            "maxHeaderBytes",
            "65537 is out of range",
            "the most the proxy reads",
        ),
    ] {
        let e = bad(&format!(r#""limits": {extra}"#));
        assert_eq!(e.len(), 1, "{extra}: {e:#?}");
        check(&e[0], &format!("{at}.{key}"), message, fix);
    }
    // Every bad key is reported, not only the first.
    let e = bad(r#""limits": {"maxConnections": 0, "maxHeaderBytes": 10}"#);
    assert_eq!(e.len(), 2, "{e:#?}");
    // A value of the wrong type is a parse error that names the key.
    let e = bad(r#""limits": {"maxConnections": "many"}"#);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].path.contains("limits.maxConnections"), "{}", e[0]);
}

#[test]
fn test_traffic_rules_are_a_header_match_on_http_aliases() {
    let with = |port: &str, rules: &str| {
        format!(
            "[{}, {}]",
            web_td(),
            svc(
                "s",
                &format!(
                    r#"[{{"portName": "{port}", "clientAliases": [{{"port": 80, "testTrafficRules": {rules}}}]}}]"#
                )
            )
        )
    };
    let good = r#"{"header": {"name": "X-Canary", "value": {"exact": "1"}}}"#;
    let e = crate::test_support::endpoint(&[("s.json", &with("http", good))]);
    assert_eq!(
        e.test_traffic,
        Some(crate::TestTrafficRule {
            name: "x-canary".into(),
            value: "1".into()
        })
    );
    let at = "$[1].serviceConnectConfiguration.services[0].clientAliases[0].testTrafficRules";
    check(
        &one(&[("s.json", &with("db", good))]),
        at,
        "is TCP",
        "appProtocol",
    );
    check(
        &one(&[(
            "s.json",
            &with(
                "http",
                r#"{"header": {"name": "a b", "value": {"exact": "1"}}}"#,
            ),
        )]),
        &format!("{at}.header.name"),
        "not an HTTP header name",
        "x-canary",
    );
    check(
        &one(&[("s.json", &with("http", r#"{"header": {"name": "x"}}"#))]),
        &format!("{at}.header.value.exact"),
        "missing",
        "exact",
    );
}

#[test]
fn allowed_clients_need_tls_and_a_known_mode() {
    let tls =
        format!(r#""tls": {{"issuerCertificateAuthority": {{"awsPcaAuthorityArn": "{ARN}"}}}}"#);
    let ep = endpoint(&[(
        "s.json",
        &with_web(&format!(
            r#"[{{"portName": "http", {tls}, "allowedClients": ["web", "api", "web"],
                 "allowedClientsMode": "AUDIT"}}]"#
        )),
    )]);
    assert_eq!(
        ep.allowed_clients.as_deref(),
        Some(&["api".to_string(), "web".to_string()][..])
    );
    assert!(ep.allowed_clients_audit);
    assert!(ep.allows("api") && ep.allows("web") && !ep.allows("db"));
    // Without a list every service of the namespace may call.
    assert!(endpoint(&[("s.json", &with_web(r#"[{"portName": "http"}]"#))]).allows("db"));
    let e = one(&[(
        "s.json",
        &with_web(r#"[{"portName": "http", "allowedClients": ["web"]}]"#),
    )]);
    check(
        &e,
        &format!("{E0}.allowedClients"),
        "without tls",
        "add ECS's tls block",
    );
    let e = one(&[(
        "s.json",
        &with_web(&format!(
            r#"[{{"portName": "http", {tls}, "allowedClients": ["web"], "allowedClientsMode": "LOG"}}]"#
        )),
    )]);
    check(
        &e,
        &format!("{E0}.allowedClientsMode"),
        "\"LOG\" is not a mode",
        "AUDIT",
    );
    let e = one(&[(
        "s.json",
        &with_web(&format!(
            r#"[{{"portName": "http", {tls}, "allowedClients": ["no such!"]}}]"#
        )),
    )]);
    check(
        &e,
        &format!("{E0}.allowedClients[0]"),
        "\"no such!\"",
        "name a service",
    );
}
