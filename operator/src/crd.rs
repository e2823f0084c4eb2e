//! The `Pipeline` custom resource (natsflow.dev/v1alpha1): what a user writes, with the
//! schema bounds and CEL rules the API server enforces, and the status the operator reports.

// kube's printcolumn(...) attributes repeat keys by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ResourceRequirements, apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A NATS data-processing pipeline: a fetcher that splits a data set into chunks, mappers
/// that transform them, savers that store them, and an optional broadcaster of app events.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "natsflow.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    namespaced,
    shortname = "pl",
    category = "natsflow",
    status = "PipelineStatus",
    derive = "PartialEq",
    doc = "A NATS data-processing pipeline run by the natsflow operator",
    scale(
        spec_replicas_path = ".spec.mapperReplicas",
        status_replicas_path = ".status.mapperReplicas",
        label_selector_path = ".status.mapperSelector"
    ),
    printcolumn(
        name = "Mappers",
        type_ = "integer",
        json_path = ".spec.mapperReplicas",
        description = "Mapper replicas wanted"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyMappers",
        description = "Mapper replicas ready"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress",
        description = "Chunks saved of the data set"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.saver.sink != 'file' || self.saverReplicas <= 1 || has(self.saver.volumeClaimName)").message("spec.saver.volumeClaimName: required for the file sink with more than one saver, so every saver sees every saved chunk"))]
pub struct PipelineSpec {
    /// How the workers reach NATS.
    pub nats: NatsSpec,
    /// Container image holding the worker binaries (natsflow-fetcher, -mapper, -saver, -broadcaster).
    #[schemars(length(min = 1))]
    pub image: String,
    /// Prefix for the pipeline's subjects: "" uses app9's bare names (mapper_data, ...);
    /// "users" gives users.mapper_data, and so on. Pipelines sharing a NATS need different prefixes.
    #[serde(default)]
    #[schemars(regex(pattern = r"^$|^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"))]
    pub subject_prefix: String,
    /// Where the objects come from. Default: the generated data set of 100000 people.
    #[serde(default)]
    pub source: Source,
    /// Objects per chunk.
    #[serde(default = "default_chunk_size")]
    #[schemars(range(min = 1, max = 1000))]
    pub chunk_size: u32,
    /// Mapper replicas. `kubectl scale pipeline/NAME --replicas=N` sets this field.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub mapper_replicas: i32,
    /// What each mapper does to the objects.
    #[serde(default)]
    pub mapper: MapperSpec,
    /// Saver replicas.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub saver_replicas: i32,
    /// Where savers store the mapped chunks.
    #[serde(default)]
    pub saver: SaverSpec,
    /// A chunk not acknowledged by then is sent again, e.g. 30s, 500ms, 2m.
    #[serde(default = "default_ack_timeout")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(ms|s|m|h)$"))]
    pub ack_timeout: String,
    /// Forward application events (e.g. "a todo was created") to a chat service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcaster: Option<BroadcasterSpec>,
    /// Prometheus-operator integration.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Resource requests and limits per worker kind; unset kinds get small defaults.
    #[serde(default)]
    pub resources: WorkerResources,
}

fn one() -> i32 {
    1
}
fn default_chunk_size() -> u32 {
    100
}
fn default_ack_timeout() -> String {
    "30s".into()
}

/// NATS connection. Credentials come from Secrets, never from this object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.credentialsSecretRef) && has(self.tokenSecretRef))").message("spec.nats: set credentialsSecretRef or tokenSecretRef, not both"))]
pub struct NatsSpec {
    /// NATS URL as the workers see it, e.g. nats://my-nats:4222.
    #[schemars(length(min = 1))]
    pub url: String,
    /// Secret key holding a NATS credentials file (JWT and NKey seed); mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding a NATS token; passed by secretKeyRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// One key of a Secret in the Pipeline's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Exactly one of `generated` or `http`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.generated) != has(self.http)").message("spec.source: set exactly one of generated or http"))]
pub struct Source {
    /// Deterministic people shaped like app9's {uuid, fn, ln, friends}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedSource>,
    /// A JSON array or NDJSON document fetched from a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
}

impl Default for Source {
    fn default() -> Self {
        Source {
            generated: Some(GeneratedSource::default()),
            http: None,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GeneratedSource {
    /// Number of objects.
    #[serde(default = "default_objects")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub objects: u64,
    /// Seed: the same seed gives the same objects.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

impl Default for GeneratedSource {
    fn default() -> Self {
        GeneratedSource {
            objects: default_objects(),
            seed: default_seed(),
        }
    }
}

fn default_objects() -> u64 {
    100_000
}
fn default_seed() -> u64 {
    1
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HttpSource {
    /// URL of the data.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.transform != 'jq' || (has(self.jq) && size(self.jq) > 0)").message("spec.mapper.jq: required when transform is jq"))]
pub struct MapperSpec {
    /// `fullname` maps {uuid, fn, ln} to {id, name: "fn ln"}; `jq` applies spec.mapper.jq.
    #[serde(default)]
    pub transform: Transform,
    /// jq expression applied to each object when transform is jq, e.g. '{id: .uuid}'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jq: Option<String>,
    /// Simulated work per chunk, drawn uniformly from [min, max] milliseconds (app9: 0-10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated_work_ms: Option<WorkRange>,
    /// Chunks one mapper processes at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: u32,
}

fn default_concurrency() -> u32 {
    1
}

// By hand, not derived: the derived one had concurrency 0, which the schema's `default` for
// an absent spec.mapper then carried, and the API server refuses a default its own schema
// rejects (minimum 1).
impl Default for MapperSpec {
    fn default() -> Self {
        MapperSpec {
            transform: Transform::default(),
            jq: None,
            simulated_work_ms: None,
            concurrency: default_concurrency(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    #[default]
    Fullname,
    Jq,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("spec.mapper.simulatedWorkMs: min must not exceed max"))]
pub struct WorkRange {
    #[schemars(range(min = 0, max = 3600000))]
    pub min: u64,
    #[schemars(range(min = 0, max = 3600000))]
    pub max: u64,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SaverSpec {
    /// `log` writes a line per chunk; `file` writes one JSON file per chunk under `path`.
    #[serde(default)]
    pub sink: Sink,
    /// Directory of the file sink (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// PersistentVolumeClaim mounted at `path` for the file sink; default: an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_name: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    #[default]
    Log,
    File,
}

/// Forwards events published on `subject` to one chat target, each event once.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BroadcasterSpec {
    /// Broadcaster replicas; any number forwards each event once (queue group).
    #[serde(default = "default_broadcasters")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Subject the application publishes its events on.
    #[serde(default = "default_event_subject")]
    #[schemars(length(min = 1))]
    pub subject: String,
    /// Where events go: exactly one of telegram, slack, discord or generic.
    pub target: BroadcastTarget,
    /// `core`: a NATS queue group (an event is lost if no broadcaster runs, never sent twice);
    /// `jetstream`: a stream and a claim per event (kept while all broadcasters are down).
    #[serde(default)]
    pub mode: BroadcastMode,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BroadcastMode {
    #[default]
    Core,
    Jetstream,
}

fn default_broadcasters() -> i32 {
    6
}
fn default_event_subject() -> String {
    "todos.events".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.telegram) ? 1 : 0) + (has(self.slack) ? 1 : 0) + (has(self.discord) ? 1 : 0) + (has(self.generic) ? 1 : 0) == 1").message("spec.broadcaster.target: set exactly one of telegram, slack, discord or generic"))]
pub struct BroadcastTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<WebhookTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<WebhookTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic: Option<GenericTarget>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TelegramTarget {
    /// Chat to post to.
    #[schemars(length(min = 1))]
    pub chat_id: String,
    /// Secret key holding the bot token.
    pub token_secret_ref: SecretKeyRef,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTarget {
    /// Secret key holding the webhook URL.
    pub webhook_secret_ref: SecretKeyRef,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenericTarget {
    /// Secret key holding the URL events are POSTed to.
    pub url_secret_ref: SecretKeyRef,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A ServiceMonitor for the workers' metrics (needs the Prometheus operator's CRDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSpec>,
    /// A ServiceMonitor for the NATS server's exporter (the nats Helm chart's `metrics` port),
    /// as the seed sets up by hand; created next to the Pipeline as `NAME-nats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_service_monitor: Option<NatsServiceMonitorSpec>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatsServiceMonitorSpec {
    /// Create the ServiceMonitor.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Namespace of the NATS Service; default: the Pipeline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels of the NATS Service.
    #[serde(default = "nats_selector")]
    pub selector: BTreeMap<String, String>,
    /// Name of the Service port the exporter listens on.
    #[serde(default = "metrics_port")]
    #[schemars(length(min = 1))]
    pub port: String,
    /// Labels your Prometheus selects ServiceMonitors by, e.g. release: kube-prometheus-stack.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
}

fn nats_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_string(), "nats".to_string())])
}
fn metrics_port() -> String {
    "metrics".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitor.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Labels your Prometheus selects ServiceMonitors by, e.g. release: kube-prometheus-stack.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
}

fn yes() -> bool {
    true
}
fn default_interval() -> String {
    "30s".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct WorkerResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetcher: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapper: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saver: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcaster: Option<ResourceRequirements>,
}

/// What the operator observed, for `kubectl get pipelines` and `kubectl describe`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and Monitoring.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Mapper replicas the mapper Deployment has (for the scale subresource).
    #[serde(default)]
    pub mapper_replicas: i32,
    /// Mapper replicas ready.
    #[serde(default)]
    pub ready_mappers: i32,
    /// Label selector of the mapper pods (for the scale subresource and HPAs).
    #[serde(default)]
    pub mapper_selector: String,
    /// Chunks saved of the data set, as the fetcher reports it, e.g. "412/1000".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_total: Option<u64>,
}

/// The CRD as YAML: what `natsflow-operator crd` prints and crds/pipeline.yaml holds.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&Pipeline::crd()).expect("CRD serializes")
}

impl PipelineSpec {
    /// Chunks in the data set, when the source says (the generated one does).
    pub fn total_chunks(&self) -> Option<u64> {
        self.source
            .generated
            .as_ref()
            .map(|g| g.objects.div_ceil(self.chunk_size.max(1) as u64))
    }

    /// Every Secret the pipeline's pods read.
    pub fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        let mut refs: Vec<&SecretKeyRef> = [
            &self.nats.credentials_secret_ref,
            &self.nats.token_secret_ref,
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(b) = &self.broadcaster {
            let t = &b.target;
            refs.extend(t.telegram.as_ref().map(|t| &t.token_secret_ref));
            refs.extend(t.slack.as_ref().map(|t| &t.webhook_secret_ref));
            refs.extend(t.discord.as_ref().map(|t| &t.webhook_secret_ref));
            refs.extend(t.generic.as_ref().map(|t| &t.url_secret_ref));
        }
        refs
    }
}
