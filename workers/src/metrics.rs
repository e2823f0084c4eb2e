//! The workers' Prometheus metrics. Every worker kind registers the same set, so one
//! dashboard query covers them all; a counter a kind never touches stays at zero.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub chunks_received: Counter,
    pub chunks_processed: Counter,
    pub chunks_saved: Counter,
    pub chunks_sent: Counter,
    pub chunks_resent: Counter,
    pub chunks_unreached: Counter,
    pub duplicates_dropped: Counter,
    pub dead_letters: Counter,
    pub processing_seconds: Histogram,
    pub nats_reconnects: Counter,
    pub chunks_total: Gauge,
    pub chunks_done: Gauge,
    pub broadcast_sent: Family<TargetLabel, Counter>,
    pub broadcast_failed: Family<TargetLabel, Counter>,
    pub broadcast_retried: Family<TargetLabel, Counter>,
    pub broadcast_possibly_lost: Family<TargetLabel, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            chunks_received: Counter::default(),
            chunks_processed: Counter::default(),
            chunks_saved: Counter::default(),
            chunks_sent: Counter::default(),
            chunks_resent: Counter::default(),
            chunks_unreached: Counter::default(),
            duplicates_dropped: Counter::default(),
            dead_letters: Counter::default(),
            // 100 µs .. ~13 s
            processing_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            nats_reconnects: Counter::default(),
            chunks_total: Gauge::default(),
            chunks_done: Gauge::default(),
            broadcast_sent: Family::default(),
            broadcast_failed: Family::default(),
            broadcast_retried: Family::default(),
            broadcast_possibly_lost: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("natsflow");
        r.register(
            "chunks_received",
            "Chunks received from NATS",
            m.chunks_received.clone(),
        );
        r.register(
            "chunks_processed",
            "Chunks a mapper transformed and passed on",
            m.chunks_processed.clone(),
        );
        r.register(
            "chunks_saved",
            "Chunks a saver stored (first save of each index)",
            m.chunks_saved.clone(),
        );
        r.register(
            "chunks_sent",
            "Chunk sends by the fetcher, re-sends included",
            m.chunks_sent.clone(),
        );
        r.register(
            "chunks_resent",
            "Chunks the fetcher sent again after their ack timeout",
            m.chunks_resent.clone(),
        );
        r.register(
            "chunks_unreached",
            "Chunk sends that reached no mapper (a stale readiness signal); sent again at once",
            m.chunks_unreached.clone(),
        );
        r.register(
            "duplicates_dropped",
            "Chunks or acks that arrived again and were not processed twice",
            m.duplicates_dropped.clone(),
        );
        r.register(
            "dead_letters",
            "Messages or objects set aside on the dead-letter subject",
            m.dead_letters.clone(),
        );
        r.register(
            "processing_seconds",
            "Time to process one chunk",
            m.processing_seconds.clone(),
        );
        r.register(
            "nats_reconnects",
            "Reconnections to NATS after a lost connection",
            m.nats_reconnects.clone(),
        );
        r.register(
            "chunks",
            "Chunks in the data set (fetcher)",
            m.chunks_total.clone(),
        );
        r.register(
            "chunks_done",
            "Chunks saved and acknowledged (fetcher)",
            m.chunks_done.clone(),
        );
        r.register(
            "broadcast_sent",
            "Events the target accepted",
            m.broadcast_sent.clone(),
        );
        r.register(
            "broadcast_failed",
            "Events the target refused or that ran out of retries",
            m.broadcast_failed.clone(),
        );
        r.register(
            "broadcast_retried",
            "Sends tried again after the target clearly did not take them",
            m.broadcast_retried.clone(),
        );
        r.register(
            "broadcast_possibly_lost",
            "Sends with an unknown outcome (e.g. a timeout after sending), never retried",
            m.broadcast_possibly_lost.clone(),
        );
        m
    }
}
