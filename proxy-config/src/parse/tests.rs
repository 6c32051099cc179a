//! File-level parsing: syntax, shapes, kinds, type errors, paths.

use crate::ApplyError;
use crate::test_support::{check, errs, ok, one, svc, web_td};

#[test]
fn malformed_json_names_line_and_column() {
    let e = one(&[(
        "bad.json",
        "{\n  \"family\": \"web\",\n  \"containerDefinitions\": [\n}",
    )]);
    assert_eq!(e.file, "bad.json");
    check(
        &e,
        "$",
        "not valid JSON",
        "fix the JSON syntax at line 4, column 1",
    );
}

#[test]
fn empty_file_is_a_syntax_error() {
    check(
        &one(&[("e.json", "")]),
        "$",
        "not valid JSON",
        "line 1, column 0",
    );
}

#[test]
fn top_level_must_be_object_or_array() {
    let e = one(&[("n.json", "42")]);
    check(&e, "$", "found a number", "array of objects");
}

#[test]
fn array_elements_get_indexed_paths() {
    let file = format!(
        "[{}, 7, {}]",
        web_td(),
        svc("front", r#"[{"portName": "nope"}]"#)
    );
    let e = errs(&[("a.json", &file)]);
    assert_eq!(e.len(), 2, "{e:#?}");
    check(
        &e[0],
        "$[1]",
        "expected a JSON object, found a number",
        "task definition",
    );
    check(
        &e[1],
        "$[2].serviceConnectConfiguration.services[0].portName",
        "\"nope\"",
        "portName",
    );
}

#[test]
fn empty_array_is_an_empty_plan() {
    assert_eq!(ok(&[("a.json", "[]")]), crate::ApplyPlan::default());
}

#[test]
fn byte_order_mark_is_skipped() {
    let file = format!("\u{feff}{}", web_td());
    assert_eq!(ok(&[("bom.json", &file)]).task_definitions.len(), 1);
}

#[test]
fn unknown_kind_lists_the_four_kinds() {
    let e = one(&[("x.json", r#"{"image": "nginx"}"#)]);
    check(
        &e,
        "$",
        "\"serviceName\"",
        "add the key that says what it is",
    );
    assert!(
        e.message
            .contains("\"family\" and \"containerDefinitions\""),
        "{e}"
    );
    assert!(
        e.message
            .contains("\"clusterName\" or \"serviceConnectDefaults\""),
        "{e}"
    );
    assert!(e.message.contains("(\"Name\")"), "{e}");
}

#[test]
fn family_without_container_definitions_gets_a_specific_fix() {
    let e = one(&[("x.json", r#"{"family": "web"}"#)]);
    check(&e, "$", "cannot tell", "add \"containerDefinitions\"");
}

#[test]
fn aws_output_wrapper_gets_a_jq_hint() {
    let file = format!(r#"{{"taskDefinition": {}}}"#, web_td());
    check(
        &one(&[("out.json", &file)]),
        "$",
        "cannot tell",
        "jq .taskDefinition",
    );
}

#[test]
fn lowercase_name_hints_at_namespace_key() {
    check(
        &one(&[("ns.json", r#"{"name": "prod"}"#)]),
        "$",
        "cannot tell",
        "\"Name\"",
    );
}

#[test]
fn wrong_type_has_path_and_type_fix() {
    // The seed blog's create-service input says `"namespace": true`.
    let file = r#"{"serviceName": "s", "taskDefinition": "web",
        "serviceConnectConfiguration": {"enabled": true, "namespace": true}}"#;
    let e = one(&[("s.json", file)]);
    check(
        &e,
        "$.serviceConnectConfiguration.namespace",
        "wrong type",
        "make $.serviceConnectConfiguration.namespace a JSON string",
    );
}

#[test]
fn wrong_type_in_nested_array() {
    let file = r#"{"family": "web", "containerDefinitions": [
        {"portMappings": [{"name": "http", "containerPort": "80"}]}]}"#;
    let e = one(&[("t.json", file)]);
    check(
        &e,
        "$.containerDefinitions[0].portMappings[0].containerPort",
        "string \"80\"",
        "an integer (no quotes",
    );
    let file = r#"{"family": "web", "containerDefinitions": {"name": "x"}}"#;
    let e = one(&[("t.json", file)]);
    check(&e, "$.containerDefinitions", "wrong type", "a JSON array");
}

#[test]
fn unknown_fields_are_ignored_everywhere() {
    let file = r#"{"family": "web", "cpu": "256", "x-anything": {"deep": [1, 2]},
        "containerDefinitions": [{"name": "app", "image": "i", "essential": true,
            "portMappings": [{"name": "http", "containerPort": 80, "hostPort": 80,
                              "protocol": "tcp", "appProtocol": "http", "what": null}]}]}"#;
    let p = ok(&[("t.json", file)]);
    assert_eq!(p.task_definitions[0].port_mappings[0].container_port, 80);
}

#[test]
fn display_formats() {
    let e = ApplyError {
        file: "s.json".into(),
        path: "$.serviceName".into(),
        message: "bad".into(),
        fix: "good".into(),
    };
    assert_eq!(e.to_string(), "s.json at $.serviceName: bad\n  fix: good");
    let all = crate::ApplyErrors(vec![e.clone(), e]);
    assert_eq!(
        all.to_string(),
        "s.json at $.serviceName: bad\n  fix: good\ns.json at $.serviceName: bad\n  fix: good"
    );
    let _: &dyn std::error::Error = &all;
}
