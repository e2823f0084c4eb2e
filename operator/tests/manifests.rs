//! The files users apply: the generated CRD is current, every example is a valid Pipeline
//! (including the CRD's CEL rules, checked offline), and invalid specs are refused with the
//! field named.

use kube::CustomResourceExt;
use natsflow_operator::crd::{crd_yaml, Pipeline};
use serde::Deserialize;
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn crds_pipeline_yaml_is_current() {
    let file = std::fs::read_to_string(root().join("crds/pipeline.yaml")).unwrap();
    assert!(
        file == crd_yaml(),
        "crds/pipeline.yaml is stale: run `cargo run -p natsflow-operator -- crd > crds/pipeline.yaml`"
    );
}

/// Every field of `input` survives a round trip through the Rust type: no typo is ignored.
fn all_fields_known(input: &Value, parsed: &Value, path: &str) {
    if let (Value::Object(i), Value::Object(p)) = (input, parsed) {
        for (k, v) in i {
            let field = format!("{path}.{k}");
            let pv = p.get(k).unwrap_or_else(|| panic!("unknown field {field}"));
            all_fields_known(v, pv, &field);
        }
    }
}

fn parse(yaml: &str) -> Pipeline {
    let input: Value = serde_yaml_ng::from_str(yaml).unwrap();
    let p: Pipeline = serde_json::from_value(input.clone()).unwrap();
    all_fields_known(
        &input["spec"],
        &serde_json::to_value(&p).unwrap()["spec"],
        "spec",
    );
    p
}

#[test]
fn every_example_is_a_valid_pipeline() {
    let mut pipelines = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if v["kind"] != "Pipeline" {
                continue;
            }
            let p = parse(&serde_yaml_ng::to_string(&v).unwrap());
            kube::core::cel::validate_cel(&p)
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            pipelines += 1;
        }
    }
    assert!(
        pipelines >= 2,
        "examples/ holds pipeline.yaml and pipeline-full.yaml"
    );
}

const BASE: &str =
    "apiVersion: natsflow.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: x, namespace: default}\n";

fn cel_error(spec: &str) -> String {
    let p = parse(&format!("{BASE}spec:\n{spec}"));
    format!(
        "{:?}",
        kube::core::cel::validate_cel(&p).expect_err("refused")
    )
}

#[test]
fn two_broadcaster_targets_are_refused_naming_the_field() {
    let e = cel_error(
        "  nats: {url: 'nats://n:4222'}\n  image: i\n  broadcaster:\n    target:\n      slack: {webhookSecretRef: {name: a, key: b}}\n      discord: {webhookSecretRef: {name: a, key: b}}\n",
    );
    assert!(
        e.contains(
            "spec.broadcaster.target: set exactly one of telegram, slack, discord or generic"
        ),
        "{e}"
    );
}

#[test]
fn two_sources_are_refused_naming_the_field() {
    let e = cel_error("  nats: {url: 'nats://n:4222'}\n  image: i\n  source: {generated: {objects: 5}, http: {url: 'http://x'}}\n");
    assert!(
        e.contains("spec.source: set exactly one of generated or http"),
        "{e}"
    );
}

#[test]
fn jq_without_an_expression_is_refused() {
    let e = cel_error("  nats: {url: 'nats://n:4222'}\n  image: i\n  mapper: {transform: jq}\n");
    assert!(e.contains("spec.mapper.jq"), "{e}");
}

#[test]
fn negative_mappers_are_out_of_the_schema_bounds() {
    // The API server enforces these bounds; check the schema declares them.
    let crd = serde_json::to_value(Pipeline::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["mapperReplicas"]["minimum"], 0.0);
    assert_eq!(spec["required"], serde_json::json!(["image", "nats"]));
    assert_eq!(
        spec["properties"]["mapper"]["properties"]["transform"]["enum"],
        serde_json::json!(["fullname", "jq"])
    );
}

#[test]
fn scale_subresource_and_columns() {
    let crd = serde_json::to_value(Pipeline::crd()).unwrap();
    let v = &crd["spec"]["versions"][0];
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.mapperReplicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"],
        ".status.mapperReplicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["labelSelectorPath"],
        ".status.mapperSelector"
    );
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Mappers", "Ready", "Progress", "Age"]);
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "pl");
}

#[test]
fn unknown_fields_are_caught() {
    let r = std::panic::catch_unwind(|| {
        parse(&format!(
            "{BASE}spec:\n  nats: {{url: 'nats://n:4222'}}\n  image: i\n  mapperReplica: 3\n"
        ))
    });
    assert!(r.is_err());
}

#[test]
fn a_file_sink_shared_by_savers_needs_a_volume_claim() {
    let e = cel_error(
        "  nats: {url: 'nats://n:4222'}\n  image: i\n  saverReplicas: 2\n  saver: {sink: file}\n",
    );
    assert!(e.contains("spec.saver.volumeClaimName"), "{e}");
    let ok = parse(&format!("{BASE}spec:\n  nats: {{url: 'nats://n:4222'}}\n  image: i\n  saverReplicas: 2\n  saver: {{sink: file, volumeClaimName: data}}\n"));
    kube::core::cel::validate_cel(&ok).unwrap();
}

/// What the API server checks of a `default` when it accepts the CRD: the value must pass
/// the schema it sits in (types, bounds, enums, lengths, required and known fields).
fn schema_errors(v: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errors.push(format!("{path}: {v} is not one of {allowed:?}"));
        }
    }
    let ok = match schema["type"].as_str() {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{path}: {v} is not of type {}", schema["type"]));
        return;
    }
    if let (Some(n), Some(min)) = (v.as_f64(), schema["minimum"].as_f64()) {
        if n < min {
            errors.push(format!("{path}: {n} is below the minimum {min}"));
        }
    }
    if let (Some(n), Some(max)) = (v.as_f64(), schema["maximum"].as_f64()) {
        if n > max {
            errors.push(format!("{path}: {n} is above the maximum {max}"));
        }
    }
    if let (Some(s), Some(min)) = (v.as_str(), schema["minLength"].as_u64()) {
        if (s.chars().count() as u64) < min {
            errors.push(format!("{path}: {s:?} is shorter than {min}"));
        }
    }
    if let Some(items) = v.as_array() {
        for (i, item) in items.iter().enumerate() {
            schema_errors(item, &schema["items"], &format!("{path}[{i}]"), errors);
        }
    }
    if let Some(fields) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !fields.contains_key(r.as_str().unwrap()) {
                errors.push(format!("{path}.{}: required", r.as_str().unwrap()));
            }
        }
        let open = schema["x-kubernetes-preserve-unknown-fields"] == true
            || schema["additionalProperties"].is_object();
        for (k, fv) in fields {
            match schema["properties"].get(k) {
                Some(s) => schema_errors(fv, s, &format!("{path}.{k}"), errors),
                None if schema["additionalProperties"].is_object() => schema_errors(
                    fv,
                    &schema["additionalProperties"],
                    &format!("{path}.{k}"),
                    errors,
                ),
                None if !open => errors.push(format!("{path}.{k}: not in the schema")),
                None => {}
            }
        }
    }
}

fn defaults_errors(schema: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(d) = schema.get("default") {
        schema_errors(d, schema, &format!("default of {path}"), errors);
    }
    for (k, s) in schema["properties"].as_object().into_iter().flatten() {
        defaults_errors(s, &format!("{path}.{k}"), errors);
    }
    if schema["items"].is_object() {
        defaults_errors(&schema["items"], &format!("{path}[]"), errors);
    }
}

#[test]
fn every_schema_default_passes_its_own_schema() {
    let crd = serde_json::to_value(Pipeline::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut errors = Vec::new();
    defaults_errors(schema, "Pipeline", &mut errors);
    assert!(
        errors.is_empty(),
        "the API server would refuse the CRD:\n{}",
        errors.join("\n")
    );
    // The checker itself: the default this test was written for.
    let mut caught = Vec::new();
    schema_errors(
        &serde_json::json!({"concurrency": 0, "transform": "fullname"}),
        &schema["properties"]["spec"]["properties"]["mapper"],
        "spec.mapper",
        &mut caught,
    );
    assert_eq!(
        caught,
        ["spec.mapper.concurrency: 0 is below the minimum 1"]
    );
}
