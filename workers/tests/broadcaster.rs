//! The broadcaster against a real nats-server and a local HTTP server that records what
//! arrives, standing in for Telegram, Slack, Discord or a generic webhook.

mod common;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::IntoResponse,
    Router,
};
use common::*;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
struct Received {
    path: String,
    content_type: String,
    body: Value,
}

/// A scripted answer: status, headers, body.
type Answer = (u16, Vec<(&'static str, &'static str)>, &'static str);

#[derive(Default)]
struct Inbox {
    received: Vec<Received>,
    /// Answers to give before the default 200, in order: (status, headers, body).
    script: VecDeque<Answer>,
    /// Held before answering the next request only.
    delay_next: Option<Duration>,
}

type Shared = Arc<Mutex<Inbox>>;

async fn record(
    State(inbox): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let (answer, delay) = {
        let mut i = inbox.lock().unwrap();
        i.received.push(Received {
            path: uri.path().to_string(),
            content_type: headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        (
            i.script
                .pop_front()
                .unwrap_or((200, vec![], r#"{"ok":true}"#)),
            i.delay_next.take(),
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let (status, hdrs, text) = answer;
    let mut resp = (StatusCode::from_u16(status).unwrap(), text).into_response();
    for (k, v) in hdrs {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

/// A receiver on a free loopback port, served from its own thread.
fn receiver() -> (String, Shared) {
    let inbox: Shared = Arc::default();
    let app = Router::new().fallback(record).with_state(inbox.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (url, inbox)
}

fn broadcaster(nats: &Nats, dir: &std::path::Path, name: &str, target: &str, secret: &str) -> Proc {
    Proc::worker("broadcaster", name, nats, dir)
        .env("NATSFLOW_TARGET", target)
        .env("NATSFLOW_TARGET_SECRET", secret)
        .env("NATSFLOW_TELEGRAM_CHAT_ID", "-100123")
        .env("NATSFLOW_TIMEOUT", "2s")
}

fn wait_ready(p: &Proc) {
    wait_until(
        Duration::from_secs(10),
        &format!("{} is ready", p.name),
        || http_get(p.metrics_port, "/readyz").starts_with("ready"),
    );
}

fn event(n: usize) -> String {
    json!({"id": format!("e{n}"), "event": "created", "todo": {"id": n, "text": format!("todo {n}")}}).to_string()
}

async fn publish(nats: &Nats, events: impl IntoIterator<Item = String>) {
    let c = nats.client().await;
    for e in events {
        c.publish("todos.events", e.into()).await.unwrap();
    }
    c.flush().await.unwrap();
}

fn received(inbox: &Shared) -> Vec<Received> {
    inbox.lock().unwrap().received.clone()
}

fn wait_received(inbox: &Shared, n: usize, timeout: Duration) -> Vec<Received> {
    let deadline = Instant::now() + timeout;
    while received(inbox).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    received(inbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_gets_its_documented_request() {
    let nats = Nats::start("bc-targets");
    let dir = temp_dir("bc-targets");
    let (url, inbox) = receiver();
    let cases = [
        (
            "telegram",
            "123456:AAtoken",
            "/bot123456:AAtoken/sendMessage",
            json!({"chat_id": "-100123", "text": "A todo was created: todo 7"}),
        ),
        (
            "slack",
            &format!("{url}/services/T0/B0/slack") as &str,
            "/services/T0/B0/slack",
            json!({"text": "A todo was created: todo 7"}),
        ),
        (
            "discord",
            &format!("{url}/api/webhooks/1/discord"),
            "/api/webhooks/1/discord",
            json!({"content": "A todo was created: todo 7"}),
        ),
        (
            "generic",
            &format!("{url}/hook"),
            "/hook",
            json!({"user": "bot", "message": "A todo was created: todo 7"}),
        ),
    ];
    for (target, secret, path, body) in cases {
        let b = broadcaster(&nats, &dir, target, target, secret)
            .env("NATSFLOW_TELEGRAM_API_URL", &url)
            .start();
        wait_ready(&b);
        let before = received(&inbox).len();
        publish(&nats, [event(7)]).await;
        let got = wait_received(&inbox, before + 1, Duration::from_secs(5));
        let r = got
            .last()
            .unwrap_or_else(|| panic!("{target}: nothing arrived\n{}", b.log_text()));
        assert_eq!(r.path, path, "{target}");
        assert_eq!(r.content_type, "application/json", "{target}");
        assert_eq!(r.body, body, "{target}");
        assert_eq!(
            b.metric(&format!(
                "natsflow_broadcast_sent_total{{target=\"{target}\"}}"
            )),
            1.0
        );
    }
}

fn duplicates(got: &[Received]) -> usize {
    let mut seen = HashMap::new();
    for r in got {
        *seen
            .entry(r.body["message"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    seen.values().filter(|&&n| n > 1).map(|n| n - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_replicas_deliver_1000_events_each_once() {
    let nats = Nats::start("bc-six");
    let dir = temp_dir("bc-six");
    let (url, inbox) = receiver();
    let procs: Vec<Proc> = (0..6)
        .map(|i| {
            broadcaster(
                &nats,
                &dir,
                &format!("broadcaster-{i}"),
                "generic",
                &format!("{url}/hook"),
            )
            .start()
        })
        .collect();
    procs.iter().for_each(wait_ready);
    let started = Instant::now();
    publish(&nats, (0..1000).map(event)).await;
    let got = wait_received(&inbox, 1000, Duration::from_secs(30));
    let secs = started.elapsed().as_secs_f64();
    let dups = duplicates(&got);
    println!(
        "6 replicas: events published 1000, delivered {}, duplicates {dups}, lost {}, {:.0} events/s",
        got.len(),
        1000 - got.len().min(1000),
        got.len() as f64 / secs
    );
    assert_eq!(dups, 0);
    assert_eq!(got.len(), 1000);
    let per_replica: Vec<f64> = procs
        .iter()
        .map(|p| p.metric("natsflow_broadcast_sent_total{target=\"generic\"}"))
        .collect();
    assert_eq!(per_replica.iter().sum::<f64>(), 1000.0);
    assert!(
        per_replica.iter().filter(|&&n| n > 0.0).count() >= 2,
        "work is shared: {per_replica:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_six_killed_mid_run_still_no_duplicate() {
    let nats = Nats::start("bc-kill");
    let dir = temp_dir("bc-kill");
    let (url, inbox) = receiver();
    let mut procs: Vec<Proc> = (0..6)
        .map(|i| {
            broadcaster(
                &nats,
                &dir,
                &format!("broadcaster-{i}"),
                "generic",
                &format!("{url}/hook"),
            )
            .start()
        })
        .collect();
    procs.iter().for_each(wait_ready);
    let c = nats.client().await;
    for n in 0..1000 {
        c.publish("todos.events", event(n).into()).await.unwrap();
        if n == 400 {
            c.flush().await.unwrap();
            procs[1].sigkill();
            procs[4].sigkill();
        }
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    c.flush().await.unwrap();
    // Let the survivors finish what they have.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = received(&inbox).len();
        if n == last {
            break;
        }
        last = n;
    }
    let got = received(&inbox);
    let dups = duplicates(&got);
    println!(
        "2 of 6 killed: events published 1000, delivered {}, duplicates {dups}, lost {} (core NATS: events held by a killed replica are lost)",
        got.len(),
        1000 - got.len()
    );
    assert_eq!(dups, 0);
    assert!(
        got.len() >= 600,
        "the survivors kept forwarding: {}",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_429_and_500_then_sends_once() {
    let nats = Nats::start("bc-retry");
    let dir = temp_dir("bc-retry");
    let (url, inbox) = receiver();
    inbox.lock().unwrap().script.extend([
        (429, vec![("retry-after", "1")], "slow down"),
        (500, vec![], "oops"),
        (
            429,
            vec![],
            r#"{"ok":false,"error_code":429,"parameters":{"retry_after":1}}"#,
        ),
    ]);
    let b = broadcaster(
        &nats,
        &dir,
        "broadcaster",
        "generic",
        &format!("{url}/hook"),
    )
    .start();
    wait_ready(&b);
    let started = Instant::now();
    publish(&nats, [event(1)]).await;
    let got = wait_received(&inbox, 4, Duration::from_secs(15));
    assert_eq!(got.len(), 4, "three refusals, then the one accepted send");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After and retry_after were honoured"
    );
    wait_until(Duration::from_secs(5), "the send is counted", || {
        b.metric("natsflow_broadcast_sent_total{target=\"generic\"}") == 1.0
    });
    assert_eq!(
        b.metric("natsflow_broadcast_retried_total{target=\"generic\"}"),
        3.0
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(received(&inbox).len(), 4, "nothing sent after the success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_not_retried_and_a_timeout_is_possibly_lost() {
    let nats = Nats::start("bc-fail");
    let dir = temp_dir("bc-fail");
    let (url, inbox) = receiver();
    inbox
        .lock()
        .unwrap()
        .script
        .push_back((400, vec![], "bad request"));
    let b = broadcaster(
        &nats,
        &dir,
        "broadcaster",
        "generic",
        &format!("{url}/hook"),
    )
    .start();
    wait_ready(&b);
    publish(&nats, [event(1)]).await;
    wait_until(Duration::from_secs(5), "the refusal is counted", || {
        b.metric("natsflow_broadcast_failed_total{target=\"generic\"}") == 1.0
    });
    assert_eq!(received(&inbox).len(), 1);

    // A server that takes the request and never answers: unknown outcome, not sent again.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in silent.incoming() {
            h.lock().unwrap().push(s.unwrap());
        }
    });
    let b2 = broadcaster(&nats, &dir, "broadcaster-2", "generic", &silent_url)
        .env("NATSFLOW_TIMEOUT", "500ms")
        .start();
    drop(b);
    wait_ready(&b2);
    publish(&nats, [event(2)]).await;
    wait_until(Duration::from_secs(5), "the timeout is counted", || {
        std::panic::catch_unwind(|| {
            b2.metric("natsflow_broadcast_possibly_lost_total{target=\"generic\"}")
        })
        .unwrap_or(0.0)
            == 1.0
    });
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "one connection: no blind retry"
    );
    assert_eq!(
        b2.metric("natsflow_broadcast_retried_total{target=\"generic\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_is_dead_lettered_not_forwarded() {
    let nats = Nats::start("bc-bad");
    let dir = temp_dir("bc-bad");
    let (url, inbox) = receiver();
    let b = broadcaster(
        &nats,
        &dir,
        "broadcaster",
        "generic",
        &format!("{url}/hook"),
    )
    .start();
    wait_ready(&b);
    let c = nats.client().await;
    let mut dead = c.subscribe("natsflow_dead_letter").await.unwrap();
    c.publish("todos.events", "a todo was created".into())
        .await
        .unwrap();
    c.publish("todos.events", event(3).into()).await.unwrap();
    c.flush().await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut dead))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.payload.as_ref(), b"a todo was created");
    assert!(d
        .headers
        .unwrap()
        .get("Natsflow-Reason")
        .unwrap()
        .as_str()
        .contains("not a todo event"));
    let got = wait_received(&inbox, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["message"], "A todo was created: todo 3");
    assert_eq!(b.metric("natsflow_dead_letters_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_appears_in_no_log_line() {
    let nats = Nats::start("bc-secret");
    let dir = temp_dir("bc-secret");
    let (url, inbox) = receiver();
    inbox.lock().unwrap().script.extend([
        (500, vec![], ""),
        (401, vec![], r#"{"ok":false,"description":"Unauthorized"}"#),
    ]);
    let token = "987654:SECRET-token-never-logged";
    let b = broadcaster(&nats, &dir, "broadcaster", "telegram", token)
        .env("NATSFLOW_TELEGRAM_API_URL", &url)
        .env("RUST_LOG", "debug")
        .start();
    wait_ready(&b);
    publish(&nats, [event(1)]).await;
    wait_received(&inbox, 2, Duration::from_secs(5));
    // And a target that cannot be reached at all.
    let closed = format!(
        "http://127.0.0.1:{}",
        natsflow::local::nats_server::free_port().unwrap()
    );
    let b2 = broadcaster(&nats, &dir, "broadcaster-2", "telegram", token)
        .env("NATSFLOW_TELEGRAM_API_URL", &closed)
        .env("NATSFLOW_MAX_ATTEMPTS", "2")
        .env("RUST_LOG", "debug")
        .start();
    drop(b);
    wait_ready(&b2);
    publish(&nats, [event(2)]).await;
    wait_until(Duration::from_secs(5), "the failure is logged", || {
        b2.log_text().contains("not sent to telegram")
    });
    let logs = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(logs.contains("not sent to telegram"), "{logs}");
    assert!(
        !logs.contains("SECRET-token"),
        "the token leaked into a log:\n{logs}"
    );
    assert!(
        !logs.contains("987654"),
        "part of the token leaked into a log:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natsflow_run_forwards_events_when_asked() {
    let nats = Nats::start("bc-run");
    let (url, inbox) = receiver();
    let mut run = std::process::Command::new(bin("natsflow"))
        .args([
            "run",
            "--objects",
            "3000",
            "--mappers",
            "2",
            "--work-ms",
            "20-40",
            "--broadcasters",
            "2",
        ])
        .args([
            "--nats-url",
            &nats.url(),
            "--broadcast-url",
            &format!("{url}/hook"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let c = nats.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    // Publish until a broadcaster is up and forwards one.
    while received(&inbox).is_empty() && Instant::now() < deadline {
        c.publish("todos.events", event(1).into()).await.unwrap();
        c.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = run.wait().unwrap();
    let out = std::io::read_to_string(run.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains("all 30 chunks saved"), "{out}");
    let got = received(&inbox);
    assert!(!got.is_empty(), "no event was forwarded");
    assert_eq!(
        got[0].body,
        json!({"user": "bot", "message": "A todo was created: todo 1"})
    );
}

fn js_broadcaster(nats: &Nats, dir: &std::path::Path, name: &str, url: &str) -> Proc {
    broadcaster(nats, dir, name, "generic", &format!("{url}/hook"))
        .env("NATSFLOW_BROADCAST_MODE", "jetstream")
        .env("NATSFLOW_ACK_WAIT", "1s")
}

fn wait_js_ready(p: &Proc) {
    wait_ready(p);
    wait_until(
        Duration::from_secs(10),
        "the stream and consumer exist",
        || p.log_text().contains("JetStream mode:"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_two_of_six_killed_loses_nothing_and_sends_nothing_twice() {
    let nats = Nats::start("bc-js-kill");
    let dir = temp_dir("bc-js-kill");
    let (url, inbox) = receiver();
    let mut procs: Vec<Proc> = (0..6)
        .map(|i| js_broadcaster(&nats, &dir, &format!("broadcaster-{i}"), &url).start())
        .collect();
    procs.iter().for_each(wait_js_ready);
    let c = nats.client().await;
    for n in 0..1000 {
        c.publish("todos.events", event(n).into()).await.unwrap();
        if n == 400 {
            c.flush().await.unwrap();
            procs[1].sigkill();
            procs[4].sigkill();
        }
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    c.flush().await.unwrap();
    let got = wait_received(&inbox, 1000, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_after = received(&inbox);
    let dups = duplicates(&got_after);
    // A replica killed after claiming an event and before its request left cannot be told
    // from one killed after sending: the survivors do not send it again and say so.
    let unconfirmed: usize = procs
        .iter()
        .map(|p| p.log_text().matches("not sending again").count())
        .sum();
    let missing = 1000 - got_after.len().min(1000);
    println!(
        "JetStream mode, 2 of 6 killed: events published 1000, delivered {}, duplicates {dups}, lost {missing}, claimed by a killed replica {unconfirmed}",
        got_after.len()
    );
    assert_eq!(dups, 0);
    assert!(
        got.len() >= 990,
        "redelivered to the survivors: {}",
        got.len()
    );
    assert!(
        missing <= unconfirmed,
        "every missing event is one a killed replica had claimed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_keeps_events_while_every_broadcaster_is_down() {
    let nats = Nats::start("bc-js-down");
    let dir = temp_dir("bc-js-down");
    let (url, inbox) = receiver();
    let mut first = js_broadcaster(&nats, &dir, "broadcaster-0", &url).start();
    wait_js_ready(&first);
    first.sigkill();
    publish(&nats, (0..100).map(event)).await;
    std::thread::sleep(Duration::from_millis(300));
    assert!(received(&inbox).is_empty());
    let procs: Vec<Proc> = (1..3)
        .map(|i| js_broadcaster(&nats, &dir, &format!("broadcaster-{i}"), &url).start())
        .collect();
    procs.iter().for_each(wait_ready);
    let got = wait_received(&inbox, 100, Duration::from_secs(20));
    assert_eq!(
        got.len(),
        100,
        "every event published while all were down arrives"
    );
    assert_eq!(duplicates(&got), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_killed_between_sending_and_acknowledging_is_not_sent_twice() {
    let nats = Nats::start("bc-js-between");
    let dir = temp_dir("bc-js-between");
    let (url, inbox) = receiver();
    let mut a = js_broadcaster(&nats, &dir, "broadcaster-a", &url).start();
    wait_js_ready(&a);
    // The target takes the request and answers late; the broadcaster dies meanwhile.
    inbox.lock().unwrap().delay_next = Some(Duration::from_secs(2));
    publish(&nats, [event(1)]).await;
    wait_received(&inbox, 1, Duration::from_secs(5));
    a.sigkill();
    let b = js_broadcaster(&nats, &dir, "broadcaster-b", &url).start();
    wait_js_ready(&b);
    // The event comes to b again after the ack wait; b finds the claim and does not send.
    wait_until(Duration::from_secs(10), "b handled the redelivery", || {
        b.log_text().contains("not sending again")
    });
    publish(&nats, [event(2)]).await;
    let got = wait_received(&inbox, 2, Duration::from_secs(5));
    let messages: Vec<&str> = got
        .iter()
        .map(|r| r.body["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["A todo was created: todo 1", "A todo was created: todo 2"]
    );
}
