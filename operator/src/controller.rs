//! Wiring the reconciler to the cluster: watch Pipelines, the children they own, and the
//! Secrets they reference (metadata only: the operator never asks for Secret data).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service},
};
use kube::{
    api::{Api, ListParams, PartialObjectMeta},
    runtime::{
        controller::{self, Controller},
        reflector::ObjectRef,
        watcher::{self, watcher},
        WatchStreamExt,
    },
    Client, ResourceExt,
};

use crate::{
    crd::Pipeline,
    reconcile::{error_policy, reconcile, Context},
};

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Fails with a message a person can act on when the CRD is missing.
pub async fn check_crd(client: &Client) -> anyhow::Result<()> {
    match Api::<Pipeline>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            anyhow::bail!("the Pipeline CRD (pipelines.natsflow.dev) is not installed: run `kubectl apply -f crds/` and start the operator again")
        }
        Err(e) => Err(anyhow::anyhow!("cannot list Pipelines: {e}")),
    }
}

/// Runs until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let wc = watcher::Config::default();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=natsflow-operator");
    let controller = Controller::new(api::<Pipeline>(&client, ns), wc.clone());
    let pipelines = controller.store();
    // `Api<PartialObjectMeta<_>>` asks for metadata only, never a Secret's data.
    let secrets =
        watcher(api::<PartialObjectMeta<Secret>>(&client, ns), wc.clone()).touched_objects();
    controller
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned)
        .watches_stream(secrets, move |secret| {
            let ns = secret.namespace();
            pipelines
                .state()
                .into_iter()
                .filter(|p| {
                    p.namespace() == ns
                        && p.spec
                            .secret_refs()
                            .iter()
                            .any(|r| r.name == secret.name_any())
                })
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("reconcile: {e}");
            }
        })
        .await;
}
