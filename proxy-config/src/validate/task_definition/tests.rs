//! Task definition rules, each with a good and a bad case.

use crate::test_support::{check, errs, ok, one, td, web_td};
use crate::{AppProtocol, HealthCheck, PortMapping};

const PM: &str = "$.containerDefinitions[0].portMappings[0]";

fn td_one(port_mappings: &str) -> crate::ApplyError {
    one(&[("t.json", &td("web", port_mappings))])
}

#[test]
fn port_mapping_good() {
    let p = ok(&[("t.json", &web_td())]);
    let t = &p.task_definitions[0];
    assert_eq!(t.family, "web");
    assert_eq!(t.revision, 0);
    assert_eq!(
        t.port_mappings,
        vec![
            PortMapping {
                name: "http".into(),
                container_port: 8080,
                app_protocol: AppProtocol::Http
            },
            PortMapping {
                name: "db".into(),
                container_port: 5432,
                app_protocol: AppProtocol::Tcp
            },
        ]
    );
}

#[test]
fn port_mapping_name_rules() {
    let e = td_one(r#"[{"name": "Http", "containerPort": 80}]"#);
    check(&e, &format!("{PM}.name"), "'H'", "\"http\"");
    let e = td_one(r#"[{"name": "-http", "containerPort": 80}]"#);
    check(&e, &format!("{PM}.name"), "starts with \"-\"", "\"http\"");
    let long = "a".repeat(65);
    let e = td_one(&format!(r#"[{{"name": "{long}", "containerPort": 80}}]"#));
    check(&e, &format!("{PM}.name"), "at most 64", "rename it");
    let ok_name = "a_b-1".repeat(12);
    assert!(
        ok(&[(
            "t.json",
            &td("web", &format!(r#"[{{"name": "{ok_name}"}}]"#))
        )])
        .task_definitions
        .len()
            == 1
    );
}

#[test]
fn port_mapping_names_unique_across_containers() {
    let file = r#"{"family": "web", "containerDefinitions": [
        {"portMappings": [{"name": "http", "containerPort": 80}]},
        {"portMappings": [{"name": "http", "containerPort": 81}]}]}"#;
    let e = one(&[("t.json", file)]);
    check(
        &e,
        "$.containerDefinitions[1].portMappings[0].name",
        "used twice in this task definition (first at $.containerDefinitions[0].portMappings[0].name)",
        "its own name",
    );
}

#[test]
fn container_port_range() {
    let e = td_one(r#"[{"name": "http", "containerPort": 70000}]"#);
    check(
        &e,
        &format!("{PM}.containerPort"),
        "port 70000 is out of range",
        "use a port between 1 and 65535",
    );
    let e = td_one(r#"[{"name": "http", "containerPort": -1}]"#);
    check(
        &e,
        &format!("{PM}.containerPort"),
        "port -1 is out of range",
        "use a port between 1 and 65535",
    );
    let p = ok(&[(
        "t.json",
        &td(
            "web",
            r#"[{"name": "a", "containerPort": 65535}, {"name": "b", "containerPort": 0}, {"name": "c"}]"#,
        ),
    )]);
    let ports: Vec<u16> = p.task_definitions[0]
        .port_mappings
        .iter()
        .map(|m| m.container_port)
        .collect();
    assert_eq!(ports, vec![65535, 0, 0]);
}

#[test]
fn app_protocol_values() {
    let p = ok(&[(
        "t.json",
        &td(
            "web",
            r#"[{"name": "a", "appProtocol": "http2"}, {"name": "b", "appProtocol": "grpc"}]"#,
        ),
    )]);
    let protos: Vec<AppProtocol> = p.task_definitions[0]
        .port_mappings
        .iter()
        .map(|m| m.app_protocol)
        .collect();
    assert_eq!(protos, vec![AppProtocol::Http2, AppProtocol::Grpc]);
    let e = td_one(r#"[{"name": "a", "appProtocol": "HTTP"}]"#);
    check(
        &e,
        &format!("{PM}.appProtocol"),
        "not one of \"http\", \"http2\", \"grpc\"",
        "use \"http\" (lowercase)",
    );
    let e = td_one(r#"[{"name": "a", "appProtocol": "tcp"}]"#);
    check(
        &e,
        &format!("{PM}.appProtocol"),
        "\"tcp\"",
        "leave appProtocol out for plain TCP",
    );
}

#[test]
fn protocol_and_unnamed_mappings() {
    let p = ok(&[(
        "t.json",
        &td(
            "web",
            r#"[{"containerPort": 80}, {"name": "dns", "containerPort": 53, "protocol": "udp"}, {"name": "t", "protocol": "tcp"}]"#,
        ),
    )]);
    let names: Vec<&str> = p.task_definitions[0]
        .port_mappings
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, vec!["t"], "unnamed and udp mappings are not carried");
    let e = td_one(r#"[{"name": "a", "protocol": "sctp"}]"#);
    check(&e, &format!("{PM}.protocol"), "\"sctp\"", "use \"tcp\"");
}

#[test]
fn family_rules() {
    let e = one(&[("t.json", &td("my web", "[]"))]);
    check(
        &e,
        "$.family",
        "family \"my web\" contains ' '",
        "\"my-web\"",
    );
    let e = one(&[("t.json", r#"{"family": "web", "containerDefinitions": []}"#)]);
    check(
        &e,
        "$.containerDefinitions",
        "at least one container",
        "add a container",
    );
}

#[test]
fn command_is_entry_point_plus_command_of_first_container_with_either() {
    let file = r#"{"family": "web", "containerDefinitions": [
        {"name": "init"},
        {"name": "app", "entryPoint": ["/bin/sh", "-c"], "command": ["exec app"]},
        {"name": "side", "command": ["other"]}]}"#;
    assert_eq!(
        ok(&[("t.json", file)]).task_definitions[0].command,
        vec!["/bin/sh", "-c", "exec app"]
    );
}

#[test]
fn health_check_defaults_and_values() {
    let file = r#"{"family": "web", "containerDefinitions": [{"name": "a",
        "healthCheck": {"command": ["CMD-SHELL", "exit 0"]}}]}"#;
    let hc = ok(&[("t.json", file)]).task_definitions[0]
        .health_check
        .clone();
    let want = HealthCheck {
        command: vec!["CMD-SHELL".into(), "exit 0".into()],
        interval_s: 30,
        timeout_s: 5,
        retries: 3,
        start_period_s: 0,
    };
    assert_eq!(hc, Some(want));
    let file = r#"{"family": "web", "containerDefinitions": [{"name": "a",
        "healthCheck": {"command": ["CMD", "/check"], "interval": 5, "timeout": 2, "retries": 10, "startPeriod": 300}}]}"#;
    let hc = ok(&[("t.json", file)]).task_definitions[0]
        .health_check
        .clone();
    assert_eq!(
        hc.map(|h| (h.interval_s, h.timeout_s, h.retries, h.start_period_s)),
        Some((5, 2, 10, 300))
    );
    let file =
        r#"{"family": "web", "containerDefinitions": [{"healthCheck": {"command": ["NONE"]}}]}"#;
    assert_eq!(
        ok(&[("t.json", file)]).task_definitions[0].health_check,
        None
    );
}

#[test]
fn health_check_errors() {
    let hc = "$.containerDefinitions[0].healthCheck";
    let file = r#"{"family": "web", "containerDefinitions": [{"healthCheck": {"command": ["curl", "x"]}}]}"#;
    check(
        &one(&[("t.json", file)]),
        &format!("{hc}.command[0]"),
        "starts with \"curl\"",
        "\"CMD-SHELL\"",
    );
    let file = r#"{"family": "web", "containerDefinitions": [{"healthCheck": {"interval": 30}}]}"#;
    check(
        &one(&[("t.json", file)]),
        &format!("{hc}.command"),
        "missing or empty",
        "CMD-SHELL",
    );
    let file =
        r#"{"family": "web", "containerDefinitions": [{"healthCheck": {"command": ["CMD"]}}]}"#;
    check(
        &one(&[("t.json", file)]),
        &format!("{hc}.command"),
        "no command after",
        "add the command",
    );
    let file = r#"{"family": "web", "containerDefinitions": [{"healthCheck": {"command": ["CMD", "x"], "interval": 1, "retries": 0}}]}"#;
    let e = errs(&[("t.json", file)]);
    assert_eq!(e.len(), 2, "{e:#?}");
    check(
        &e[0],
        &format!("{hc}.interval"),
        "interval 1 is out of range",
        "use 5 to 300 seconds",
    );
    check(
        &e[1],
        &format!("{hc}.retries"),
        "retries 0 is out of range",
        "use 1 to 10,",
    );
}

#[test]
fn stop_timeout_is_the_largest_of_the_containers() {
    let file = r#"{"family": "web", "containerDefinitions": [{"name": "a"}]}"#;
    let t = &ok(&[("t.json", file)]).task_definitions[0];
    assert_eq!((t.stop_timeout_s, t.stop_timeout_s()), (None, 30));
    let file = r#"{"family": "web", "containerDefinitions": [{"name": "a", "stopTimeout": 5},
        {"name": "b", "stopTimeout": 90}, {"name": "c"}]}"#;
    let t = &ok(&[("t.json", file)]).task_definitions[0];
    assert_eq!(t.stop_timeout_s(), 90);
    let file = r#"{"family": "web", "containerDefinitions": [{"name": "a", "stopTimeout": 0}]}"#;
    check(
        &one(&[("t.json", file)]),
        "$.containerDefinitions[0].stopTimeout",
        "out of range",
        "2 to 3600",
    );
}
