//! Rules across objects and files, and whole ECS-shaped applies.

use crate::test_support::{
    check, errs, errs_with, existing, ok, ok_with, one, one_with, svc, web_td, with_web,
};
use crate::{AppProtocol, EndpointSpec, ServiceSpec};

#[test]
fn ecs_full_example_from_the_seed_parses() {
    // Shapes of seeds/003: create-cluster, register-task-definition and
    // create-service inputs (with a namespace name where the blog had `true`).
    let cluster = r#"{"clusterName": "tutorial", "serviceConnectDefaults": {"namespace": "service-connect"},
        "settings": [{"name": "containerInsights", "value": "enabled"}]}"#;
    let task = r#"{
        "family": "service-connect-nginx",
        "taskRoleArn": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
        "executionRoleArn": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
        "networkMode": "awsvpc",
        "containerDefinitions": [{
            "name": "webserver", "image": "public.ecr.aws/docker/library/nginx:latest", "cpu": 100,
            "portMappings": [{"name": "nginx", "containerPort": 80, "protocol": "tcp", "appProtocol": "http"}],
            "essential": true,
            "healthCheck": {"command": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"], "interval": 10},
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/service-connect-nginx"}}
        }],
        "cpu": "256", "memory": "512"}"#;
    let service = r#"{
        "cluster": "tutorial",
        "deploymentConfiguration": {"maximumPercent": 200, "minimumHealthyPercent": 0},
        "deploymentController": {"type": "ECS"},
        "desiredCount": 1, "enableECSManagedTags": true, "launchType": "FARGATE",
        "networkConfiguration": {"awsvpcConfiguration": {"assignPublicIp": "ENABLED", "securityGroups": ["sg-34692f46"], "subnets": ["subnet-f9bb89a2"]}},
        "platformVersion": "LATEST", "propagateTags": "SERVICE",
        "serviceName": "service-connect-nginx-service",
        "serviceConnectConfiguration": {
            "enabled": true, "namespace": "service-connect",
            "services": [{"portName": "nginx", "clientAliases": [{"port": 80}]}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/service-connect-proxy"}}
        },
        "taskDefinition": "arn:aws:ecs:ap-northeast-1:123456789012:task-definition/service-connect-nginx:1"}"#;
    let p = ok(&[
        ("service.json", service),
        ("cluster.json", cluster),
        ("taskdef.json", task),
    ]);
    assert_eq!(p.namespaces, vec!["service-connect"]);
    assert_eq!(p.default_namespace.as_deref(), Some("service-connect"));
    assert_eq!(p.task_definitions[0].family, "service-connect-nginx");
    assert_eq!(
        p.task_definitions[0]
            .health_check
            .as_ref()
            .map(|h| h.interval_s),
        Some(10)
    );
    let want = ServiceSpec {
        name: "service-connect-nginx-service".into(),
        task_definition: "service-connect-nginx".into(),
        task_definition_revision: Some(1),
        namespace: "service-connect".into(),
        endpoints: vec![EndpointSpec {
            port_name: "nginx".into(),
            discovery_name: "nginx".into(),
            dns_name: "nginx.service-connect".into(),
            port: 80,
            app_protocol: AppProtocol::Http,
            container_port: 80,
            ingress_port_override: None,
            idle_timeout_s: None,
            per_request_timeout_s: None,
            outlier: None,
            limits: None,
            tls: false,
            allowed_clients: None,
            allowed_clients_audit: false,
            test_traffic: None,
        }],
        access_log: None,
        enabled: true,
    };
    assert_eq!(p.services, vec![want]);
    // What ECS reads and knit does not is accepted and listed once, per file.
    let listed = |file: &str| -> Vec<String> {
        p.not_used
            .iter()
            .find(|n| n.file == file)
            .map(|n| n.paths.clone())
            .unwrap_or_default()
    };
    assert_eq!(listed("cluster.json"), vec!["$.settings"]);
    assert_eq!(
        listed("taskdef.json"),
        vec![
            "$.containerDefinitions[0].cpu",
            "$.containerDefinitions[0].essential",
            "$.containerDefinitions[0].image",
            "$.containerDefinitions[0].logConfiguration",
            "$.containerDefinitions[0].name",
            "$.cpu",
            "$.executionRoleArn",
            "$.memory",
            "$.networkMode",
            "$.taskRoleArn",
        ]
    );
    assert_eq!(
        listed("service.json"),
        vec![
            "$.cluster",
            "$.deploymentConfiguration",
            "$.deploymentController",
            "$.desiredCount",
            "$.enableECSManagedTags",
            "$.launchType",
            "$.networkConfiguration",
            "$.platformVersion",
            "$.propagateTags",
            "$.serviceConnectConfiguration.logConfiguration",
        ]
    );
    // The plan round-trips through JSON (the daemon stores it).
    let json = serde_json::to_string(&p).unwrap_or_default();
    assert_eq!(
        serde_json::from_str::<crate::ApplyPlan>(&json).ok(),
        Some(p)
    );
}

#[test]
fn client_only_service() {
    let file = format!(
        r#"[{}, {{"serviceName": "cli", "taskDefinition": "web", "serviceConnectConfiguration": {{"enabled": true}}}}, {{"serviceName": "plain", "taskDefinition": "web"}}]"#,
        web_td()
    );
    let p = ok(&[("s.json", &file)]);
    assert!(
        p.services
            .iter()
            .all(|s| s.endpoints.is_empty() && s.namespace == "default")
    );
}

#[test]
fn task_definition_must_be_known() {
    let e = one_with(
        &[("s.json", &svc("s", "[]").replace("\"web\"", "\"api\""))],
        &existing(),
    );
    check(
        &e,
        "$.taskDefinition",
        "\"api\" is neither registered nor in this apply (known: \"web\")",
        "knit apply -f taskdef.json -f service.json",
    );
    // From the registry alone:
    let p = ok_with(
        &[("s.json", &svc("s", r#"[{"portName": "db"}]"#))],
        &existing(),
    );
    assert_eq!(p.services[0].endpoints[0].port, 5432);
}

#[test]
fn namespace_must_exist() {
    let service = |ns: &str| {
        format!(
            r#"{{"serviceName": "s", "taskDefinition": "web", "serviceConnectConfiguration": {{"enabled": true, "namespace": "{ns}"}}}}"#
        )
    };
    let e = one_with(&[("s.json", &service("staging"))], &existing());
    check(
        &e,
        "$.serviceConnectConfiguration.namespace",
        "\"staging\" does not exist (known: \"default\", \"prod\")",
        "{\"Name\": \"staging\"}",
    );
    assert_eq!(
        ok_with(&[("s.json", &service("prod"))], &existing()).services[0].namespace,
        "prod"
    );
    assert_eq!(
        ok_with(&[("s.json", &service("default"))], &existing()).services[0].namespace,
        "default"
    );
    let p = ok_with(
        &[
            ("s.json", &service("staging")),
            ("ns.json", r#"{"Name": "staging"}"#),
        ],
        &existing(),
    );
    assert_eq!(p.namespaces, vec!["staging"]);
    let p = ok_with(
        &[
            ("s.json", &service("staging")),
            (
                "c.json",
                r#"{"serviceConnectDefaults": {"namespace": "staging"}}"#,
            ),
        ],
        &existing(),
    );
    assert_eq!(p.default_namespace.as_deref(), Some("staging"));
}

#[test]
fn cluster_default_applies_to_services_in_the_same_apply() {
    let p = ok(&[
        ("s.json", &with_web(r#"[{"portName": "http"}]"#)),
        (
            "c.json",
            r#"{"clusterName": "c", "serviceConnectDefaults": {"namespace": "corp"}}"#,
        ),
    ]);
    assert_eq!(p.services[0].namespace, "corp");
    assert_eq!(p.services[0].endpoints[0].dns_name, "http.corp");
    let e = one(&[(
        "c.json",
        r#"[{"serviceConnectDefaults": {"namespace": "a"}}, {"serviceConnectDefaults": {"namespace": "b"}}]"#,
    )]);
    check(
        &e,
        "$[1].serviceConnectDefaults.namespace",
        "already sets \"a\"",
        "keep one",
    );
}

#[test]
fn existing_namespaces_are_not_created_again() {
    let p = ok_with(
        &[(
            "n.json",
            r#"[{"Name": "prod"}, {"Name": "new"}, {"Name": "new"}]"#,
        )],
        &existing(),
    );
    assert_eq!(p.namespaces, vec!["new"]);
}

#[test]
fn multi_file_apply_with_cross_file_reference() {
    let files = [
        (
            "1-service.json",
            svc(
                "front",
                r#"[{"portName": "http", "clientAliases": [{"port": 80}]}]"#,
            ),
        ),
        (
            "2-namespace.json",
            r#"{"Name": "extra", "Description": "unused"}"#.to_owned(),
        ),
        ("3-taskdef.json", web_td()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, j)| (*n, j.as_str())).collect();
    let p = ok(&files);
    assert_eq!(p.task_definitions.len(), 1);
    assert_eq!(p.services[0].endpoints[0].dns_name, "http.default");
    assert_eq!(p.namespaces, vec!["extra"]);
}

#[test]
fn errors_from_every_file_are_reported_sorted_by_file() {
    let e = errs(&[
        ("z.json", &with_web(r#"[{"portName": "nope"}]"#)),
        (
            "a.json",
            r#"{"family": "x", "containerDefinitions": [{"portMappings": [{"name": "p", "containerPort": 99999}]}]}"#,
        ),
        ("m.json", "{oops"),
    ]);
    let files: Vec<&str> = e.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(files, vec!["a.json", "m.json", "z.json"], "{e:#?}");
}

#[test]
fn duplicates_within_one_apply() {
    let e = one(&[("a.json", &web_td()), ("b.json", &web_td())]);
    check(
        &e,
        "$.family",
        "defined twice in this apply (also in a.json at $)",
        "one task definition per family",
    );
    let e = one(&[(
        "a.json",
        &format!("[{}, {}, {}]", web_td(), svc("s", "[]"), svc("s", "[]")),
    )]);
    check(
        &e,
        "$[2].serviceName",
        "defined twice",
        "one definition per service",
    );
}

#[test]
fn typos_get_a_did_you_mean() {
    let service = r#"{"serviceName": "s", "taskDefinition": "wbe", "serviceConnectConfiguration": {"enabled": true, "namespace": "prdo"}}"#;
    let e = errs_with(&[("s.json", service)], &existing());
    assert_eq!(e.len(), 2, "{e:#?}");
    check(
        &e[0],
        "$.serviceConnectConfiguration.namespace",
        "does not exist",
        "did you mean \"prod\"? ",
    );
    check(
        &e[1],
        "$.taskDefinition",
        "neither registered",
        "did you mean \"web\"? ",
    );
    assert_eq!(super::did_you_mean("zzzz", &["prod", "default"]), "");
    assert_eq!(super::edit_distance("kitten", "sitting"), 3);
}

#[test]
fn seed_001_four_entries_on_one_port_mapping() {
    // seeds/001, line 50, as valid JSON: four services[] entries on the one
    // port mapping "http"; `"dnsName": ""` is the default name.
    let td = r#"{"family": "app", "containerDefinitions": [{"name": "app", "image": "app",
        "portMappings": [{"name": "http", "containerPort": 8080, "appProtocol": "http"}]}]}"#;
    let service = r#"{"serviceName": "app", "taskDefinition": "app",
        "serviceConnectConfiguration": {"enabled": true, "namespace": "internal", "services": [
            {"portName": "http"},
            {"discoveryName": "http-second", "portName": "http"},
            {"clientAliases": [{"dnsName": "db", "port": 81}], "discoveryName": "http-three",
             "portName": "http"},
            {"clientAliases": [{"dnsName": "", "port": 81}], "discoveryName": "http-four",
             "portName": "http", "ingressPortOverride": 99}]}}"#;
    let p = ok(&[
        ("ns.json", r#"{"Name": "internal"}"#),
        ("td.json", td),
        ("svc.json", service),
    ]);
    let eps: Vec<(&str, &str, u16, Option<u16>)> = p.services[0]
        .endpoints
        .iter()
        .map(|e| {
            (
                e.discovery_name.as_str(),
                e.dns_name.as_str(),
                e.port,
                e.ingress_port_override,
            )
        })
        .collect();
    assert_eq!(
        eps,
        vec![
            ("http", "http.internal", 8080, None),
            ("http-second", "http-second.internal", 8080, None),
            ("http-three", "db", 81, None),
            ("http-four", "http-four.internal", 81, Some(99)),
        ]
    );
    assert_eq!(
        p.not_used
            .iter()
            .flat_map(|n| n.paths.iter())
            .collect::<Vec<_>>(),
        vec![
            "$.containerDefinitions[0].image",
            "$.containerDefinitions[0].name"
        ]
    );
    assert_eq!(
        p.sources.get("app"),
        Some(&crate::Source {
            file: "svc.json".into(),
            path: "$".into()
        })
    );
}

#[test]
fn ingress_port_overrides_are_one_per_entry_and_not_the_apps_port() {
    let e = one(&[(
        "s.json",
        &with_web(
            r#"[{"portName": "http", "ingressPortOverride": 9000},
                {"portName": "http", "discoveryName": "b", "clientAliases": [{"port": 81}],
                 "ingressPortOverride": 9000}]"#,
        ),
    )]);
    check(
        &e,
        "$[1].serviceConnectConfiguration.services[1].ingressPortOverride",
        "also the ingress port of $[1].serviceConnectConfiguration.services[0]",
        "its own ingressPortOverride",
    );
    let e = one(&[(
        "s.json",
        &with_web(r#"[{"portName": "http", "ingressPortOverride": 5432}]"#),
    )]);
    check(
        &e,
        "$[1].serviceConnectConfiguration.services[0].ingressPortOverride",
        "containerPort of port mapping \"db\"",
        "choose another port",
    );
    // A TCP entry has no ingress listener: its override is listed, not used.
    let p = ok(&[(
        "s.json",
        &with_web(r#"[{"portName": "db", "ingressPortOverride": 9000}]"#),
    )]);
    assert_eq!(
        p.not_used[0].paths.last().map(String::as_str),
        Some("$[1].serviceConnectConfiguration.services[0].ingressPortOverride")
    );
}

/// A service pinned to a revision is not checked against a newer one: a
/// new revision may rename the port the pinned one has.
#[test]
fn a_pinned_service_is_left_alone_by_a_new_revision() {
    let mut ex = crate::test_support::existing();
    let td = ex.task_definitions["web"].clone();
    let mut pinned = td.clone();
    pinned.revision = 1;
    ex.task_definitions.insert("web".into(), pinned.clone());
    ex.revisions.insert("web:1".into(), pinned);
    if let Some(s) = ex.services.get_mut("old") {
        s.task_definition_revision = Some(1);
    }
    // Revision 2 without the port `http` that service `old` uses.
    let renamed = crate::test_support::td(
        "web",
        r#"[{"name": "other", "containerPort": 80, "appProtocol": "http"}]"#,
    );
    let p = crate::test_support::ok_with(&[("web2.json", &renamed)], &ex);
    assert_eq!(p.task_definitions.len(), 1);
    // Unpinned, the same apply is refused (old would lose its port).
    if let Some(s) = ex.services.get_mut("old") {
        s.task_definition_revision = None;
    }
    assert!(!crate::test_support::errs_with(&[("web2.json", &renamed)], &ex).is_empty());
}
