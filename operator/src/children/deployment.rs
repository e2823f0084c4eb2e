//! The worker Deployments: `NAME-fetcher` (one replica, never two at once), `NAME-mapper`
//! (spec.mapperReplicas), `NAME-saver`, and `NAME-broadcaster` when configured. Pods run
//! non-root on a read-only root filesystem with no capabilities, and are probed on the
//! workers' health endpoints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};

use super::{config, config_name, deployment_name, metadata, selector, Component, METRICS_PORT};
use crate::crd::{Pipeline, SecretKeyRef, Sink};

/// The components this Pipeline runs.
pub fn components(p: &Pipeline) -> Vec<Component> {
    let mut c = vec![Component::Fetcher, Component::Mapper, Component::Saver];
    if p.spec.broadcaster.is_some() {
        c.push(Component::Broadcaster);
    }
    c
}

pub fn replicas(p: &Pipeline, c: Component) -> i32 {
    match c {
        Component::Fetcher => 1,
        Component::Mapper => p.spec.mapper_replicas,
        Component::Saver => p.spec.saver_replicas,
        Component::Broadcaster => p.spec.broadcaster.as_ref().map_or(0, |b| b.replicas),
    }
}

/// The Secret holding the broadcaster target's token or webhook URL.
pub fn target_secret(p: &Pipeline) -> Option<&SecretKeyRef> {
    let t = &p.spec.broadcaster.as_ref()?.target;
    t.telegram
        .as_ref()
        .map(|t| &t.token_secret_ref)
        .or(t.slack.as_ref().map(|t| &t.webhook_secret_ref))
        .or(t.discord.as_ref().map(|t| &t.webhook_secret_ref))
        .or(t.generic.as_ref().map(|t| &t.url_secret_ref))
}

fn default_resources(c: Component) -> Value {
    let (cpu, mem_req, mem_lim) = match c {
        Component::Fetcher => ("50m", "32Mi", "128Mi"),
        Component::Mapper => ("50m", "16Mi", "64Mi"),
        Component::Saver => ("50m", "16Mi", "64Mi"),
        Component::Broadcaster => ("20m", "16Mi", "64Mi"),
    };
    json!({"requests": {"cpu": cpu, "memory": mem_req}, "limits": {"cpu": "1", "memory": mem_lim}})
}

fn resources(p: &Pipeline, c: Component) -> Value {
    let r = &p.spec.resources;
    let own = match c {
        Component::Fetcher => &r.fetcher,
        Component::Mapper => &r.mapper,
        Component::Saver => &r.saver,
        Component::Broadcaster => &r.broadcaster,
    };
    own.as_ref()
        .map(|r| serde_json::to_value(r).expect("resources serialize"))
        .unwrap_or_else(|| default_resources(c))
}

/// `secret_versions`: resourceVersion of each referenced Secret by name (absent = missing).
pub fn deployment(
    p: &Pipeline,
    c: Component,
    cm: &ConfigMap,
    secret_versions: &BTreeMap<String, String>,
) -> Value {
    let name = deployment_name(p, c);
    let secrets: Vec<(&str, Option<&String>)> = config::secrets_of(p, c)
        .into_iter()
        .map(|s| (s.name.as_str(), secret_versions.get(&s.name)))
        .collect();
    let pod_hash = config::pod_hash(cm, c, &secrets);

    let mut env = Vec::new();
    if let Some(t) = &p.spec.nats.token_secret_ref {
        env.push(secret_env("NATSFLOW_NATS_TOKEN", t));
    }
    if c == Component::Broadcaster {
        if let Some(s) = target_secret(p) {
            env.push(secret_env("NATSFLOW_TARGET_SECRET", s));
        }
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(creds) = &p.spec.nats.credentials_secret_ref {
        volumes.push(json!({"name": "nats-creds", "secret": {"secretName": creds.name, "items": [{"key": creds.key, "path": "user.creds"}], "defaultMode": 0o440}}));
        mounts
            .push(json!({"name": "nats-creds", "mountPath": config::CREDS_DIR, "readOnly": true}));
    }
    if c == Component::Saver && p.spec.saver.sink == Sink::File {
        let source = match &p.spec.saver.volume_claim_name {
            Some(claim) => json!({"name": "data", "persistentVolumeClaim": {"claimName": claim}}),
            None => json!({"name": "data", "emptyDir": {}}),
        };
        volumes.push(source);
        mounts.push(json!({"name": "data", "mountPath": config::sink_dir(p)}));
    }
    let probe = |path: &str, period: i32| json!({"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": 3});
    // A mapper finishes its chunk on SIGTERM: give it the longest simulated work and then some.
    let grace = match c {
        Component::Mapper => {
            30.max(p.spec.mapper.simulated_work_ms.map_or(0, |w| w.max / 1000) as i64 + 10)
        }
        _ => 30,
    };
    let strategy = match c {
        // The fetcher is not scalable: the old pod stops before the new one starts.
        Component::Fetcher => json!({"type": "Recreate"}),
        _ => {
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        }
    };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(p, &name, c.as_str()),
        "spec": {
            "replicas": replicas(p, c),
            "selector": {"matchLabels": selector(p, c)},
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": selector(p, c),
                    "annotations": {"natsflow.dev/config-hash": pod_hash},
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": c.as_str(),
                        "image": p.spec.image,
                        "command": [format!("/usr/local/bin/natsflow-{}", c.as_str())],
                        "envFrom": [{"configMapRef": {"name": config_name(p)}}],
                        "env": env,
                        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                        "livenessProbe": probe("/healthz", 10),
                        "readinessProbe": probe("/readyz", 5),
                        "resources": resources(p, c),
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

fn secret_env(name: &str, s: &SecretKeyRef) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": s.name, "key": s.key}}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::tests::{pipeline, MINIMAL};
    use k8s_openapi::api::apps::v1::Deployment;

    fn build(yaml: &str, c: Component) -> Deployment {
        let p = pipeline(yaml);
        let v = deployment(
            &p,
            c,
            &config::config_map(&p),
            &BTreeMap::from([("bot".into(), "7".into())]),
        );
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn mapper_replicas_follow_the_spec() {
        let d = build(&format!("{MINIMAL}mapperReplicas: 7\n"), Component::Mapper);
        assert_eq!(d.metadata.name.as_deref(), Some("users-mapper"));
        assert_eq!(d.spec.replicas, Some(7));
        let pod = d.spec.template.spec.unwrap();
        let ctr = &pod.containers[0];
        assert_eq!(
            ctr.command.as_ref().unwrap()[0],
            "/usr/local/bin/natsflow-mapper"
        );
        assert_eq!(
            ctr.env_from.as_ref().unwrap()[0]
                .config_map_ref
                .as_ref()
                .unwrap()
                .name,
            "users-config"
        );
    }

    #[test]
    fn fetcher_is_one_replica_recreated() {
        let d = build(&format!("{MINIMAL}mapperReplicas: 7\n"), Component::Fetcher);
        assert_eq!(d.spec.replicas, Some(1));
        assert_eq!(d.spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    }

    #[test]
    fn pods_are_locked_down_and_probed() {
        let d = build(MINIMAL, Component::Saver);
        let pod = d.spec.template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let ctr = &pod.containers[0];
        let sc = ctr.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        let res = ctr.resources.as_ref().unwrap();
        assert!(res.requests.as_ref().unwrap().contains_key("memory"));
        assert!(res.limits.as_ref().unwrap().contains_key("memory"));
        assert_eq!(
            ctr.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        assert_eq!(
            ctr.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
    }

    #[test]
    fn broadcaster_reads_its_secret_by_reference() {
        let yaml = format!("{MINIMAL}broadcaster: {{target: {{telegram: {{chatId: '42', tokenSecretRef: {{name: bot, key: token}}}}}}}}\n");
        let p = pipeline(&yaml);
        assert_eq!(components(&p).len(), 4);
        let d = build(&yaml, Component::Broadcaster);
        assert_eq!(d.spec.replicas, Some(6));
        let ctr = &d.spec.template.spec.unwrap().containers[0];
        let env = &ctr.env.as_ref().unwrap()[0];
        assert_eq!(env.name, "NATSFLOW_TARGET_SECRET");
        assert!(env.value.is_none());
        let r = env
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("bot", "token"));
    }

    #[test]
    fn a_new_secret_version_rolls_only_its_readers() {
        let yaml = format!("{MINIMAL}broadcaster: {{target: {{slack: {{webhookSecretRef: {{name: hook, key: url}}}}}}}}\n");
        let p = pipeline(&yaml);
        let hash = |c, v: &str| {
            let d = deployment(
                &p,
                c,
                &config::config_map(&p),
                &BTreeMap::from([("hook".into(), v.into())]),
            );
            d["spec"]["template"]["metadata"]["annotations"]["natsflow.dev/config-hash"].clone()
        };
        assert_ne!(
            hash(Component::Broadcaster, "1"),
            hash(Component::Broadcaster, "2")
        );
        assert_eq!(hash(Component::Mapper, "1"), hash(Component::Mapper, "2"));
    }

    #[test]
    fn nats_credentials_are_mounted_read_only() {
        let d = build("nats: {url: 'nats://n:4222', credentialsSecretRef: {name: nats-creds, key: user.creds}}\nimage: i\n", Component::Mapper);
        let pod = d.spec.template.spec.unwrap();
        let vol = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(
            vol.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("nats-creds")
        );
        let m = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.mount_path.as_str(), m.read_only),
            ("/etc/natsflow/nats", Some(true))
        );
    }

    #[test]
    fn file_sink_gets_a_writable_volume() {
        let d = build(
            &format!("{MINIMAL}saver: {{sink: file, path: /out}}\n"),
            Component::Saver,
        );
        let pod = d.spec.template.spec.unwrap();
        assert!(pod.volumes.as_ref().unwrap()[0].empty_dir.is_some());
        assert_eq!(
            pod.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path,
            "/out"
        );
    }
}
