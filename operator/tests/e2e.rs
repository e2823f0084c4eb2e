//! End to end on a real Kubernetes API server, run only when NATSFLOW_E2E_KUBECONFIG points at
//! a kubeconfig of a disposable test cluster (e.g. kind): apply the CRD, run the operator
//! binary, apply examples/pipeline-full.yaml, check every child, scale with the scale
//! subresource, check that invalid Pipelines are refused with the field named, delete the
//! Pipeline and see the children go. Prints the timings and the operator's peak memory.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::GroupVersionKind,
    discovery::ApiResource,
    Client, Config, CustomResourceExt,
};
use natsflow_operator::crd::Pipeline;
use serde::Deserialize;
use serde_json::{json, Value};

async fn until<F, Fut>(what: &str, timeout: Duration, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !ok().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn end_to_end_on_a_real_cluster() {
    let Some(path) = std::env::var_os("NATSFLOW_E2E_KUBECONFIG") else {
        println!("skipped: set NATSFLOW_E2E_KUBECONFIG to the kubeconfig of a disposable test cluster (e.g. kind) to run the end-to-end test");
        return;
    };
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let ns = format!("natsflow-e2e-{}", std::process::id());
    let pp = PatchParams::apply("natsflow-e2e").force();

    // The CRD, as `kubectl apply -f crds/` does.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "pipelines.natsflow.dev",
        &pp,
        &Patch::Apply(Pipeline::crd()),
    )
    .await
    .unwrap();
    until(
        "the CRD is established",
        Duration::from_secs(30),
        || async {
            crds.get("pipelines.natsflow.dev")
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        },
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();

    // The operator, watching only the test namespace.
    let mut operator = Command::new(env!("CARGO_BIN_EXE_natsflow-operator"))
        .env("KUBECONFIG", &path)
        .args([
            "--namespace",
            &ns,
            "--lease-namespace",
            &ns,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // examples/pipeline-full.yaml, as `kubectl apply -f` does.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipeline-full.yaml"
    ))
    .unwrap();
    let applied = Instant::now();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap();
        let (group, version) = match v["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), v["apiVersion"].as_str().unwrap().to_string()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, v["kind"].as_str().unwrap());
        let plural = format!("{}s", v["kind"].as_str().unwrap().to_lowercase());
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &ns,
            &ApiResource::from_gvk_with_plural(&gvk, &plural),
        );
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(&name, &pp, &Patch::Apply(&v)).await.unwrap();
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let children = [
        "users-full-fetcher",
        "users-full-mapper",
        "users-full-saver",
        "users-full-broadcaster",
    ];
    until("every child exists", Duration::from_secs(30), || async {
        let mut all = config_maps
            .get_opt("users-full-config")
            .await
            .unwrap()
            .is_some()
            && services
                .get_opt("users-full-metrics")
                .await
                .unwrap()
                .is_some();
        for d in children {
            all &= deployments.get_opt(d).await.unwrap().is_some();
        }
        all
    })
    .await;
    println!(
        "every child of examples/pipeline-full.yaml exists {:?} after the apply",
        applied.elapsed()
    );

    // kubectl scale pipeline/users-full --replicas=7
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns);
    pipelines
        .patch_scale(
            "users-full",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    let t = until(
        "the mapper Deployment has 7 replicas",
        Duration::from_secs(30),
        || async {
            deployments
                .get("users-full-mapper")
                .await
                .unwrap()
                .spec
                .replicas
                == Some(7)
        },
    )
    .await;
    println!("kubectl scale --replicas=7 reached the mapper Deployment in {t:?}");

    // Invalid Pipelines are refused with the field named.
    let invalid = |spec: Value| {
        serde_json::from_value::<Pipeline>(json!({"apiVersion": "natsflow.dev/v1alpha1", "kind": "Pipeline", "metadata": {"name": "bad"}, "spec": spec})).unwrap()
    };
    let e = pipelines
        .create(
            &PostParams::default(),
            &invalid(json!({"nats": {"url": "nats://n:4222"}, "image": "i", "mapperReplicas": -1})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.mapperReplicas"), "{e}");
    let e = pipelines
        .create(
            &PostParams::default(),
            &invalid(
                json!({"nats": {"url": "nats://n:4222"}, "image": "i", "broadcaster": {"target": {
                "slack": {"webhookSecretRef": {"name": "a", "key": "b"}},
                "discord": {"webhookSecretRef": {"name": "a", "key": "b"}}}}}),
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.broadcaster.target"), "{e}");

    // Deleting the Pipeline deletes every child (owner references).
    pipelines
        .delete("users-full", &DeleteParams::foreground())
        .await
        .unwrap();
    let t = until("every child is gone", Duration::from_secs(120), || async {
        let mut none = config_maps
            .get_opt("users-full-config")
            .await
            .unwrap()
            .is_none();
        for d in children {
            none &= deployments.get_opt(d).await.unwrap().is_none();
        }
        none
    })
    .await;
    println!("every child was deleted {t:?} after the Pipeline");

    let status =
        std::fs::read_to_string(format!("/proc/{}/status", operator.id())).unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: unknown");
    println!("operator peak memory: {peak}");
    operator.kill().unwrap();
    let _ = operator.wait();
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}
