//! The objects a Pipeline owns, built by pure functions from the Pipeline and the versions
//! of the Secrets it references, so each can be unit-tested without a cluster.

pub mod config;
pub mod deployment;
pub mod service;
pub mod service_monitor;

use std::collections::BTreeMap;

use kube::{api::ApiResource, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::crd::Pipeline;

pub const METRICS_PORT: i32 = 9090;
pub const MANAGER: &str = "natsflow-operator";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Fetcher,
    Mapper,
    Saver,
    Broadcaster,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Fetcher,
        Component::Mapper,
        Component::Saver,
        Component::Broadcaster,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Fetcher => "fetcher",
            Component::Mapper => "mapper",
            Component::Saver => "saver",
            Component::Broadcaster => "broadcaster",
        }
    }
}

/// Name of a component's Deployment: `NAME-mapper`.
pub fn deployment_name(p: &Pipeline, c: Component) -> String {
    format!("{}-{}", p.name_any(), c.as_str())
}

pub fn config_name(p: &Pipeline) -> String {
    format!("{}-config", p.name_any())
}

pub fn service_name(p: &Pipeline) -> String {
    format!("{}-metrics", p.name_any())
}

/// Labels that select one component's pods.
pub fn selector(p: &Pipeline, c: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "natsflow".into()),
        ("app.kubernetes.io/instance".into(), p.name_any()),
        ("app.kubernetes.io/component".into(), c.as_str().into()),
    ])
}

/// The mapper selector as a string, for the scale subresource.
pub fn mapper_selector(p: &Pipeline) -> String {
    selector_string(p, Component::Mapper)
}

/// A component's selector as `k=v,k=v`, as label selectors and the scale subresource take it.
pub fn selector_string(p: &Pipeline, c: Component) -> String {
    selector(p, c)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels every child carries.
pub fn labels(p: &Pipeline, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "natsflow".into()),
        ("app.kubernetes.io/instance".into(), p.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
    ])
}

/// Metadata of a child: name, namespace, labels, and the controller owner reference that
/// makes Kubernetes delete it with the Pipeline.
pub fn metadata(p: &Pipeline, name: &str, component: &str) -> Value {
    let owner = p
        .controller_owner_ref(&())
        .expect("a Pipeline from the API server has a uid");
    json!({
        "name": name,
        "namespace": p.namespace(),
        "labels": labels(p, component),
        "ownerReferences": [owner],
    })
}

/// A child object as server-side apply takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub resource: ApiResource,
    pub name: String,
    pub object: Value,
}

/// Every child a Pipeline should have, in apply order (config before the pods that read it).
pub fn desired(
    p: &Pipeline,
    secret_versions: &BTreeMap<String, String>,
    service_monitors: bool,
) -> Vec<Child> {
    let cm = config::config_map(p);
    let mut out = vec![
        Child {
            resource: ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            name: config_name(p),
            object: config_object(&cm),
        },
        Child {
            resource: ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            name: service_name(p),
            object: service::service(p),
        },
    ];
    for c in deployment::components(p) {
        out.push(Child {
            resource: ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
            name: deployment_name(p, c),
            object: deployment::deployment(p, c, &cm, secret_versions),
        });
    }
    if service_monitors {
        if let Some(sm) = service_monitor::service_monitor(p) {
            out.push(Child {
                resource: service_monitor::api_resource(),
                name: p.name_any(),
                object: sm,
            });
        }
        if let Some(sm) = service_monitor::nats_service_monitor(p) {
            out.push(Child {
                resource: service_monitor::api_resource(),
                name: service_monitor::nats_name(p),
                object: sm,
            });
        }
    }
    for child in &mut out {
        stamp(&mut child.object);
    }
    out
}

/// Annotation holding a digest of the whole desired object.
pub const APPLIED: &str = "natsflow.dev/applied";

/// Adds [`APPLIED`]. `contains` sees changed and added fields but not a field the spec no
/// longer asks for (a dropped volume claim or limit); the digest changes then, the child is
/// applied again, and server-side apply removes what this manager no longer sets.
fn stamp(object: &mut Value) {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    serde_json::to_writer(&mut h, object).expect("a JSON value serializes");
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let meta = object["metadata"]
        .as_object_mut()
        .expect("every child has metadata");
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    annotations[APPLIED] = json!(hex);
}

fn config_object(cm: &k8s_openapi::api::core::v1::ConfigMap) -> Value {
    let mut v = serde_json::to_value(cm).expect("ConfigMap serializes");
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("ConfigMap");
    v
}

/// True when every field of `desired` has the same value in `observed`. Fields the API
/// server or others added (defaults, status, managedFields) do not matter, so an unchanged
/// Pipeline leads to no write, while a child edited by hand is put back.
pub fn contains(observed: &Value, desired: &Value) -> bool {
    match (observed, desired) {
        (Value::Object(o), Value::Object(d)) => d.iter().all(|(k, dv)| match o.get(k) {
            // The API server rewrites quantities in canonical form (`0.5` becomes `500m`).
            Some(ov) if k == "requests" || k == "limits" => same_quantities(ov, dv),
            Some(ov) => contains(ov, dv),
            None => {
                dv.is_null()
                    || dv.as_object().is_some_and(|m| m.is_empty())
                    || dv.as_array().is_some_and(|a| a.is_empty())
            }
        }),
        (Value::Array(o), Value::Array(d)) => {
            o.len() == d.len() && o.iter().zip(d).all(|(ov, dv)| contains(ov, dv))
        }
        (o, d) => o == d,
    }
}

fn same_quantities(observed: &Value, desired: &Value) -> bool {
    let (Some(o), Some(d)) = (observed.as_object(), desired.as_object()) else {
        return contains(observed, desired);
    };
    d.iter().all(|(k, dv)| {
        o.get(k)
            .is_some_and(|ov| match (quantity(ov), quantity(dv)) {
                (Some(a), Some(b)) => a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
                _ => ov == dv,
            })
    })
}

/// The value of a Kubernetes quantity (`500m`, `0.5`, `64Mi`, `1e3`, or a bare number).
fn quantity(v: &Value) -> Option<f64> {
    let s = match v {
        Value::Number(n) => return n.as_f64(),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::crd::PipelineSpec;

    /// A Pipeline as the API server would hand it over, from YAML.
    pub fn pipeline(spec_yaml: &str) -> Pipeline {
        let spec: PipelineSpec = serde_yaml_ng::from_str(spec_yaml).unwrap();
        let mut p = Pipeline::new("users", spec);
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("0b6a3c3e-6d4b-4a43-9e7c-1f1d3b0b2f10".into());
        p.metadata.generation = Some(1);
        p
    }

    pub const MINIMAL: &str =
        "nats: {url: 'nats://my-nats:4222'}\nimage: natsflow/natsflow:0.1.0\n";

    #[test]
    fn quantities_compare_by_value_as_the_api_server_rewrites_them() {
        let desired = json!({"resources": {"requests": {"cpu": "0.5", "memory": "1048576"}, "limits": {"cpu": 1, "memory": "1.5Gi"}}});
        let observed = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Mi"}, "limits": {"cpu": "1", "memory": "1536Mi"}}});
        assert!(contains(&observed, &desired));
        let changed = json!({"resources": {"requests": {"cpu": "600m", "memory": "1Mi"}, "limits": {"cpu": "1", "memory": "1536Mi"}}});
        assert!(!contains(&changed, &desired));
        let extra = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Mi", "ephemeral-storage": "1Gi"}, "limits": {"cpu": "1", "memory": "1536Mi"}}});
        assert!(
            contains(&extra, &desired),
            "like any field the operator does not set"
        );
        assert_eq!(quantity(&json!("1e3")), Some(1000.0));
        assert_eq!(quantity(&json!("2k")), Some(2000.0));
        assert_eq!(quantity(&json!("lots")), None);
    }

    #[test]
    fn contains_ignores_added_fields_but_not_changed_ones() {
        let desired =
            json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "m"}]}}}});
        let observed = json!({"spec": {"replicas": 3, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [{"name": "m", "imagePullPolicy": "IfNotPresent"}]}}}, "status": {}});
        assert!(contains(&observed, &desired));
        let scaled =
            json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "m"}]}}}});
        assert!(!contains(&scaled, &desired));
        let extra_container = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "m"}, {"name": "x"}]}}}});
        assert!(!contains(&extra_container, &desired));
    }

    /// What `contains` alone cannot see: a field the spec no longer asks for is absent from
    /// the desired object, so the observed one still "contains" it and nothing is applied.
    #[test]
    fn a_child_the_spec_dropped_a_field_from_is_applied_again() {
        let with = "saver: {sink: file, volumeClaimName: saved}\nresources: {saver: {limits: {cpu: '2', memory: 1Gi}}}\nmonitoring: {serviceMonitor: {enabled: true, labels: {release: prom}}}\n";
        let without = "saver: {sink: file}\nresources: {saver: {limits: {memory: 1Gi}}}\nmonitoring: {serviceMonitor: {enabled: true}}\n";
        let before = desired(
            &pipeline(&format!("{MINIMAL}{with}")),
            &BTreeMap::new(),
            true,
        );
        let after = desired(
            &pipeline(&format!("{MINIMAL}{without}")),
            &BTreeMap::new(),
            true,
        );
        for name in ["users-saver", "users"] {
            let find = |cs: &[Child]| cs.iter().find(|c| c.name == name).unwrap().object.clone();
            assert!(
                !contains(&find(&before), &find(&after)),
                "{name}: the dropped fields must lead to an apply"
            );
            assert!(contains(&find(&after), &find(&after)));
        }
    }

    #[test]
    fn every_child_is_owned_by_the_pipeline() {
        let p = pipeline(MINIMAL);
        for child in desired(&p, &BTreeMap::new(), true) {
            let owner = &child.object["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "Pipeline", "{}", child.name);
            assert_eq!(owner["controller"], true);
            assert_eq!(owner["uid"], "0b6a3c3e-6d4b-4a43-9e7c-1f1d3b0b2f10");
            assert_eq!(child.object["metadata"]["namespace"], "default");
        }
    }

    #[test]
    fn minimal_pipeline_children() {
        let p = pipeline(MINIMAL);
        let names: Vec<_> = desired(&p, &BTreeMap::new(), true)
            .into_iter()
            .map(|c| format!("{}/{}", c.resource.kind, c.name))
            .collect();
        assert_eq!(
            names,
            [
                "ConfigMap/users-config",
                "Service/users-metrics",
                "Deployment/users-fetcher",
                "Deployment/users-mapper",
                "Deployment/users-saver"
            ]
        );
    }
}
