//! What the operator renders for a Pipeline (ConfigMap keys and the pod env it sets from
//! Secrets) is exactly what the worker binaries read. This test owns its process: it sets
//! the environment the pods would have and parses each worker's real command line.

use std::{collections::BTreeSet, time::Duration};

use clap::{CommandFactory, Parser};
use natsflow::{
    cli::{BroadcasterCli, FetcherCli, MapperCli, SaverCli},
    config::{LogFormat, SinkKind, TargetKind, TransformKind},
};
use natsflow_operator::{
    children::{self, config::worker_env, Component},
    crd::Pipeline,
};
use serde::Deserialize;

fn full_example() -> Pipeline {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipeline-full.yaml"
    ))
    .unwrap();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        if v["kind"] == "Pipeline" {
            let mut p: Pipeline = serde_json::from_value(v).unwrap();
            p.metadata.namespace = Some("shop".into());
            p.metadata.uid = Some("u".into());
            return p;
        }
    }
    panic!("no Pipeline in examples/pipeline-full.yaml");
}

fn env_names<C: CommandFactory>() -> BTreeSet<String> {
    C::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn workers_read_what_the_operator_renders() {
    let p = full_example();
    let env = worker_env(&p);
    let cm = children::config::config_map(&p);

    // Every rendered key is read by some worker.
    let known: BTreeSet<String> = [
        env_names::<FetcherCli>(),
        env_names::<MapperCli>(),
        env_names::<SaverCli>(),
        env_names::<BroadcasterCli>(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for key in cm.data.as_ref().unwrap().keys() {
        assert!(
            known.contains(key),
            "the operator renders {key}, which no worker reads"
        );
    }
    // And so is every variable the Deployments set from Secrets, with each binary's path.
    for c in [
        Component::Fetcher,
        Component::Mapper,
        Component::Saver,
        Component::Broadcaster,
    ] {
        let d = children::deployment::deployment(&p, c, &cm, &Default::default());
        let ctr = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            ctr["command"][0],
            format!("/usr/local/bin/natsflow-{}", c.as_str())
        );
        for e in ctr["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(
                known.contains(name),
                "the {} Deployment sets {name}, which no worker reads",
                c.as_str()
            );
            std::env::set_var(name, "from-a-secret");
        }
    }

    // The pods' environment, then each worker's real parser.
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    let f = FetcherCli::try_parse_from(["natsflow-fetcher"]).unwrap();
    assert_eq!(f.common.nats.nats_url, "nats://my-nats:4222");
    assert_eq!(f.common.nats.nats_token.as_deref(), Some("from-a-secret"));
    assert_eq!(f.common.subject_prefix, "users");
    assert_eq!(f.common.metrics_addr.port(), 9090);
    assert_eq!(f.common.log_format, LogFormat::Json);
    assert_eq!(
        (f.fetcher.objects, f.fetcher.seed, f.fetcher.chunk_size),
        (100_000, 1, 100)
    );
    assert_eq!(f.fetcher.ack_timeout, Duration::from_secs(30));
    assert_eq!(f.fetcher.run_id(), "shop-users-full-u-g1-o100000-c100");

    let m = MapperCli::try_parse_from(["natsflow-mapper"]).unwrap();
    assert_eq!(m.mapper.transform, TransformKind::Fullname);
    assert_eq!(
        (
            m.mapper.work_ms_min,
            m.mapper.work_ms_max,
            m.mapper.concurrency
        ),
        (0, 10_000, 1)
    );

    let s = SaverCli::try_parse_from(["natsflow-saver"]).unwrap();
    assert_eq!(s.saver.sink, SinkKind::File);
    assert_eq!(s.saver.sink_dir.to_str(), Some("/data"));

    let b = BroadcasterCli::try_parse_from(["natsflow-broadcaster"]).unwrap();
    assert_eq!(b.broadcaster.target, TargetKind::Telegram);
    assert_eq!(
        b.broadcaster.telegram_chat_id.as_deref(),
        Some("-1001234567890")
    );
    assert_eq!(b.broadcaster.subject, "todos.events");
    assert_eq!(
        b.broadcaster.target_secret.as_deref(),
        Some("from-a-secret")
    );
}
