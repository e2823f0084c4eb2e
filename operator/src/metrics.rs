//! The operator's Prometheus metrics: reconciles, failures by reason, and their duration.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub writes: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            writes: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("natsflow_operator");
        r.register(
            "reconciles",
            "Reconciles of Pipelines",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_failures",
            "Failed reconciles, by reason",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile takes",
            m.duration.clone(),
        );
        r.register(
            "writes",
            "Objects created, changed or deleted in the cluster",
            m.writes.clone(),
        );
        // Exported at 0 from the start, so dashboards and alerts see the series.
        for reason in ["Connection", "Forbidden", "NotFound", "Conflict", "Invalid"] {
            let _ = m.failures.get_or_create(&ErrorLabels {
                reason: reason.into(),
            });
        }
        m
    }
}
