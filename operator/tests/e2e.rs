//! End to end on a real Kubernetes API server, run only when NATSFLOW_E2E_KUBECONFIG points at
//! a kubeconfig of a disposable test cluster (e.g. kind), as a new user would try it: apply the
//! CRD, run the operator binary, apply examples/pipeline-full.yaml and see every child within
//! 2 s, scale with the scale subresource, read the printer columns, see invalid Pipelines
//! refused with the field named, check the idle operator stays under 50 MiB, delete the
//! Pipeline and see every child go.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::GroupVersionKind,
    discovery::ApiResource,
    Client, Config,
};
use natsflow_operator::crd::Pipeline;
use serde::Deserialize;
use serde_json::{json, Value};

/// Written past the test harness's capture, so a user sees it in a passing run too.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "e2e: {line}");
}

/// The operator process: killed when the test ends, pass or fail.
struct Operator(Mutex<Child>);

impl Operator {
    fn assert_running(&self) {
        if let Ok(Some(status)) = self.0.lock().unwrap().try_wait() {
            panic!("the operator exited ({status}); its log is above");
        }
    }

    fn rss_kib(&self) -> u64 {
        let pid = self.0.lock().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("the operator runs on this machine");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let mut c = self.0.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

async fn until<F, Fut>(op: &Operator, what: &str, timeout: Duration, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !ok().await {
        op.assert_running();
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn exists<K>(api: &Api<K>, name: &str) -> bool
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.unwrap().is_some()
}

/// `kubectl get pl -n NS` as kubectl asks for it: a Table with the printer columns.
async fn pipelines_table(client: &Client, ns: &str) -> Value {
    let req = http::Request::get(format!(
        "/apis/natsflow.dev/v1alpha1/namespaces/{ns}/pipelines"
    ))
    .header(
        "Accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .body(Vec::new())
    .unwrap();
    serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap()
}

#[tokio::test]
async fn end_to_end_on_a_real_cluster() {
    let Some(path) = std::env::var_os("NATSFLOW_E2E_KUBECONFIG") else {
        say("skipped: set NATSFLOW_E2E_KUBECONFIG to the kubeconfig of a disposable test cluster (e.g. kind) to run the end-to-end test");
        return;
    };
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let ns = format!("natsflow-e2e-{}", std::process::id());
    let pp = PatchParams::apply("natsflow-e2e").force();

    // `kubectl apply -f crds/`: the file users apply, not the Rust type.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/pipeline.yaml"
    ))
    .unwrap();
    let crd: Value = serde_yaml_ng::from_str(&crd_file).unwrap();
    crds.patch("pipelines.natsflow.dev", &pp, &Patch::Apply(&crd))
        .await
        .expect("the API server accepts crds/pipeline.yaml");
    let started = Instant::now();
    while !crds
        .get("pipelines.natsflow.dev")
        .await
        .ok()
        .and_then(|c| c.status)
        .and_then(|s| s.conditions)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "CRD not established"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    say(&format!("namespace {ns} (left in place if the test fails)"));

    // The operator, watching only the test namespace, its Lease there too.
    let op = Operator(Mutex::new(
        Command::new(env!("CARGO_BIN_EXE_natsflow-operator"))
            .env("KUBECONFIG", &path)
            .args(["--namespace", &ns, "--lease-namespace", &ns])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    ));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    until(
        &op,
        "the operator leads",
        Duration::from_secs(30),
        || async {
            leases
                .get_opt("natsflow-operator")
                .await
                .unwrap()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .is_some()
        },
    )
    .await;

    // Is the Prometheus operator's ServiceMonitor CRD here? It decides what to expect.
    let monitoring = client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
        .is_ok_and(|l| l.resources.iter().any(|r| r.name == "servicemonitors"));
    let service_monitors: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
            "servicemonitors",
        ),
    );

    // `kubectl apply --server-side -f examples/pipeline-full.yaml`
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipeline-full.yaml"
    ))
    .unwrap();
    let applied = Instant::now();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap();
        let api_version = v["apiVersion"].as_str().unwrap();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let kind = v["kind"].as_str().unwrap();
        let plural = match kind {
            "Secret" => "secrets",
            "Pipeline" => "pipelines",
            other => panic!("examples/pipeline-full.yaml holds a {other}: teach the test"),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &ns,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                plural,
            ),
        );
        let name = v["metadata"]["name"].as_str().unwrap();
        api.patch(name, &pp, &Patch::Apply(&v)).await.unwrap();
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let workers = [
        "users-full-fetcher",
        "users-full-mapper",
        "users-full-saver",
        "users-full-broadcaster",
    ];
    let monitors = ["users-full", "users-full-nats"];
    let children_exist = |want: bool| {
        let (deployments, config_maps, services, service_monitors) =
            (&deployments, &config_maps, &services, &service_monitors);
        async move {
            let mut all = exists(config_maps, "users-full-config").await == want
                && exists(services, "users-full-metrics").await == want;
            for d in workers {
                all &= exists(deployments, d).await == want;
            }
            if monitoring {
                for m in monitors {
                    all &= exists(service_monitors, m).await == want;
                }
            }
            all
        }
    };
    until(&op, "every child exists", Duration::from_secs(30), || {
        children_exist(true)
    })
    .await;
    let created = applied.elapsed();
    say(&format!(
        "every child of examples/pipeline-full.yaml exists {created:?} after the apply (ServiceMonitor CRD installed: {monitoring})"
    ));
    assert!(created <= Duration::from_secs(2), "created in {created:?}");
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns);
    if !monitoring {
        until(
            &op,
            "the Monitoring condition says why",
            Duration::from_secs(10),
            || async {
                pipelines
                    .get("users-full")
                    .await
                    .unwrap()
                    .status
                    .is_some_and(|s| {
                        s.conditions.iter().any(|c| {
                            c.type_ == "Monitoring" && c.reason == "ServiceMonitorCRDMissing"
                        })
                    })
            },
        )
        .await;
    }

    // kubectl scale pipeline/users-full --replicas=7
    pipelines
        .patch_scale(
            "users-full",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    let t = until(
        &op,
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
    say(&format!(
        "kubectl scale --replicas=7 reached the mapper Deployment in {t:?}"
    ));

    // kubectl get pl: the printer columns, read as kubectl reads them (a Table).
    let table = pipelines_table(&client, &ns).await;
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in ["Name", "Mappers", "Ready", "Progress", "Age"] {
        assert!(
            columns.contains(&want),
            "kubectl get pl columns: {columns:?}"
        );
    }
    let mappers = columns.iter().position(|c| *c == "Mappers").unwrap();
    until(
        &op,
        "kubectl get pl shows 7 mappers",
        Duration::from_secs(30),
        || async {
            let t = pipelines_table(&client, &ns).await;
            t["rows"][0]["cells"][mappers] == json!(7)
        },
    )
    .await;
    say(&format!("kubectl get pl columns: {columns:?}"));

    // Invalid Pipelines are refused with the field named.
    let invalid = |spec: Value| {
        serde_json::from_value::<Pipeline>(json!({"apiVersion": "natsflow.dev/v1alpha1", "kind": "Pipeline", "metadata": {"name": "bad"}, "spec": spec})).unwrap()
    };
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        other => panic!("not refused by the API server: {other}"),
    };
    let e = refused(
        pipelines
            .create(
                &PostParams::default(),
                &invalid(
                    json!({"nats": {"url": "nats://n:4222"}, "image": "i", "mapperReplicas": -1}),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert!(e.contains("spec.mapperReplicas"), "{e}");
    say(&format!("mapperReplicas -1: {e}"));
    let e = refused(
        pipelines
            .create(
                &PostParams::default(),
                &invalid(
                    json!({"nats": {"url": "nats://n:4222"}, "image": "i", "broadcaster": {"target": {
                    "slack": {"webhookSecretRef": {"name": "a", "key": "b"}},
                    "discord": {"webhookSecretRef": {"name": "a", "key": "b"}}}}}),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert!(e.contains("spec.broadcaster.target"), "{e}");
    say(&format!("two broadcaster targets: {e}"));

    // Idle: nothing changes for a while; the operator's memory then.
    tokio::time::sleep(Duration::from_secs(10)).await;
    op.assert_running();
    let rss = op.rss_kib();
    say(&format!(
        "operator memory while idle: {:.1} MiB",
        rss as f64 / 1024.0
    ));
    assert!(rss < 50 * 1024, "the idle operator holds {rss} KiB");

    // `kubectl delete pipeline users-full` (background cascade): every child goes.
    pipelines
        .delete("users-full", &DeleteParams::background())
        .await
        .unwrap();
    let t = until(
        &op,
        "the Pipeline and every child are gone",
        Duration::from_secs(120),
        || async { !exists(&pipelines, "users-full").await && children_exist(false).await },
    )
    .await;
    say(&format!("every child was deleted {t:?} after the Pipeline"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        children_exist(false).await,
        "a child came back after the Pipeline was deleted"
    );

    op.assert_running();
    drop(op);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}
