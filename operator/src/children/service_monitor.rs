//! The Prometheus-operator ServiceMonitor for the metrics Service, created only when the
//! monitoring.coreos.com CRDs are installed.

use kube::{api::ApiResource, core::GroupVersionKind, ResourceExt};
use serde_json::{json, Value};

use super::metadata;
use crate::crd::Pipeline;

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// `None` when the Pipeline does not ask for one.
pub fn service_monitor(p: &Pipeline) -> Option<Value> {
    let sm = p
        .spec
        .monitoring
        .service_monitor
        .as_ref()
        .filter(|s| s.enabled)?;
    let mut meta = metadata(p, &p.name_any(), "metrics");
    for (k, v) in &sm.labels {
        meta["labels"][k] = json!(v);
    }
    Some(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {
                "app.kubernetes.io/name": "natsflow",
                "app.kubernetes.io/instance": p.name_any(),
                "app.kubernetes.io/component": "metrics",
            }},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": sm.interval}],
        },
    }))
}

pub fn nats_name(p: &Pipeline) -> String {
    format!("{}-nats", p.name_any())
}

/// The NATS exporter's ServiceMonitor; `None` when the Pipeline does not ask for one.
pub fn nats_service_monitor(p: &Pipeline) -> Option<Value> {
    let sm = p
        .spec
        .monitoring
        .nats_service_monitor
        .as_ref()
        .filter(|s| s.enabled)?;
    let mut meta = metadata(p, &nats_name(p), "nats-metrics");
    for (k, v) in &sm.labels {
        meta["labels"][k] = json!(v);
    }
    let ns = sm
        .namespace
        .clone()
        .or_else(|| p.namespace())
        .unwrap_or_default();
    Some(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": sm.selector},
            "namespaceSelector": {"matchNames": [ns]},
            "endpoints": [{"port": sm.port, "path": "/metrics", "interval": sm.interval}],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::tests::{pipeline, MINIMAL};

    #[test]
    fn carries_the_prometheus_selector_labels() {
        let p = pipeline(&format!("{MINIMAL}monitoring: {{serviceMonitor: {{labels: {{release: kube-prometheus-stack}}, interval: 10s}}}}\n"));
        let sm = service_monitor(&p).unwrap();
        assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
        assert_eq!(sm["spec"]["endpoints"][0]["interval"], "10s");
        assert_eq!(
            sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
            "metrics"
        );
    }

    #[test]
    fn nats_service_monitor_defaults_to_the_helm_chart() {
        let p = pipeline(&format!("{MINIMAL}monitoring: {{natsServiceMonitor: {{labels: {{release: kube-prometheus-stack}}}}}}\n"));
        let sm = nats_service_monitor(&p).unwrap();
        assert_eq!(sm["metadata"]["name"], "users-nats");
        assert_eq!(
            sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            "nats"
        );
        assert_eq!(sm["spec"]["namespaceSelector"]["matchNames"][0], "default");
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
        assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
        assert!(nats_service_monitor(&pipeline(MINIMAL)).is_none());
    }

    #[test]
    fn none_unless_asked() {
        assert!(service_monitor(&pipeline(MINIMAL)).is_none());
        let off = pipeline(&format!(
            "{MINIMAL}monitoring: {{serviceMonitor: {{enabled: false}}}}\n"
        ));
        assert!(service_monitor(&off).is_none());
    }
}
