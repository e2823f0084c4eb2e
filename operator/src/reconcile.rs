//! The reconcile loop: bring one Pipeline's children in line with its spec by server-side
//! apply (writing only what differs), prune what the spec no longer asks for, and report
//! status, events and one log line per change.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Secret},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    api::{Api, DeleteParams, DynamicObject, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
    },
    Client, Resource, ResourceExt,
};
use serde_json::{json, Value};

use crate::{
    children::{self, deployment_name, service_monitor, Child, Component, MANAGER},
    crd::Pipeline,
    metrics::{ErrorLabels, Metrics},
    progress,
    status::{self, Monitoring, Observed, Workers},
};

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failures per Pipeline, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        let recorder = Recorder::new(client.clone(), MANAGER.into());
        Context {
            client,
            recorder,
            metrics,
            failures: Mutex::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Pipeline has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for the failures metric.
    pub fn reason(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) if !s.reason.is_empty() => s.reason.clone(),
            Error::Kube(kube::Error::Api(s)) => format!("HTTP{}", s.code),
            Error::Kube(_) => "Connection".into(),
            Error::NoNamespace => "NoNamespace".into(),
        }
    }
}

/// Requeue soon while workers start or data flows, else rarely (watches catch changes).
const BUSY: Duration = Duration::from_secs(15);
const IDLE: Duration = Duration::from_secs(300);

fn key(p: &Pipeline) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

pub async fn reconcile(p: Arc<Pipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = apply(&p, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&key(&p));
    }
    result
}

/// Backs off 5 s, 10 s, 20 s ... up to 5 minutes per Pipeline, so a lasting error does not
/// become a hot loop.
pub fn error_policy(p: Arc<Pipeline>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&ErrorLabels {
            reason: err.reason(),
        })
        .inc();
    let n = {
        let mut f = ctx.failures.lock().expect("failures lock");
        let n = f.entry(key(&p)).or_insert(0);
        *n += 1;
        *n
    };
    // Tell the user too, once per failure streak, not only the operator's log.
    if n == 1 {
        let (ctx, p, note) = (
            ctx.clone(),
            p.clone(),
            format!("{err}; retrying with backoff"),
        );
        tokio::spawn(async move {
            publish(&ctx, &p, EventType::Warning, "ReconcileFailed", &note).await
        });
    }
    let delay = Duration::from_secs(5 * 2u64.pow((n - 1).min(6))).min(IDLE);
    tracing::warn!(
        "pipeline {}: {err}; retrying in {}s",
        key(&p),
        delay.as_secs()
    );
    Action::requeue(delay)
}

async fn apply(p: &Pipeline, ctx: &Context) -> Result<Action, Error> {
    // Garbage collection is deleting the children; applying them again (their deletion
    // triggers a reconcile) would bring them back owned by a Pipeline on its way out.
    if p.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = p.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let key = key(p);

    // Secrets: only their versions are read, for the pod template hash.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut versions = BTreeMap::new();
    let mut missing = Vec::new();
    let mut names: Vec<&str> = p
        .spec
        .secret_refs()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        match secrets.get_metadata_opt(name).await? {
            Some(m) => {
                versions.insert(
                    name.to_string(),
                    m.metadata.resource_version.unwrap_or_default(),
                );
            }
            None => missing.push(name.to_string()),
        }
    }

    let wants_pipeline_monitor = service_monitor::service_monitor(p).is_some();
    let wants_nats_monitor = service_monitor::nats_service_monitor(p).is_some();
    let wants_monitor = wants_pipeline_monitor || wants_nats_monitor;
    let had_monitor = status::get(p.status.as_ref(), "Monitoring").is_some();
    let crd_installed = if wants_monitor || had_monitor {
        service_monitor_crd_installed(client).await?
    } else {
        false
    };
    let monitoring = match (wants_monitor, crd_installed) {
        (false, _) => Monitoring::NotRequested,
        (true, true) => Monitoring::Applied,
        (true, false) => Monitoring::CrdMissing,
    };

    let mut changes = Vec::new();
    let mut workers = Vec::new();
    let mut mapper_replicas = 0;
    for child in children::desired(p, &versions, monitoring == Monitoring::Applied) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &child.resource);
        let observed = api.get_opt(&child.name).await?;
        let observed_json = observed
            .as_ref()
            .map(|o| serde_json::to_value(o).expect("object serializes"));
        let current = match observed_json {
            // A ConfigMap must not keep keys the spec dropped: its data is compared whole.
            Some(o)
                if children::contains(&o, &child.object)
                    && (child.resource.kind != "ConfigMap"
                        || o["data"] == child.object["data"]) =>
            {
                o
            }
            before => {
                let pp = PatchParams::apply(MANAGER).force();
                let after = api
                    .patch(&child.name, &pp, &Patch::Apply(&child.object))
                    .await?;
                ctx.metrics.writes.inc();
                changes.push(describe(p, &child, before.as_ref()));
                serde_json::to_value(after).expect("object serializes")
            }
        };
        if let Some(c) = component_of(p, &child) {
            let ready = current["status"]["readyReplicas"].as_i64().unwrap_or(0) as i32;
            let wanted = children::deployment::replicas(p, c);
            if c == Component::Mapper {
                mapper_replicas = current["status"]["replicas"].as_i64().unwrap_or(0) as i32;
            }
            workers.push(Workers {
                component: c,
                wanted,
                ready,
            });
        }
    }

    // What the spec no longer asks for.
    if p.spec.broadcaster.is_none() {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let name = deployment_name(p, Component::Broadcaster);
        if owned(
            p,
            deployments
                .get_metadata_opt(&name)
                .await?
                .map(|m| m.metadata),
        ) {
            deployments
                .delete(&name, &DeleteParams::background())
                .await?;
            ctx.metrics.writes.inc();
            changes.push(format!(
                "deleted Deployment {name}: spec.broadcaster was removed"
            ));
        }
    }
    if crd_installed {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &service_monitor::api_resource());
        for (name, wanted) in [
            (p.name_any(), wants_pipeline_monitor),
            (service_monitor::nats_name(p), wants_nats_monitor),
        ] {
            if !wanted && owned(p, api.get_opt(&name).await?.map(|o| o.metadata)) {
                api.delete(&name, &DeleteParams::background()).await?;
                ctx.metrics.writes.inc();
                changes.push(format!(
                    "deleted ServiceMonitor {name}: monitoring was turned off"
                ));
            }
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let progress = progress::read(&pods, p).await.unwrap_or_else(|e| {
        tracing::debug!("pipeline {key}: cannot list the fetcher pod for progress: {e}");
        None
    });

    let observed = Observed {
        workers,
        mapper_replicas,
        missing_secrets: missing,
        monitoring,
        progress,
    };
    let status = status::compute(p, &observed, &Time(k8s_openapi::jiff::Timestamp::now()));
    let before = p.status.as_ref();

    for change in &changes {
        tracing::info!("pipeline {key}: {change}");
    }
    if !changes.is_empty() {
        publish(ctx, p, EventType::Normal, "Applied", &changes.join("; ")).await;
    }
    let degraded = status::get(Some(&status), "Degraded").filter(|c| c.status == "True");
    if let Some(d) = degraded {
        if status::get(before, "Degraded").map(|c| (&c.status, &c.message))
            != Some((&d.status, &d.message))
        {
            tracing::warn!("pipeline {key}: {}", d.message);
            publish(ctx, p, EventType::Warning, &d.reason, &d.message).await;
        }
    }
    if monitoring == Monitoring::CrdMissing
        && status::get(before, "Monitoring").map(|c| c.reason.as_str())
            != Some("ServiceMonitorCRDMissing")
    {
        let msg = &status::get(Some(&status), "Monitoring")
            .expect("set above")
            .message;
        tracing::warn!("pipeline {key}: no ServiceMonitor: {msg}");
        publish(ctx, p, EventType::Warning, "ServiceMonitorCRDMissing", msg).await;
    }

    let busy = observed.workers.iter().any(|w| w.ready < w.wanted)
        || progress.is_none_or(|(d, t)| t == 0 || d < t);
    if before != Some(&status) {
        let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns);
        let patch =
            json!({"apiVersion": "natsflow.dev/v1alpha1", "kind": "Pipeline", "status": status});
        api.patch_status(
            &p.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(if busy { BUSY } else { IDLE }))
}

async fn service_monitor_crd_installed(client: &Client) -> Result<bool, kube::Error> {
    match client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "servicemonitors")),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

fn owned(
    p: &Pipeline,
    meta: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) -> bool {
    let uid = p.uid();
    meta.is_some_and(|m| {
        m.owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| Some(&o.uid) == uid.as_ref())
    })
}

fn component_of(p: &Pipeline, child: &Child) -> Option<Component> {
    (child.resource.kind == "Deployment")
        .then(|| {
            Component::ALL
                .into_iter()
                .find(|&c| deployment_name(p, c) == child.name)
        })
        .flatten()
}

/// One line a person understands: `mappers 3 -> 10`, `created Deployment users-saver`.
fn describe(p: &Pipeline, child: &Child, before: Option<&Value>) -> String {
    let kind = &child.resource.kind;
    let Some(before) = before else {
        return format!("created {kind} {}", child.name);
    };
    if let Some(c) = component_of(p, child) {
        let (old, new) = (
            &before["spec"]["replicas"],
            &child.object["spec"]["replicas"],
        );
        if old != new {
            return format!("{}s {} -> {}", c.as_str(), old, new);
        }
        let hash = |v: &Value| {
            v["spec"]["template"]["metadata"]["annotations"]["natsflow.dev/config-hash"].clone()
        };
        if hash(before) != hash(&child.object) {
            return format!(
                "rolling Deployment {}: its config or a Secret it reads changed",
                child.name
            );
        }
    }
    format!("updated {kind} {} to match the Pipeline", child.name)
}

async fn publish(ctx: &Context, p: &Pipeline, type_: EventType, reason: &str, note: &str) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &p.object_ref(&())).await {
        tracing::debug!("cannot record event: {e}");
    }
}
