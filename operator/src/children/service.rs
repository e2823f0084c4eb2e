//! The metrics Service: selects every worker pod of the Pipeline on its `metrics` port, for
//! Prometheus (through the ServiceMonitor) and for a quick `kubectl port-forward`.

use serde_json::{json, Value};

use super::{metadata, service_name, METRICS_PORT};
use crate::crd::Pipeline;
use kube::ResourceExt;

pub fn service(p: &Pipeline) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(p, &service_name(p), "metrics"),
        "spec": {
            // Headless: Prometheus scrapes each pod, not a load-balanced one.
            "clusterIP": "None",
            "selector": {
                "app.kubernetes.io/name": "natsflow",
                "app.kubernetes.io/instance": p.name_any(),
            },
            "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::tests::{pipeline, MINIMAL};

    #[test]
    fn selects_all_workers_of_the_pipeline_on_the_metrics_port() {
        let s: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(service(&pipeline(MINIMAL))).unwrap();
        let spec = s.spec.unwrap();
        assert_eq!(
            spec.selector.unwrap()["app.kubernetes.io/instance"],
            "users"
        );
        assert_eq!(spec.ports.unwrap()[0].name.as_deref(), Some("metrics"));
        assert_eq!(
            s.metadata.labels.unwrap()["app.kubernetes.io/component"],
            "metrics"
        );
    }
}
