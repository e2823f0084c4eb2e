//! Wire compatibility with the seed's app9 Node services, and bad input handling. The test
//! plays the app9 side with a plain NATS client, publishing exactly what app9's
//! fetcher/mapper/saver publish (JSON strings and bare text, no headers).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within 10 s")
        .expect("subscription open")
}

fn app9_people(index: u64) -> Value {
    json!({"index": index, "data": [
        {"uuid": "0b6a3c3e-6d4b-4a43-9e7c-1f1d3b0b2f10", "fn": "Maria", "ln": "Virtanen", "friends": ["5c3f"]},
        {"uuid": "5c3f1d0e-8b6a-4f5e-9d1c-2e3f4a5b6c7d", "fn": "Juha", "ln": "Korhonen", "friends": []}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapper_answers_an_app9_fetcher() {
    let nats = Nats::start("app9-fetcher");
    let dir = temp_dir("app9-fetcher");
    let _mapper = Proc::worker("mapper", "mapper", &nats, &dir).start();
    let c = nats.client().await;
    let mut status = c.subscribe("mapper_status").await.unwrap();
    let mut saver_data = c
        .queue_subscribe("saver_data", "saver.workers".into())
        .await
        .unwrap();
    // app9's fetcher: ask, wait for `im_listening`, then send one chunk as a JSON string.
    loop {
        c.publish("mapper_status", "anyone_listening".into())
            .await
            .unwrap();
        let m = tokio::time::timeout(Duration::from_millis(300), status.next()).await;
        if matches!(m, Ok(Some(ref m)) if m.payload.as_ref() == b"im_listening") {
            break;
        }
    }
    c.publish("mapper_data", app9_people(827).to_string().into())
        .await
        .unwrap();
    let out: Value = serde_json::from_slice(&next(&mut saver_data).await.payload).unwrap();
    // What app9's saver reads: {index, data} with app9 mapper's {id, name}.
    assert_eq!(
        out,
        json!({"index": 827, "data": [
            {"id": "0b6a3c3e-6d4b-4a43-9e7c-1f1d3b0b2f10", "name": "Maria Virtanen"},
            {"id": "5c3f1d0e-8b6a-4f5e-9d1c-2e3f4a5b6c7d", "name": "Juha Korhonen"}
        ]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saver_acknowledges_an_app9_mapper() {
    let nats = Nats::start("app9-mapper");
    let dir = temp_dir("app9-mapper");
    let saver = Proc::worker("saver", "saver", &nats, &dir).start();
    let c = nats.client().await;
    let mut processed = c.subscribe("processed_data").await.unwrap();
    wait_until(WAIT, "the saver is ready", || {
        http_get(saver.metrics_port, "/readyz").starts_with("ready")
    });
    let payload = json!({"index": 12, "data": [{"id": "a", "name": "Maria Virtanen"}]}).to_string();
    c.publish("saver_data", payload.into()).await.unwrap();
    // app9's fetcher reads `Number(msg)`: the bare decimal index.
    assert_eq!(next(&mut processed).await.payload.as_ref(), b"12");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetcher_serves_app9_mappers_and_saver() {
    let nats = Nats::start("app9-workers");
    let dir = temp_dir("app9-workers");
    let c = nats.client().await;
    // app9's mapper and saver, played by this test: no headers, plain text and JSON strings.
    let mut status = c.subscribe("mapper_status").await.unwrap();
    let mut data = c
        .queue_subscribe("mapper_data", "mapper.workers".into())
        .await
        .unwrap();
    let mut f = Proc::worker("fetcher", "fetcher", &nats, &dir)
        .args(&[
            "--objects",
            "500",
            "--chunk-size",
            "100",
            "--exit-when-done",
            "--no-resume",
        ])
        .start();
    // The fetcher asks first; app9's mapper answers `im_listening`.
    assert_eq!(
        next(&mut status).await.payload.as_ref(),
        b"anyone_listening"
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        c.publish("mapper_status", "im_listening".into())
            .await
            .unwrap();
        let chunk: Value = serde_json::from_slice(&next(&mut data).await.payload).unwrap();
        let index = chunk["index"].as_u64().unwrap();
        assert_eq!(chunk["data"].as_array().unwrap().len(), 100);
        assert!(chunk["data"][0]["uuid"].is_string() && chunk["data"][0]["friends"].is_array());
        seen.push(index);
        c.publish("processed_data", index.to_string().into())
            .await
            .unwrap();
    }
    c.flush().await.unwrap();
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    assert!(f.wait(WAIT).success(), "{}", f.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_and_counted() {
    let nats = Nats::start("malformed");
    let dir = temp_dir("malformed");
    let mut mapper = Proc::worker("mapper", "mapper", &nats, &dir).start();
    let mut saver = Proc::worker("saver", "saver", &nats, &dir).start();
    let c = nats.client().await;
    let mut dead = c.subscribe("natsflow_dead_letter").await.unwrap();
    let mut saver_data = c.subscribe("saver_data").await.unwrap();
    let mut processed = c.subscribe("processed_data").await.unwrap();
    let mut status = c.subscribe("mapper_status").await.unwrap();
    wait_until(WAIT, "the saver is ready", || {
        http_get(saver.metrics_port, "/readyz").starts_with("ready")
    });

    // A mapper slot takes one message once it says `im_listening`; send one at a time.
    to_mapper(&c, &mut status, "this is not json").await;
    let d = next(&mut dead).await;
    let h = d.headers.clone().unwrap();
    assert_eq!(d.payload.as_ref(), b"this is not json");
    assert!(h
        .get("Natsflow-Reason")
        .unwrap()
        .as_str()
        .contains("not a chunk"));
    assert_eq!(h.get("Natsflow-Subject").unwrap().as_str(), "mapper_data");

    to_mapper(
        &c,
        &mut status,
        r#"{"index": 5, "data": [{"uuid": "a", "fn": "A", "ln": "B"}, {"uuid": "b", "fn": 7}]}"#,
    )
    .await;
    let d = next(&mut dead).await;
    assert_eq!(d.payload.as_ref(), br#"{"uuid": "b", "fn": 7}"#);
    assert!(d
        .headers
        .unwrap()
        .get("Natsflow-Reason")
        .unwrap()
        .as_str()
        .contains("chunk #5 object 1"));
    let out: Value = serde_json::from_slice(&next(&mut saver_data).await.payload).unwrap();
    assert_eq!(
        out,
        json!({"index": 5, "data": [{"id": "a", "name": "A B"}]})
    );
    assert_eq!(next(&mut processed).await.payload.as_ref(), b"5");

    c.publish("saver_data", "[1, 2".into()).await.unwrap();
    let d = next(&mut dead).await;
    assert_eq!(
        d.headers.unwrap().get("Natsflow-Subject").unwrap().as_str(),
        "saver_data"
    );

    assert!(
        mapper.is_running() && saver.is_running(),
        "bad input never stops a worker"
    );
    assert_eq!(mapper.metric("natsflow_dead_letters_total"), 2.0);
    assert_eq!(saver.metric("natsflow_dead_letters_total"), 1.0);
    // Both still work.
    c.publish("saver_data", r#"{"index": 6, "data": []}"#.into())
        .await
        .unwrap();
    loop {
        let m = next(&mut processed).await;
        if m.payload.as_ref() == b"6" {
            break;
        }
    }
}

async fn to_mapper(
    c: &async_nats::Client,
    status: &mut async_nats::Subscriber,
    payload: &'static str,
) {
    c.publish("mapper_status", "anyone_listening".into())
        .await
        .unwrap();
    while next(status).await.payload.as_ref() != b"im_listening" {}
    c.publish("mapper_data", payload.into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_maps_over_max_payload_is_set_aside_and_the_mapper_goes_on() {
    let dir = temp_dir("max-payload");
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, "max_payload: 8192\n").unwrap();
    let nats = Nats::start_with("max-payload", &["-c", conf.to_str().unwrap()]);
    let mapper = Proc::worker("mapper", "mapper", &nats, &dir)
        .env("NATSFLOW_TRANSFORM", "jq")
        .env("NATSFLOW_JQ", "[., ., ., ., ., ., ., .]")
        .start();
    let c = nats.client().await;
    let mut status = c.subscribe("mapper_status").await.unwrap();
    let mut saver_data = c.subscribe("saver_data").await.unwrap();
    let mut dead = c.subscribe("natsflow_dead_letter").await.unwrap();
    let person =
        r#"{"uuid": "0b6a3c3e-6d4b-4a43-9e7c-1f1d3b0b2f10", "fn": "Maria", "ln": "Virtanen"}"#;
    let big: &'static str = Box::leak(
        format!(
            "{{\"index\": 1, \"data\": [{}]}}",
            vec![person; 60].join(",")
        )
        .into_boxed_str(),
    );
    assert!(big.len() < 8192 && big.len() * 8 > 8192);
    to_mapper(&c, &mut status, big).await;
    let d = next(&mut dead).await;
    assert!(d.payload.as_ref() == big.as_bytes(), "the chunk as it came");
    let reason = d
        .headers
        .unwrap()
        .get("Natsflow-Reason")
        .unwrap()
        .to_string();
    assert!(
        reason.contains("over the server's max_payload of 8192"),
        "{reason}"
    );

    // Malformed and near the limit: set aside cut to fit, with its size in a header.
    to_mapper(
        &c,
        &mut status,
        Box::leak("x".repeat(8000).into_boxed_str()),
    )
    .await;
    let d = next(&mut dead).await;
    assert_eq!(d.payload.len(), 8192 - 1024);
    let h = d.headers.unwrap();
    assert_eq!(h.get("Natsflow-Truncated").unwrap().as_str(), "8000");

    to_mapper(&c, &mut status, r#"{"index": 2, "data": [{"uuid": "a"}]}"#).await;
    let out: Value = serde_json::from_slice(&next(&mut saver_data).await.payload).unwrap();
    assert_eq!(out["index"], 2, "the mapper goes on: {}", mapper.log_text());
    assert_eq!(mapper.metric("natsflow_dead_letters_total"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jq_transform_maps_with_the_expression() {
    let nats = Nats::start("jq");
    let dir = temp_dir("jq");
    let _mapper = Proc::worker("mapper", "mapper", &nats, &dir)
        .env("NATSFLOW_TRANSFORM", "jq")
        .env(
            "NATSFLOW_JQ",
            r#"{id: .uuid, initials: "\(.fn[0:1])\(.ln[0:1])"}"#,
        )
        .start();
    let c = nats.client().await;
    let mut status = c.subscribe("mapper_status").await.unwrap();
    let mut saver_data = c.subscribe("saver_data").await.unwrap();
    to_mapper(
        &c,
        &mut status,
        r#"{"index": 3, "data": [{"uuid": "a", "fn": "Maria", "ln": "Virtanen"}]}"#,
    )
    .await;
    let out: Value = serde_json::from_slice(&next(&mut saver_data).await.payload).unwrap();
    assert_eq!(
        out,
        json!({"index": 3, "data": [{"id": "a", "initials": "MV"}]})
    );
}

#[test]
fn an_invalid_jq_expression_stops_the_mapper_with_the_reason() {
    let nats = Nats::start("jq-bad");
    let dir = temp_dir("jq-bad");
    let mut mapper = Proc::worker("mapper", "mapper", &nats, &dir)
        .env("NATSFLOW_TRANSFORM", "jq")
        .env("NATSFLOW_JQ", "{id: .uuid")
        .start();
    assert!(!mapper.wait(WAIT).success());
    assert!(
        mapper
            .log_text()
            .contains("jq expression `{id: .uuid` does not parse"),
        "{}",
        mapper.log_text()
    );
}

/// Counts `im_listening` until the line is quiet for 500 ms.
async fn count_listening(status: &mut async_nats::Subscriber) -> usize {
    let mut n = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), status.next()).await {
        n += usize::from(m.payload.as_ref() == b"im_listening");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapper_answers_anyone_listening_once_per_free_slot() {
    let nats = Nats::start("free-slots");
    let dir = temp_dir("free-slots");
    let c = nats.client().await;
    let mut status = c.subscribe("mapper_status").await.unwrap();
    c.flush().await.unwrap();
    let _mapper = Proc::worker("mapper", "mapper", &nats, &dir)
        .env("NATSFLOW_CONCURRENCY", "2")
        .env("NATSFLOW_WORK_MS_MIN", "3000")
        .env("NATSFLOW_WORK_MS_MAX", "3000")
        .start();
    assert_eq!(
        count_listening(&mut status).await,
        2,
        "one per slot at start"
    );
    c.publish("mapper_status", "anyone_listening".into())
        .await
        .unwrap();
    assert_eq!(count_listening(&mut status).await, 2, "both slots free");

    c.publish("mapper_data", app9_people(1).to_string().into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.publish("mapper_status", "anyone_listening".into())
        .await
        .unwrap();
    assert_eq!(
        count_listening(&mut status).await,
        1,
        "the busy slot must not say it is listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetcher_counts_acks_of_its_own_run_and_of_app9_savers_only() {
    let nats = Nats::start("ack-runs");
    let dir = temp_dir("ack-runs");
    let mut fetcher = Proc::worker("fetcher", "fetcher", &nats, &dir)
        .args(&["--objects", "300", "--run-id", "mine", "--exit-when-done"])
        .start();
    wait_until(WAIT, "fetcher up", || {
        http_get(fetcher.metrics_port, "/readyz").starts_with("ready")
    });
    let c = nats.client().await;
    let ack = |run: Option<&str>, i: u64| {
        let c = c.clone();
        let run = run.map(str::to_string);
        async move {
            let mut h = async_nats::HeaderMap::new();
            if let Some(r) = run {
                h.insert("Natsflow-Run", r.as_str());
            }
            c.publish_with_headers("processed_data", h, i.to_string().into())
                .await
                .unwrap();
            c.flush().await.unwrap();
        }
    };
    // A saver of an earlier run acknowledging its chunk #0 says nothing about this run's.
    for i in 0..3 {
        ack(Some("earlier"), i).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fetcher.metric("natsflow_chunks_done"), 0.0);
    ack(Some("mine"), 0).await;
    ack(None, 1).await;
    ack(None, 2).await;
    assert!(
        fetcher.wait(WAIT).success(),
        "done once its own and app9's acks came: {}",
        fetcher.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_sent_to_no_mapper_goes_with_the_next_readiness_signal() {
    let nats = Nats::start("no-mapper");
    let dir = temp_dir("no-mapper");
    let fetcher = Proc::worker("fetcher", "fetcher", &nats, &dir)
        .args(&["--objects", "300", "--ack-timeout", "60s"])
        .start();
    wait_until(WAIT, "fetcher up", || {
        http_get(fetcher.metrics_port, "/readyz").starts_with("ready")
    });
    let c = nats.client().await;
    // A stale readiness signal: nobody takes the chunk it brings.
    c.publish("mapper_status", "im_listening".into())
        .await
        .unwrap();
    c.flush().await.unwrap();
    wait_until(
        WAIT,
        "the server to say the first send reached no one",
        || fetcher.metric("natsflow_chunks_unreached_total") == 1.0,
    );
    assert_eq!(fetcher.metric("natsflow_chunks_sent_total"), 1.0);
    let mut data = c
        .queue_subscribe("mapper_data", "mapper.workers".into())
        .await
        .unwrap();
    c.flush().await.unwrap();
    c.publish("mapper_status", "im_listening".into())
        .await
        .unwrap();
    let m = next(&mut data).await;
    let chunk: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(
        chunk["index"], 0,
        "chunk #0 again, not chunk #1 while #0 waits out its 60 s lease"
    );
}
