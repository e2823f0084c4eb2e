//! How fast the operator decides what to write: building every child of 1,000 Pipelines and
//! comparing each with the object the cluster already has (an unchanged Pipeline: no write).
//! `cargo bench -p natsflow-operator` prints the figures; no cluster needed.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

/// Counts allocations, so the bench can print them per Pipeline.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

use natsflow_operator::{
    children,
    crd::{Pipeline, PipelineSpec},
};

fn pipelines(n: usize) -> Vec<Pipeline> {
    let spec: PipelineSpec = serde_yaml_ng::from_str(
        "nats: {url: 'nats://my-nats:4222', tokenSecretRef: {name: nats-token, key: token}}\nimage: natsflow/natsflow:0.1.0\nmapperReplicas: 10\nbroadcaster: {target: {telegram: {chatId: '1', tokenSecretRef: {name: bot, key: token}}}}\nmonitoring: {serviceMonitor: {labels: {release: kube-prometheus-stack}}}\n",
    )
    .unwrap();
    (0..n)
        .map(|i| {
            let mut p = Pipeline::new(&format!("pipeline-{i}"), spec.clone());
            p.metadata.namespace = Some(format!("team-{}", i % 20));
            p.metadata.uid = Some(format!("uid-{i}"));
            p
        })
        .collect()
}

fn main() {
    let ps = pipelines(1000);
    let versions = BTreeMap::from([
        ("nats-token".to_string(), "7".to_string()),
        ("bot".to_string(), "9".to_string()),
    ]);
    // What the cluster holds: the same children, with fields the API server adds.
    let observed: Vec<Vec<serde_json::Value>> = ps
        .iter()
        .map(|p| {
            children::desired(p, &versions, true)
                .into_iter()
                .map(|c| {
                    let mut o = c.object;
                    o["metadata"]["resourceVersion"] = "1".into();
                    o["status"] = serde_json::json!({"replicas": 10, "readyReplicas": 10});
                    o
                })
                .collect()
        })
        .collect();

    let rounds = 5;
    let mut best = f64::MAX;
    let mut allocations = u64::MAX;
    let mut children_per_pipeline = 0;
    for _ in 0..rounds {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut writes = 0;
        for (p, obs) in ps.iter().zip(&observed) {
            let desired = children::desired(p, &versions, true);
            children_per_pipeline = desired.len();
            for (d, o) in desired.iter().zip(obs) {
                writes += !children::contains(o, &d.object) as usize;
            }
        }
        assert_eq!(writes, 0, "an unchanged Pipeline needs no write");
        best = best.min(started.elapsed().as_secs_f64());
        allocations = allocations.min(ALLOCATIONS.load(Ordering::Relaxed) - before);
        black_box(writes);
    }
    println!("reconcile decision (build {children_per_pipeline} children + compare with the cluster's), 1000 Pipelines, best of {rounds}:");
    println!(
        "  {:.1} ms in all, {:.1} µs per Pipeline, {:.0} reconcile decisions/s",
        best * 1e3,
        best * 1e6 / 1000.0,
        1000.0 / best
    );
    println!(
        "  {:.0} allocations per Pipeline",
        allocations as f64 / 1000.0
    );
}
