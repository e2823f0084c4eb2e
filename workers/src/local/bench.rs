//! `natsflow bench`: natsflow's speed and memory against a floor measured in the same run.
//!
//! (a) the raw floor: async-nats request/reply moving the same 1000 chunks (generated the same
//!     way) to an echoing responder, 10 in flight;
//! (b) natsflow end to end, as `natsflow run` runs it, with 1, 4 and 10 mappers;
//! (c) 10 mappers with simulated work drawn from 0-200 ms per chunk against the ideal
//!     1000 × mean / 10, the mean of the work actually drawn (it is drawn by chunk index);
//! (d) peak memory of each process kind;
//! (e) broadcaster delivery: 1,000 events through 6 broadcaster processes to a local webhook.
//! Each figure is the median of `--runs` runs.

use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;

use super::{
    nats_server,
    run::{self, RunArgs},
};
use crate::fetcher::source::Generated;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Runs per case; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Objects in the data set.
    #[arg(long, default_value_t = 100_000)]
    pub objects: u64,
    /// Skip case (c), which takes about 10 s a run.
    #[arg(long)]
    pub skip_work: bool,
}

const CHUNK: u64 = 100;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<String> {
    let server = nats_server::find().ok_or_else(|| anyhow::anyhow!(nats_server::NOT_FOUND))?;
    let dir = std::env::temp_dir().join(format!("natsflow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = nats_server::free_port()?;
    let mut nats = nats_server::start(&server, &dir, port).await?;
    let url = format!("nats://127.0.0.1:{port}");
    let result = cases(&args, &url).await;
    nats.stop(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn cases(args: &BenchArgs, url: &str) -> anyhow::Result<String> {
    let source = Generated {
        seed: 1,
        objects: args.objects,
        chunk_size: CHUNK,
    };
    let mut out = format!(
        "natsflow bench: {} objects in {} chunks, median of {} run(s), nats-server on loopback\n\n",
        args.objects,
        source.chunks(),
        args.runs
    );
    out += &format!(
        "{:<44} {:>9} {:>11} {:>8}\n",
        "case", "time", "objects/s", "vs (a)"
    );

    let mut raw = Vec::new();
    for _ in 0..args.runs {
        raw.push(raw_request_reply(url, &source).await?);
    }
    let floor = median(raw);
    out += &row(
        "(a) raw request/reply, 10 in flight",
        floor,
        args.objects,
        floor,
    );

    let mut peak = std::collections::BTreeMap::<String, u64>::new();
    for mappers in [1, 4, 10] {
        let mut times = Vec::new();
        for _ in 0..args.runs {
            let o = pipeline(url, args.objects, mappers, (0, 0)).await?;
            times.push(o.summary.elapsed_secs);
            for (k, v) in o.peak_kib {
                let e = peak.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
        out += &row(
            &format!("(b) natsflow, {mappers} mapper(s)"),
            median(times),
            args.objects,
            floor,
        );
    }

    if !args.skip_work {
        // Each chunk's work is drawn by its index, so the ideal is known exactly.
        let work: f64 = (0..source.chunks())
            .map(|i| crate::mapper::simulated_work(i, 0, 200).as_secs_f64())
            .sum();
        let (chunks, ideal) = (source.chunks(), work / 10.0);
        let mut times = Vec::new();
        for _ in 0..args.runs {
            times.push(
                pipeline(url, args.objects, 10, (0, 200))
                    .await?
                    .summary
                    .elapsed_secs,
            );
        }
        let t = median(times);
        out += &format!(
            "{:<44} {:>7.2} s   ideal {:.2} s ({chunks} × {:.1} ms drawn / 10): {:+.1}%\n",
            "(c) natsflow, 10 mappers, work 0-200 ms",
            t,
            ideal,
            1000.0 * work / chunks as f64,
            100.0 * (t / ideal - 1.0)
        );
    }
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        rates.push(broadcast(url, 6, 1000).await?);
    }
    let mib = |k: &str| {
        peak.get(k).map_or("-".to_string(), |v| {
            format!("{:.1} MiB", *v as f64 / 1024.0)
        })
    };
    out += &format!(
        "\n(d) peak memory (max RSS): fetcher {}, mapper {}, saver {}\n",
        mib("fetcher"),
        mib("mapper"),
        mib("saver")
    );
    out += &format!(
        "(e) broadcaster, 6 replicas, 1000 events to a local webhook: {:.0} events/s\n",
        median(rates)
    );
    Ok(out)
}

fn row(name: &str, secs: f64, objects: u64, floor: f64) -> String {
    format!(
        "{name:<44} {secs:>7.3} s {:>11.0} {:>7.2}x\n",
        objects as f64 / secs,
        secs / floor
    )
}

async fn pipeline(
    url: &str,
    objects: u64,
    mappers: u32,
    work_ms: (u64, u64),
) -> anyhow::Result<run::Outcome> {
    let args = RunArgs {
        mappers,
        objects,
        chunk_size: CHUNK,
        seed: 1,
        work_ms,
        ack_timeout: "30s".into(),
        out: None,
        nats_url: Some(url.into()),
        subject_prefix: format!("bench{}", fastrand::u32(..)),
        logs: None,
        broadcast_url: None,
        broadcasters: 1,
        quiet: true,
        max_restarts: 0,
    };
    let o = run::run(args).await?;
    anyhow::ensure!(
        o.summary.complete,
        "a natsflow run did not finish: {:?}",
        o.summary
    );
    Ok(o)
}

/// The floor: the same chunks, made the same way, sent as requests to a responder that
/// echoes them, with 10 requests in flight. Seconds from the first request to the last reply.
async fn raw_request_reply(url: &str, source: &Generated) -> anyhow::Result<f64> {
    let client = async_nats::connect(url).await?;
    let subject = format!("bench.raw.{}", fastrand::u32(..));
    let mut sub = client.subscribe(subject.clone()).await?;
    let responder = client.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    client.flush().await?;
    let started = Instant::now();
    let replies: Vec<_> = futures::stream::iter(0..source.chunks())
        .map(|i| {
            let (client, subject) = (client.clone(), subject.clone());
            async move { client.request(subject, source.chunk(i).into()).await }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    echo.abort();
    for r in replies {
        r?;
    }
    Ok(secs)
}

/// Events per second from the first publish to the last request at a local webhook.
async fn broadcast(url: &str, replicas: usize, events: usize) -> anyhow::Result<f64> {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (c, d) = (count.clone(), done.clone());
    let app = axum::Router::new().fallback(move || {
        let (c, d) = (c.clone(), d.clone());
        async move {
            if c.fetch_add(1, Ordering::SeqCst) + 1 >= events {
                d.notify_one();
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let bin = run::Binaries::next_to_this_exe()?.broadcaster;
    let dir = std::env::temp_dir().join(format!("natsflow-bench-bc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let subject = format!("bench.events.{}", fastrand::u32(..));
    let mut procs: Vec<super::procs::Proc> = (0..replicas)
        .map(|i| {
            super::procs::Proc::new(&format!("broadcaster-{i}"), &bin, &dir)
                .env("NATS_URL", url)
                .env("NATSFLOW_METRICS_ADDR", "127.0.0.1:0")
                .env("NATSFLOW_EVENT_SUBJECT", &subject)
                .env("NATSFLOW_TARGET", "generic")
                .env("NATSFLOW_TARGET_SECRET", &hook)
        })
        .collect();
    for p in &mut procs {
        p.start()?;
    }
    let client = async_nats::connect(url).await?;
    // Until every replica has joined the queue group.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log: String = procs
            .iter()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .collect();
        if log.matches("broadcaster ready").count() >= replicas || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for n in 0..events {
        let e =
            format!(r#"{{"id":"b{n}","event":"created","todo":{{"id":{n},"text":"todo {n}"}}}}"#);
        client.publish(subject.clone(), e.into()).await?;
    }
    client.flush().await?;
    let finished = tokio::time::timeout(Duration::from_secs(30), done.notified()).await;
    let secs = started.elapsed().as_secs_f64();
    super::procs::stop_all(&mut procs, Duration::from_secs(5)).await;
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        finished.is_ok(),
        "only {} of {events} events reached the webhook",
        count.load(Ordering::SeqCst)
    );
    Ok(events as f64 / secs)
}
