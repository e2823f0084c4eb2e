//! Every metric the Grafana dashboard and the alert rules query is one that something really
//! exposes: the workers (scraped from real processes), the operator (its registry), or the
//! NATS exporter (its `nats_varz_*` gauges are the numeric fields of the server's /varz).
//! Run `cargo test -p natsflow-workers --test monitoring -- --nocapture` to see the list.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Sample names a text exposition declares (`# TYPE` lines), with their suffixes.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let (Some(name), Some(kind)) = (it.next(), it.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Metric names in a PromQL expression: identifiers starting with natsflow_ or nats_.
fn queried(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
        {
            i += 1;
        }
        if i > start {
            let word = &expr[start..i];
            let quoted = start > 0 && (bytes[start - 1] == b'"' || bytes[start - 1] == b'$');
            if !quoted && (word.starts_with("natsflow_") || word.starts_with("nats_")) {
                out.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
}

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("config/grafana/natsflow.json")).unwrap(),
    )
    .unwrap()
}

fn rules() -> Value {
    serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("config/prometheus/rules.yaml")).unwrap(),
    )
    .unwrap()
}

#[test]
fn the_dashboard_imports_into_grafana() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(d["uid"], "natsflow");
    let ids: Vec<u64> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "panel ids are unique"
    );
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    assert!(
        vars.iter().any(|v| v["name"] == "pipeline"),
        "a pipeline variable"
    );
    for p in d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
    {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} uses the variable",
            p["title"]
        );
        assert!(!p["targets"].as_array().unwrap().is_empty());
    }
}

#[test]
fn the_alert_rules_are_well_formed() {
    let r = rules();
    assert_eq!(r["kind"], "PrometheusRule");
    let mut alerts = 0;
    for g in r["spec"]["groups"].as_array().unwrap() {
        for rule in g["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().expect("alert name");
            assert!(
                !rule["expr"].as_str().unwrap().trim().is_empty(),
                "{name}: expr"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: summary"
            );
            assert!(
                rule["annotations"]["description"].is_string(),
                "{name}: description"
            );
            alerts += 1;
        }
    }
    assert!(alerts >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queried_metric_is_exposed() {
    // What the dashboard and the rules ask for.
    let mut wanted = BTreeSet::new();
    for p in dashboard()["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            queried(t["expr"].as_str().unwrap(), &mut wanted);
        }
    }
    for v in dashboard()["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            queried(q, &mut wanted);
        }
    }
    for g in rules()["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            queried(r["expr"].as_str().unwrap(), &mut wanted);
        }
    }

    // What real workers, the operator and the NATS server expose.
    let nats = Nats::start("monitoring");
    let dir = temp_dir("monitoring");
    let procs = [
        Proc::worker("fetcher", "fetcher", &nats, &dir)
            .args(&["--objects", "1000"])
            .start(),
        Proc::worker("mapper", "mapper", &nats, &dir).start(),
        Proc::worker("saver", "saver", &nats, &dir).start(),
        Proc::worker("broadcaster", "broadcaster", &nats, &dir)
            .env("NATSFLOW_TARGET", "generic")
            .env("NATSFLOW_TARGET_SECRET", "http://127.0.0.1:9/unused")
            .start(),
    ];
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    for p in &procs {
        wait_until(
            std::time::Duration::from_secs(10),
            &format!("{} serves /metrics", p.name),
            || http_get(p.metrics_port, "/readyz").starts_with("ready"),
        );
        for name in exposed(&http_get(p.metrics_port, "/metrics")) {
            sources
                .entry(name)
                .or_insert_with(|| format!("natsflow-{} /metrics", p.name));
        }
    }
    let mut registry = prometheus_client::registry::Registry::default();
    natsflow_operator::metrics::Metrics::new(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for name in exposed(&text) {
        sources
            .entry(name)
            .or_insert_with(|| "natsflow-operator /metrics".into());
    }
    let varz: Value = serde_json::from_str(&http_get(nats.monitor_port, "/varz")).unwrap();
    for (k, v) in varz.as_object().unwrap() {
        if v.is_number() {
            sources.insert(
                format!("nats_varz_{k}"),
                "prometheus-nats-exporter -varz (nats-server /varz)".into(),
            );
        }
    }

    let mut missing = Vec::new();
    for name in &wanted {
        match sources.get(name) {
            Some(from) => println!("{name:<50} <- {from}"),
            None => {
                println!("{name:<50} <- MISSING");
                missing.push(name.clone());
            }
        }
    }
    println!(
        "{} queried metrics, {} missing",
        wanted.len(),
        missing.len()
    );
    assert!(
        wanted.len() >= 20,
        "the dashboard and rules query the pipeline and NATS"
    );
    assert!(
        missing.is_empty(),
        "queried but exposed by nothing: {missing:?}"
    );
}
