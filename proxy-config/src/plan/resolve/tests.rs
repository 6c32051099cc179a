//! Resolving entries against task definitions, names unique per namespace,
//! and existing services under a re-registered task definition.

use crate::test_support::{
    E0, check, endpoint, errs, errs_with, existing, ok_with, one, one_with, svc, td, web_td,
    with_web,
};
use crate::{AppProtocol, Existing, TaskDefinition};

#[test]
fn defaults_without_client_aliases() {
    let ep = endpoint(&[("s.json", &with_web(r#"[{"portName": "db"}]"#))]);
    assert_eq!(
        (
            ep.discovery_name.as_str(),
            ep.dns_name.as_str(),
            ep.port,
            ep.app_protocol
        ),
        ("db", "db.default", 5432, AppProtocol::Tcp)
    );
    let ep = endpoint(&[(
        "s.json",
        &with_web(
            r#"[{"portName": "http", "discoveryName": "api", "clientAliases": [{"port": 80, "dnsName": "api.internal"}]}]"#,
        ),
    )]);
    assert_eq!(
        (ep.dns_name.as_str(), ep.port, ep.container_port),
        ("api.internal", 80, 8080)
    );
}

#[test]
fn container_port_zero_needs_an_alias_port() {
    let file = format!(
        "[{}, {}]",
        td("web", r#"[{"name": "http"}]"#),
        svc("s", r#"[{"portName": "http"}]"#)
    );
    check(
        &one(&[("s.json", &file)]),
        E0,
        "no clientAliases port",
        "\"clientAliases\": [{\"port\": 80}]",
    );
    let file = format!(
        "[{}, {}]",
        td("web", r#"[{"name": "http"}]"#),
        svc(
            "s",
            r#"[{"portName": "http", "clientAliases": [{"port": 80}]}]"#
        )
    );
    assert_eq!(endpoint(&[("s.json", &file)]).container_port, 0);
}

#[test]
fn port_name_must_be_a_port_mapping() {
    let e = one(&[("s.json", &with_web(r#"[{"portName": "grpc"}]"#))]);
    check(
        &e,
        &format!("{E0}.portName"),
        "(it has: \"http\", \"db\")",
        "set portName to one of those",
    );
    let e = one(&[("s.json", &with_web(r#"[{"portName": "htp"}]"#))]);
    check(
        &e,
        &format!("{E0}.portName"),
        "not a port mapping",
        "did you mean \"http\"? set portName",
    );
    let file = format!(
        "[{}, {}]",
        td("web", r#"[{"containerPort": 80}]"#),
        svc("s", r#"[{"portName": "http"}]"#)
    );
    check(
        &one(&[("s.json", &file)]),
        &format!("{E0}.portName"),
        "no named port mappings",
        "add \"name\": \"http\"",
    );
    let file = format!(
        "[{}, {}]",
        td(
            "web",
            r#"[{"name": "dns", "containerPort": 53, "protocol": "udp"}]"#
        ),
        svc("s", r#"[{"portName": "dns"}]"#)
    );
    check(
        &one(&[("s.json", &file)]),
        &format!("{E0}.portName"),
        "udp",
        "tcp port mapping",
    );
}

#[test]
fn per_request_timeout_not_for_tcp() {
    let e = one(&[(
        "s.json",
        &with_web(r#"[{"portName": "db", "timeout": {"perRequestTimeoutSeconds": 5}}]"#),
    )]);
    check(
        &e,
        &format!("{E0}.timeout.perRequestTimeoutSeconds"),
        "is TCP",
        "set \"appProtocol\"",
    );
    let ep = endpoint(&[(
        "s.json",
        &with_web(r#"[{"portName": "db", "timeout": {"idleTimeoutSeconds": 60}}]"#),
    )]);
    assert_eq!(ep.idle_timeout_s, Some(60));
    let ep = endpoint(&[(
        "s.json",
        &with_web(r#"[{"portName": "http", "timeout": {"perRequestTimeoutSeconds": 5}}]"#),
    )]);
    assert_eq!(ep.per_request_timeout_s, Some(5));
}

#[test]
fn derived_dns_name_must_be_usable() {
    let file = format!(
        "[{}, {}, {}]",
        r#"{"Name": "a!b"}"#,
        web_td(),
        svc("s", r#"[{"portName": "http"}]"#).replace(
            "\"enabled\": true",
            "\"enabled\": true, \"namespace\": \"a!b\""
        )
    );
    check(
        &one(&[("s.json", &file)]),
        "$[2].serviceConnectConfiguration.services[0]",
        "\"http.a!b\"",
        "dnsName",
    );
}

#[test]
fn discovery_name_unique_in_namespace() {
    let ex = existing();
    let e = one_with(
        &[(
            "s.json",
            &svc("new", r#"[{"portName": "http", "discoveryName": "api"}]"#),
        )],
        &ex,
    );
    check(
        &e,
        "$.serviceConnectConfiguration.services[0].discoveryName",
        "already used in namespace \"default\" by service \"old\"",
        "unique",
    );
    // The service being replaced gives its names up.
    let p = ok_with(
        &[(
            "s.json",
            &svc("old", r#"[{"portName": "http", "discoveryName": "api"}]"#),
        )],
        &ex,
    );
    assert_eq!(p.services[0].endpoints[0].dns_name, "api.default");
    // Another namespace is fine.
    let other = svc("new", r#"[{"portName": "http", "discoveryName": "api"}]"#).replace(
        "\"enabled\": true",
        "\"enabled\": true, \"namespace\": \"prod\"",
    );
    assert_eq!(
        ok_with(&[("s.json", &other)], &ex).services[0].namespace,
        "prod"
    );
    // Within this apply, across files, named by file and path; defaulted names point at portName.
    let e = errs(&[
        ("a.json", &with_web(r#"[{"portName": "http"}]"#)),
        (
            "b.json",
            &svc(
                "t",
                r#"[{"portName": "http", "clientAliases": [{"port": 81}]}]"#,
            ),
        ),
    ]);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].file, "b.json");
    check(
        &e[0],
        "$.serviceConnectConfiguration.services[0].portName",
        "by service \"s\" (a.json at $[1].serviceConnectConfiguration.services[0])",
        "discoveryName",
    );
}

#[test]
fn client_alias_unique_in_namespace() {
    let ex = existing();
    let e = one_with(
        &[(
            "s.json",
            &svc(
                "new",
                r#"[{"portName": "http", "discoveryName": "api2", "clientAliases": [{"port": 80, "dnsName": "api.default"}]}]"#,
            ),
        )],
        &ex,
    );
    check(
        &e,
        "$.serviceConnectConfiguration.services[0].clientAliases",
        "api.default:80 is already used in namespace \"default\" by service \"old\"",
        "another",
    );
    // Same name, other port: allowed (ECS: dnsName+port unique).
    let p = ok_with(
        &[(
            "s.json",
            &svc(
                "new",
                r#"[{"portName": "http", "discoveryName": "api2", "clientAliases": [{"port": 81, "dnsName": "api.default"}]}]"#,
            ),
        )],
        &ex,
    );
    assert_eq!(p.services[0].endpoints[0].port, 81);
    // Twice in one service.
    let e = one(&[(
        "s.json",
        &with_web(
            r#"[{"portName": "http", "discoveryName": "a", "clientAliases": [{"port": 80, "dnsName": "x"}]}, {"portName": "db", "discoveryName": "b", "clientAliases": [{"port": 80, "dnsName": "x"}]}]"#,
        ),
    )]);
    check(
        &e,
        "$[1].serviceConnectConfiguration.services[1].clientAliases",
        "x:80 is already used",
        "another",
    );
}

#[test]
fn re_registering_a_family_rechecks_existing_services() {
    let ex = existing();
    // Still has "http", now grpc on another port: "old" is re-resolved and planned.
    let p = ok_with(
        &[(
            "t.json",
            &td(
                "web",
                r#"[{"name": "http", "containerPort": 9090, "appProtocol": "grpc"}]"#,
            ),
        )],
        &ex,
    );
    assert_eq!(p.task_definitions.len(), 1);
    let old = &p.services[0];
    assert_eq!(
        (
            old.name.as_str(),
            old.endpoints[0].container_port,
            old.endpoints[0].app_protocol
        ),
        ("old", 9090, AppProtocol::Grpc)
    );
    assert_eq!(
        (old.endpoints[0].port, old.endpoints[0].dns_name.as_str()),
        (80, "api.default")
    );
    // Unchanged: nothing to re-plan.
    assert!(ok_with(&[("t.json", &web_td())], &ex).services.is_empty());
    // Drops "http": error at the task definition naming the service.
    let e = one_with(
        &[(
            "t.json",
            &td("web", r#"[{"name": "db", "containerPort": 5432}]"#),
        )],
        &ex,
    );
    check(
        &e,
        "$",
        "no longer has port mapping \"http\", which service \"old\" uses",
        "keep a port mapping named \"http\"",
    );
    // ...unless the same apply replaces that service too.
    let fixed = svc("old", r#"[{"portName": "db"}]"#);
    let p = ok_with(
        &[
            (
                "t.json",
                &td("web", r#"[{"name": "db", "containerPort": 5432}]"#),
            ),
            ("s.json", &fixed),
        ],
        &ex,
    );
    assert_eq!(p.services[0].endpoints[0].port_name, "db");
}

#[test]
fn re_registering_as_tcp_breaks_per_request_timeouts() {
    let mut ex = existing();
    if let Some(old) = ex.services.get_mut("old") {
        old.endpoints[0].per_request_timeout_s = Some(5);
    }
    let e = errs_with(
        &[(
            "t.json",
            &td("web", r#"[{"name": "http", "containerPort": 8080}]"#),
        )],
        &ex,
    );
    check(&e[0], "$", "becomes TCP", "perRequestTimeoutSeconds");
}

#[test]
fn existing_task_definition_shape_is_used() {
    let mut ex = Existing::default();
    ex.task_definitions.insert(
        "tcp".into(),
        TaskDefinition {
            family: "tcp".into(),
            revision: 4,
            port_mappings: vec![crate::PortMapping {
                name: "redis".into(),
                container_port: 6379,
                app_protocol: AppProtocol::Tcp,
            }],
            command: vec![],
            health_check: None,
            stop_timeout_s: None,
            inactive: false,
        },
    );
    let file = r#"{"serviceName": "cache", "taskDefinition": "tcp:4", "serviceConnectConfiguration": {"enabled": true, "services": [{"portName": "redis"}]}}"#;
    let ep = ok_with(&[("s.json", file)], &ex).services[0].endpoints[0].clone();
    assert_eq!((ep.dns_name.as_str(), ep.port), ("redis.default", 6379));
}

#[test]
fn limits_only_for_http() {
    let e = one(&[(
        "s.json",
        &with_web(r#"[{"portName": "db", "limits": {"maxConnections": 5}}]"#),
    )]);
    check(&e, &format!("{E0}.limits"), "is TCP", "set \"appProtocol\"");
    let ep = endpoint(&[(
        "s.json",
        &with_web(r#"[{"portName": "http", "limits": {"maxConnections": 5}}]"#),
    )]);
    assert_eq!(ep.limits.map(|l| l.max_connections()), Some(5));
}

#[test]
fn re_registering_as_tcp_breaks_limits() {
    let mut ex = existing();
    if let Some(old) = ex.services.get_mut("old") {
        old.endpoints[0].limits = Some(crate::LimitsSpec::default());
    }
    let e = errs_with(
        &[(
            "t.json",
            &td("web", r#"[{"name": "http", "containerPort": 8080}]"#),
        )],
        &ex,
    );
    check(&e[0], "$", "becomes TCP", "without limits");
}
