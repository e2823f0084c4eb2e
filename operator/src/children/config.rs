//! The rendered worker configuration: a ConfigMap of the environment variables the workers
//! read (`NATS_URL` as in the seed, the rest `NATSFLOW_*`), mounted with `envFrom`. Secret
//! values never go here: pods read them by secretKeyRef or from a mounted Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::{config_name, Component};
use crate::crd::{Pipeline, Sink, Transform};

/// Where a mounted NATS credentials file appears in the pods.
pub const CREDS_DIR: &str = "/etc/natsflow/nats";
pub const CREDS_FILE: &str = "/etc/natsflow/nats/user.creds";
/// Default directory of the file sink.
pub const DEFAULT_SINK_DIR: &str = "/data";

/// The workers' environment, as key/value pairs.
pub fn worker_env(p: &Pipeline) -> BTreeMap<String, String> {
    let s = &p.spec;
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("NATS_URL", s.nats.url.clone());
    set("NATSFLOW_SUBJECT_PREFIX", s.subject_prefix.clone());
    set(
        "NATSFLOW_METRICS_ADDR",
        format!("0.0.0.0:{}", super::METRICS_PORT),
    );
    set("NATSFLOW_LOG_FORMAT", "json".into());
    if s.nats.credentials_secret_ref.is_some() {
        set("NATSFLOW_NATS_CREDS_FILE", CREDS_FILE.into());
    }
    // fetcher
    if let Some(g) = &s.source.generated {
        set("NATSFLOW_SOURCE", "generated".into());
        set("NATSFLOW_OBJECTS", g.objects.to_string());
        set("NATSFLOW_SEED", g.seed.to_string());
        set(
            "NATSFLOW_RUN_ID",
            format!(
                "{}-{}-{}-g{}-o{}-c{}",
                p.namespace().unwrap_or_default(),
                p.name_any(),
                uid_prefix(p),
                g.seed,
                g.objects,
                s.chunk_size
            ),
        );
    }
    if let Some(h) = &s.source.http {
        set("NATSFLOW_SOURCE", "http".into());
        set("NATSFLOW_SOURCE_URL", h.url.clone());
        let url_digest = hex(&Sha256::digest(h.url.as_bytes())[..4]);
        set(
            "NATSFLOW_RUN_ID",
            format!(
                "{}-{}-{}-http{url_digest}-c{}",
                p.namespace().unwrap_or_default(),
                p.name_any(),
                uid_prefix(p),
                s.chunk_size
            ),
        );
    }
    set("NATSFLOW_CHUNK_SIZE", s.chunk_size.to_string());
    set("NATSFLOW_ACK_TIMEOUT", s.ack_timeout.clone());
    // mapper
    set(
        "NATSFLOW_TRANSFORM",
        match s.mapper.transform {
            Transform::Fullname => "fullname",
            Transform::Jq => "jq",
        }
        .into(),
    );
    if let Some(jq) = &s.mapper.jq {
        set("NATSFLOW_JQ", jq.clone());
    }
    set("NATSFLOW_CONCURRENCY", s.mapper.concurrency.to_string());
    let work = s
        .mapper
        .simulated_work_ms
        .unwrap_or(crate::crd::WorkRange { min: 0, max: 0 });
    set("NATSFLOW_WORK_MS_MIN", work.min.to_string());
    set("NATSFLOW_WORK_MS_MAX", work.max.to_string());
    // saver
    match s.saver.sink {
        Sink::Log => set("NATSFLOW_SINK", "log".into()),
        Sink::File => {
            set("NATSFLOW_SINK", "file".into());
            set("NATSFLOW_SINK_DIR", sink_dir(p));
        }
    }
    // broadcaster
    if let Some(b) = &s.broadcaster {
        set("NATSFLOW_EVENT_SUBJECT", b.subject.clone());
        set(
            "NATSFLOW_BROADCAST_MODE",
            match b.mode {
                crate::crd::BroadcastMode::Core => "core",
                crate::crd::BroadcastMode::Jetstream => "jetstream",
            }
            .into(),
        );
        let t = &b.target;
        let kind = if let Some(tg) = &t.telegram {
            set("NATSFLOW_TELEGRAM_CHAT_ID", tg.chat_id.clone());
            "telegram"
        } else if t.slack.is_some() {
            "slack"
        } else if t.discord.is_some() {
            "discord"
        } else {
            "generic"
        };
        set("NATSFLOW_TARGET", kind.into());
    }
    env
}

pub fn sink_dir(p: &Pipeline) -> String {
    p.spec
        .saver
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_SINK_DIR.into())
}

pub fn config_map(p: &Pipeline) -> ConfigMap {
    let meta = super::metadata(p, &config_name(p), "config");
    ConfigMap {
        metadata: serde_json::from_value(meta).expect("metadata"),
        data: Some(worker_env(p)),
        ..Default::default()
    }
}

/// The component that reads a key; `None` for keys every worker reads.
fn reader(key: &str) -> Option<Component> {
    let k = key.trim_start_matches("NATSFLOW_");
    match k {
        "SOURCE" | "OBJECTS" | "SEED" | "RUN_ID" | "SOURCE_URL" | "CHUNK_SIZE" | "ACK_TIMEOUT" => {
            Some(Component::Fetcher)
        }
        "TRANSFORM" | "JQ" | "CONCURRENCY" | "WORK_MS_MIN" | "WORK_MS_MAX" => {
            Some(Component::Mapper)
        }
        "SINK" | "SINK_DIR" => Some(Component::Saver),
        "EVENT_SUBJECT" | "TARGET" | "TELEGRAM_CHAT_ID" | "BROADCAST_MODE" => {
            Some(Component::Broadcaster)
        }
        _ => None,
    }
}

/// Digest of the config keys component `c` reads and of the versions of the Secrets it
/// reads; in its pod template, so a change rolls exactly the pods it concerns.
pub fn pod_hash(cm: &ConfigMap, c: Component, secrets: &[(&str, Option<&String>)]) -> String {
    let mut h = Sha256::new();
    for (k, v) in cm
        .data
        .iter()
        .flatten()
        .filter(|(k, _)| reader(k).is_none_or(|r| r == c))
    {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    for (name, version) in secrets {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(version.map(|v| v.as_bytes()).unwrap_or(b"missing"));
        h.update([0]);
    }
    hex(&h.finalize()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which components read which Secrets (NATS credentials: all; a target's secret: the broadcaster).
pub fn secrets_of(p: &Pipeline, c: Component) -> Vec<&crate::crd::SecretKeyRef> {
    let n = &p.spec.nats;
    let mut refs: Vec<_> = [&n.credentials_secret_ref, &n.token_secret_ref]
        .into_iter()
        .flatten()
        .collect();
    if c == Component::Broadcaster {
        refs.extend(super::deployment::target_secret(p));
    }
    refs
}

/// In the run id: a Pipeline deleted and created again under the same name starts a new
/// run, instead of resuming the old one's progress and saving nothing to a fresh sink.
fn uid_prefix(p: &Pipeline) -> String {
    p.uid().unwrap_or_default().chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::tests::{pipeline, MINIMAL};

    #[test]
    fn renders_the_seed_nats_url_and_defaults() {
        let env = worker_env(&pipeline(MINIMAL));
        assert_eq!(env["NATS_URL"], "nats://my-nats:4222");
        assert_eq!(env["NATSFLOW_OBJECTS"], "100000");
        assert_eq!(env["NATSFLOW_CHUNK_SIZE"], "100");
        assert_eq!(env["NATSFLOW_ACK_TIMEOUT"], "30s");
        assert_eq!(env["NATSFLOW_TRANSFORM"], "fullname");
        assert_eq!(env["NATSFLOW_CONCURRENCY"], "1");
        assert_eq!(env["NATSFLOW_SINK"], "log");
        assert_eq!(
            env["NATSFLOW_RUN_ID"],
            "default-users-0b6a3c3e-g1-o100000-c100"
        );
    }

    #[test]
    fn the_http_source_gets_its_url_and_a_run_id_of_its_own() {
        let env = worker_env(&pipeline("nats: {url: 'nats://n:4222'}\nimage: i\nsource: {http: {url: 'https://data.example/people.json'}}\n"));
        assert_eq!(env["NATSFLOW_SOURCE"], "http");
        assert_eq!(
            env["NATSFLOW_SOURCE_URL"],
            "https://data.example/people.json"
        );
        assert!(env["NATSFLOW_RUN_ID"].starts_with("default-users-0b6a3c3e-http"));
        assert!(!env.contains_key("NATSFLOW_OBJECTS"));
    }

    #[test]
    fn secrets_are_referenced_never_rendered() {
        let p = pipeline(
            "nats: {url: 'nats://n:4222', tokenSecretRef: {name: nats-token, key: token}}\nimage: i\nbroadcaster: {target: {telegram: {chatId: '42', tokenSecretRef: {name: bot, key: token}}}}\n",
        );
        let cm = serde_json::to_string(&config_map(&p)).unwrap();
        assert!(
            !cm.contains("nats-token") && !cm.contains("\"bot\""),
            "{cm}"
        );
        assert!(cm.contains("NATSFLOW_TELEGRAM_CHAT_ID"));
    }

    #[test]
    fn hash_follows_what_each_component_reads() {
        let a = config_map(&pipeline(MINIMAL));
        let b = config_map(&pipeline(&format!("{MINIMAL}chunkSize: 50\n")));
        let h = |cm: &ConfigMap, c| pod_hash(cm, c, &[]);
        assert_eq!(h(&a, Component::Fetcher), h(&a.clone(), Component::Fetcher));
        assert_ne!(h(&a, Component::Fetcher), h(&b, Component::Fetcher));
        assert_eq!(h(&a, Component::Mapper), h(&b, Component::Mapper));
        let c = config_map(&pipeline("nats: {url: 'nats://other:4222'}\nimage: i\n"));
        assert_ne!(h(&a, Component::Mapper), h(&c, Component::Mapper));
        let (v1, v2) = ("1".to_string(), "2".to_string());
        assert_ne!(
            pod_hash(&a, Component::Saver, &[("s", Some(&v1))]),
            pod_hash(&a, Component::Saver, &[("s", Some(&v2))])
        );
        assert_ne!(
            pod_hash(&a, Component::Saver, &[("s", None)]),
            pod_hash(&a, Component::Saver, &[("s", Some(&v1))])
        );
    }
}
