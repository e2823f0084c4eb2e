//! The mapper: takes chunks from `mapper_data` (queue group `mapper.workers`), transforms them
//! and passes them to `saver_data`. Each of its `concurrency` slots is subscribed only while
//! it is free, and for one message at most, so a mapper never holds more chunks than slots.

pub mod jq;
pub mod transform;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_nats::{Client, HeaderMap, Message};
use futures::StreamExt;

use crate::{
    config::MapperArgs,
    metrics::Metrics,
    protocol::{self, Subjects, ANYONE_LISTENING, HDR_WORKER, IM_LISTENING, MAPPER_QUEUE},
    worker::Worker,
};

pub async fn run(w: Worker, args: MapperArgs) -> anyhow::Result<()> {
    if args.work_ms_min > args.work_ms_max {
        anyhow::bail!(
            "--work-ms-min ({}) is above --work-ms-max ({})",
            args.work_ms_min,
            args.work_ms_max
        );
    }
    let transform = Arc::new(transform::Transform::from_args(&args).map_err(anyhow::Error::msg)?);
    let idle: Vec<Arc<AtomicBool>> = (0..args.concurrency)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();

    // Answer the fetcher's `anyone_listening` for every free slot, as app9's mapper does.
    let mut status = w.client.subscribe(w.subjects.mapper_status.clone()).await?;
    let (client, subjects, id, slots) = (
        w.client.clone(),
        w.subjects.clone(),
        w.id.clone(),
        idle.clone(),
    );
    tokio::spawn(async move {
        while let Some(msg) = status.next().await {
            if msg.payload.as_ref() == ANYONE_LISTENING {
                let free = slots.iter().filter(|s| s.load(Ordering::SeqCst)).count();
                for _ in 0..free {
                    let _ = announce(&client, &subjects, &id).await;
                }
            }
        }
    });

    tracing::info!(
        "mapper ready: {} slot(s), transform {:?}, simulated work {}-{} ms per chunk",
        args.concurrency,
        args.transform,
        args.work_ms_min,
        args.work_ms_max
    );
    let tasks: Vec<_> = idle
        .into_iter()
        .map(|flag| {
            let slot = Slot {
                client: w.client.clone(),
                subjects: w.subjects.clone(),
                metrics: w.metrics.clone(),
                id: w.id.clone(),
                args: args.clone(),
                transform: transform.clone(),
                idle: flag,
            };
            let shutdown = w.shutdown.clone();
            tokio::spawn(slot.run(shutdown))
        })
        .collect();
    // The first slot that fails ends the mapper, so it restarts instead of idling.
    for r in futures::future::try_join_all(tasks).await? {
        r?;
    }
    w.client.flush().await?;
    tracing::info!("mapper stopped");
    Ok(())
}

struct Slot {
    client: Client,
    subjects: Subjects,
    metrics: Metrics,
    id: String,
    args: MapperArgs,
    transform: Arc<transform::Transform>,
    idle: Arc<AtomicBool>,
}

impl Slot {
    async fn run(self, mut shutdown: crate::shutdown::Shutdown) -> anyhow::Result<()> {
        while !shutdown.is_set() {
            let mut sub = self
                .client
                .queue_subscribe(self.subjects.mapper_data.clone(), MAPPER_QUEUE.into())
                .await?;
            sub.unsubscribe_after(1).await?;
            self.idle.store(true, Ordering::SeqCst);
            announce(&self.client, &self.subjects, &self.id).await?;
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = shutdown.wait() => None,
            };
            self.idle.store(false, Ordering::SeqCst);
            drop(sub);
            let Some(msg) = msg else { break };
            // A chunk in hand is finished even when a stop signal arrives meanwhile:
            // Kubernetes gives the pod its grace period for that.
            self.process(msg).await?;
        }
        Ok(())
    }

    async fn process(&self, msg: Message) -> anyhow::Result<()> {
        let started = Instant::now();
        self.metrics.chunks_received.inc();
        let chunk = match protocol::parse_raw_chunk(&msg.payload) {
            Ok(c) => c,
            Err(reason) => {
                self.dead_letter(&msg.subject, &reason, msg.payload.clone())
                    .await?;
                return Ok(());
            }
        };
        let mapped = transform::map_chunk(&self.transform, &chunk);
        for r in &mapped.rejected {
            let reason = format!("chunk #{} object {}: {}", chunk.index, r.position, r.reason);
            self.dead_letter(&msg.subject, &reason, r.object.clone().into())
                .await?;
        }
        // The simulated work counts from the chunk's arrival.
        let work = self.work();
        if !work.is_zero() {
            tokio::time::sleep_until((started + work).into()).await;
        }
        let mut headers = HeaderMap::new();
        headers.insert(HDR_WORKER, self.id.as_str());
        for name in [protocol::HDR_RUN, protocol::HDR_ATTEMPT] {
            if let Some(v) = msg.headers.as_ref().and_then(|h| h.get(name)) {
                headers.insert(name, v.clone());
            }
        }
        self.client
            .publish_with_headers(
                self.subjects.saver_data.clone(),
                headers,
                mapped.payload.into(),
            )
            .await?;
        self.metrics.chunks_processed.inc();
        self.metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!("mapped chunk #{} ({} objects)", chunk.index, mapped.objects);
        Ok(())
    }

    fn work(&self) -> Duration {
        let (lo, hi) = (self.args.work_ms_min, self.args.work_ms_max);
        Duration::from_millis(if hi == 0 { 0 } else { fastrand::u64(lo..=hi) })
    }

    async fn dead_letter(
        &self,
        subject: &str,
        reason: &str,
        payload: bytes::Bytes,
    ) -> anyhow::Result<()> {
        crate::nats::dead_letter(
            &self.client,
            &self.subjects,
            &self.id,
            &self.metrics,
            subject,
            reason,
            payload,
        )
        .await
    }
}

async fn announce(client: &Client, subjects: &Subjects, id: &str) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert(HDR_WORKER, id);
    client
        .publish_with_headers(subjects.mapper_status.clone(), headers, IM_LISTENING.into())
        .await?;
    Ok(())
}
