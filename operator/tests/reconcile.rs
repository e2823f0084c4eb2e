//! Reconcile flows against a mocked Kubernetes API at the HTTP level (tower-test): a small
//! in-memory API server answers GET, server-side-apply PATCH, DELETE, discovery and event
//! requests, and every request is recorded so each test checks exactly what was sent.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use http::{Request, Response};
use kube::{client::Body, Client, ResourceExt};
use natsflow_operator::{
    children,
    crd::{Pipeline, PipelineSpec},
    metrics::Metrics,
    reconcile::{reconcile, Context},
};
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

#[derive(Default)]
struct World {
    objects: BTreeMap<String, Value>,
    /// `METHOD path` of every request, in order.
    requests: Vec<String>,
    bodies: Vec<Value>,
    service_monitor_crd: bool,
}

fn pipeline(spec_yaml: &str) -> Pipeline {
    let spec: PipelineSpec = serde_yaml_ng::from_str(spec_yaml).unwrap();
    let mut p = Pipeline::new("users", spec);
    p.metadata.namespace = Some("default".into());
    p.metadata.uid = Some("0b6a3c3e-6d4b-4a43-9e7c-1f1d3b0b2f10".into());
    p.metadata.generation = Some(1);
    p.metadata.resource_version = Some("1".into());
    p
}

const MINIMAL: &str = "nats: {url: 'nats://my-nats:4222'}\nimage: natsflow/natsflow:0.1.0\n";

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn answer(world: &mut World, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    if path == "/apis/monitoring.coreos.com/v1" {
        return if world.service_monitor_crd {
            (
                200,
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1", "resources": [{"name": "servicemonitors", "namespaced": true, "kind": "ServiceMonitor", "singularName": "servicemonitor", "verbs": ["get", "patch"]}]}),
            )
        } else {
            not_found()
        };
    }
    if path.ends_with("/events") && method == "POST" {
        return (201, body.unwrap());
    }
    if path.ends_with("/pods") {
        return (
            200,
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
        );
    }
    match method {
        "GET" => match world.objects.get(path) {
            Some(o) => (200, o.clone()),
            None => not_found(),
        },
        "PATCH" => {
            let mut obj = body.unwrap();
            if path.ends_with("/status") {
                let base = path.trim_end_matches("/status");
                let mut current = world.objects.get(base).cloned().unwrap_or(json!({}));
                current["status"] = obj["status"].clone();
                obj = current;
            }
            world
                .objects
                .insert(path.trim_end_matches("/status").to_string(), obj.clone());
            (200, obj)
        }
        "DELETE" => match world.objects.remove(path) {
            Some(_) => (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ),
            None => not_found(),
        },
        other => panic!("unexpected {other} {path}"),
    }
}

async fn serve(mut handle: Handle, world: Arc<Mutex<World>>) {
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Option<Value> =
            (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
        let (status, out) = {
            let mut w = world.lock().unwrap();
            w.requests.push(format!("{method} {path}"));
            w.bodies.push(body.clone().unwrap_or(Value::Null));
            answer(&mut w, &method, &path, body)
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&out).unwrap()))
                .unwrap(),
        );
    }
}

/// Runs one reconcile of `p` against `world`; returns the requests it made.
async fn reconcile_once(p: &Pipeline, world: &Arc<Mutex<World>>) -> Vec<String> {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, world.clone()));
    let client = Client::new(svc, "default");
    let ctx = Arc::new(Context::new(client, Metrics::new(&mut Default::default())));
    let before = {
        let mut w = world.lock().unwrap();
        w.objects
            .insert(PIPELINE.into(), serde_json::to_value(p).unwrap());
        w.requests.len()
    };
    reconcile(Arc::new(p.clone()), ctx)
        .await
        .expect("reconcile succeeds");
    server.abort();
    world.lock().unwrap().requests[before..].to_vec()
}

const CM: &str = "/api/v1/namespaces/default/configmaps/users-config";
const SVC: &str = "/api/v1/namespaces/default/services/users-metrics";
const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments/users-";
const PODS: &str = "GET /api/v1/namespaces/default/pods";
const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/default/events";
const PIPELINE: &str = "/apis/natsflow.dev/v1alpha1/namespaces/default/pipelines/users";
const STATUS: &str = "PATCH /apis/natsflow.dev/v1alpha1/namespaces/default/pipelines/users/status";

fn get_apply(path: &str) -> [String; 2] {
    [format!("GET {path}"), format!("PATCH {path}")]
}

fn first_apply_requests() -> Vec<String> {
    let mut r = Vec::new();
    r.extend(get_apply(CM));
    r.extend(get_apply(SVC));
    for c in ["fetcher", "mapper", "saver"] {
        r.extend(get_apply(&format!("{DEPLOY}{c}")));
    }
    r.push(format!("GET {DEPLOY}broadcaster"));
    r.push(PODS.into());
    r
}

/// Stores the pipeline as the API server would, with the status the operator wrote.
fn current(p: &Pipeline, world: &Arc<Mutex<World>>) -> Pipeline {
    let w = world.lock().unwrap();
    let mut p = p.clone();
    if let Some(s) = w.objects.get(PIPELINE) {
        p.status = serde_json::from_value(s["status"].clone()).unwrap();
    }
    p
}

#[tokio::test]
async fn first_reconcile_applies_every_child_then_the_status() {
    let world = Arc::new(Mutex::new(World::default()));
    let p = pipeline(MINIMAL);
    let requests = reconcile_once(&p, &world).await;
    let mut expected = first_apply_requests();
    expected.push(EVENT.into());
    expected.push(STATUS.into());
    assert_eq!(requests, expected);

    let w = world.lock().unwrap();
    let mapper = &w.objects[&format!("{DEPLOY}mapper")];
    assert_eq!(mapper["spec"]["replicas"], 1);
    assert_eq!(mapper["metadata"]["ownerReferences"][0]["name"], "users");
    let status = &w.objects[PIPELINE]["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["mapperSelector"], "app.kubernetes.io/component=mapper,app.kubernetes.io/instance=users,app.kubernetes.io/name=natsflow");
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(
        ready["message"],
        "0/1 fetchers ready, 0/1 mappers ready, 0/1 savers ready"
    );
    let notes: Vec<&str> = w.bodies.iter().filter_map(|b| b["note"].as_str()).collect();
    assert_eq!(
        notes,
        ["created ConfigMap users-config; created Service users-metrics; created Deployment users-fetcher; created Deployment users-mapper; created Deployment users-saver"]
    );
}

#[tokio::test]
async fn an_unchanged_pipeline_causes_no_writes() {
    let world = Arc::new(Mutex::new(World::default()));
    let p = pipeline(MINIMAL);
    reconcile_once(&p, &world).await;
    let p = current(&p, &world);
    let requests = reconcile_once(&p, &world).await;
    assert!(
        requests.iter().all(|r| r.starts_with("GET ")),
        "only reads: {requests:?}"
    );
}

#[tokio::test]
async fn a_pipeline_being_deleted_is_left_to_garbage_collection() {
    let world = Arc::new(Mutex::new(World::default()));
    let mut p = pipeline(MINIMAL);
    reconcile_once(&p, &world).await;
    // `kubectl delete --cascade=foreground`: the Pipeline stays until its children are gone.
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    world.lock().unwrap().objects.remove(CM);
    let requests = reconcile_once(&current(&p, &world), &world).await;
    assert_eq!(requests, Vec::<String>::new(), "nothing is read or applied");
    assert!(!world.lock().unwrap().objects.contains_key(CM));
}

#[tokio::test]
async fn a_scale_change_patches_only_the_mapper_deployment() {
    let world = Arc::new(Mutex::new(World::default()));
    let p = pipeline(&format!("{MINIMAL}mapperReplicas: 3\n"));
    reconcile_once(&p, &world).await;
    let mut scaled = current(&p, &world);
    scaled.spec.mapper_replicas = 7;
    scaled.metadata.generation = Some(2);
    let requests = reconcile_once(&scaled, &world).await;
    let writes: Vec<_> = requests
        .iter()
        .filter(|r| !r.starts_with("GET "))
        .cloned()
        .collect();
    assert_eq!(
        writes,
        vec![format!("PATCH {DEPLOY}mapper"), EVENT.into(), STATUS.into()]
    );
    let w = world.lock().unwrap();
    assert_eq!(w.objects[&format!("{DEPLOY}mapper")]["spec"]["replicas"], 7);
    assert!(w.bodies.iter().any(|b| b["note"] == "mappers 3 -> 7"));
}

#[tokio::test]
async fn removing_the_broadcaster_deletes_its_deployment() {
    let world = Arc::new(Mutex::new(World::default()));
    let with = pipeline(&format!("{MINIMAL}broadcaster: {{target: {{generic: {{urlSecretRef: {{name: hook, key: url}}}}}}}}\n"));
    world.lock().unwrap().objects.insert(
        "/api/v1/namespaces/default/secrets/hook".into(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook", "namespace": "default", "resourceVersion": "5"}}),
    );
    let first = reconcile_once(&with, &world).await;
    assert!(
        first.contains(&format!("PATCH {DEPLOY}broadcaster")),
        "{first:?}"
    );
    let mut without = current(&with, &world);
    without.spec.broadcaster = None;
    let requests = reconcile_once(&without, &world).await;
    let writes: Vec<_> = requests
        .iter()
        .filter(|r| !r.starts_with("GET "))
        .cloned()
        .collect();
    assert_eq!(
        writes,
        vec![
            // The broadcaster's keys leave the config; no other worker rolls.
            format!("PATCH {CM}"),
            format!("DELETE {DEPLOY}broadcaster"),
            EVENT.into(),
            STATUS.into()
        ]
    );
    assert!(!world
        .lock()
        .unwrap()
        .objects
        .contains_key(&format!("{DEPLOY}broadcaster")));
}

#[tokio::test]
async fn without_the_service_monitor_crd_the_rest_is_applied_and_reported() {
    let world = Arc::new(Mutex::new(World::default()));
    let p = pipeline(&format!(
        "{MINIMAL}monitoring: {{serviceMonitor: {{labels: {{release: kube-prometheus-stack}}}}}}\n"
    ));
    let requests = reconcile_once(&p, &world).await;
    assert_eq!(requests[0], "GET /apis/monitoring.coreos.com/v1");
    assert!(
        !requests.iter().any(|r| r.contains("servicemonitors")),
        "{requests:?}"
    );
    {
        let w = world.lock().unwrap();
        let status = &w.objects[PIPELINE]["status"];
        let m = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Monitoring")
            .unwrap();
        assert_eq!(
            (m["status"].as_str(), m["reason"].as_str()),
            (Some("False"), Some("ServiceMonitorCRDMissing"))
        );
        assert!(w
            .bodies
            .iter()
            .any(|b| b["reason"] == "ServiceMonitorCRDMissing" && b["type"] == "Warning"));
    }

    // Reported once: the next reconcile sends no second warning.
    let p = current(&p, &world);
    let again = reconcile_once(&p, &world).await;
    assert!(!again.iter().any(|r| r.starts_with("POST")), "{again:?}");
}

#[tokio::test]
async fn with_the_service_monitor_crd_it_is_applied() {
    let world = Arc::new(Mutex::new(World {
        service_monitor_crd: true,
        ..Default::default()
    }));
    let p = pipeline(&format!(
        "{MINIMAL}monitoring: {{serviceMonitor: {{labels: {{release: kube-prometheus-stack}}}}, natsServiceMonitor: {{namespace: nats}}}}\n"
    ));
    let requests = reconcile_once(&p, &world).await;
    let sm = "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors/users";
    let nats_sm = "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors/users-nats";
    assert!(requests.contains(&format!("PATCH {sm}")), "{requests:?}");
    assert!(
        requests.contains(&format!("PATCH {nats_sm}")),
        "{requests:?}"
    );
    {
        let w = world.lock().unwrap();
        assert_eq!(
            w.objects[sm]["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        assert_eq!(
            w.objects[nats_sm]["spec"]["namespaceSelector"]["matchNames"][0],
            "nats"
        );
    }

    // Turned off: the NATS one is deleted, the pipeline's stays.
    let mut off = current(&p, &world);
    off.spec.monitoring.nats_service_monitor = None;
    let requests = reconcile_once(&off, &world).await;
    assert!(
        requests.contains(&format!("DELETE {nats_sm}")),
        "{requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("DELETE") && r.ends_with("/users")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn a_missing_secret_is_degraded_and_named_but_never_read() {
    let world = Arc::new(Mutex::new(World::default()));
    let p = pipeline(&format!("{MINIMAL}broadcaster: {{target: {{telegram: {{chatId: '42', tokenSecretRef: {{name: broadcaster-token, key: token}}}}}}}}\n"));
    let requests = reconcile_once(&p, &world).await;
    assert_eq!(
        requests[0],
        "GET /api/v1/namespaces/default/secrets/broadcaster-token"
    );
    let w = world.lock().unwrap();
    let status = &w.objects[PIPELINE]["status"];
    let d = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(d["status"], "True");
    assert_eq!(
        d["message"],
        "Secret broadcaster-token not found: create it in this namespace"
    );
    assert!(w
        .bodies
        .iter()
        .any(|b| b["type"] == "Warning" && b["reason"] == "SecretMissing"));
    // The pods still get the reference, so they start once the Secret exists.
    let b = &w.objects[&format!("{DEPLOY}broadcaster")];
    assert_eq!(
        b["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
            ["name"],
        "broadcaster-token"
    );
}

#[test]
fn desired_children_match_what_is_applied() {
    // The applied objects are exactly the pure builders' output.
    let p = pipeline(MINIMAL);
    let kids = children::desired(&p, &BTreeMap::new(), false);
    assert_eq!(kids.len(), 5);
    assert!(kids
        .iter()
        .all(|c| c.object["metadata"]["name"] == c.name.as_str()));
    assert_eq!(p.name_any(), "users");
}

#[tokio::test]
async fn a_config_key_the_spec_drops_is_removed() {
    let world = Arc::new(Mutex::new(World::default()));
    world.lock().unwrap().objects.insert(
        "/api/v1/namespaces/default/secrets/nats-creds".into(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "nats-creds", "namespace": "default", "resourceVersion": "3"}}),
    );
    let p = pipeline("nats: {url: 'nats://n:4222', credentialsSecretRef: {name: nats-creds, key: user.creds}}\nimage: i\n");
    reconcile_once(&p, &world).await;
    assert!(world.lock().unwrap().objects[CM]["data"]
        .get("NATSFLOW_NATS_CREDS_FILE")
        .is_some());
    let mut plain = current(&p, &world);
    plain.spec.nats.credentials_secret_ref = None;
    let requests = reconcile_once(&plain, &world).await;
    assert!(requests.contains(&format!("PATCH {CM}")), "{requests:?}");
    assert!(world.lock().unwrap().objects[CM]["data"]
        .get("NATSFLOW_NATS_CREDS_FILE")
        .is_none());
}
