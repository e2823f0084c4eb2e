//! The mapper: takes chunks from `mapper_data` (queue group `mapper.workers`), transforms them
//! and passes them to `saver_data`. Each of its `concurrency` slots is subscribed only while
//! it is free, and for one message at most, so a mapper never holds more chunks than slots.

pub mod jq;
pub mod transform;

use std::{
    sync::Arc,
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
    tracing::info!(
        "mapper ready: {} slot(s), transform {:?}, simulated work {}-{} ms per chunk",
        args.concurrency,
        args.transform,
        args.work_ms_min,
        args.work_ms_max
    );
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let slot = Slot {
                client: w.client.clone(),
                subjects: w.subjects.clone(),
                metrics: w.metrics.clone(),
                id: w.id.clone(),
                subscribed: w.subscribed.clone(),
                args: args.clone(),
                transform: transform.clone(),
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
    subscribed: crate::worker::Subscribed,
    args: MapperArgs,
    transform: Arc<transform::Transform>,
}

impl Slot {
    async fn run(self, mut shutdown: crate::shutdown::Shutdown) -> anyhow::Result<()> {
        while !shutdown.is_set() {
            let mut sub = self
                .client
                .queue_subscribe(self.subjects.mapper_data.clone(), MAPPER_QUEUE.into())
                .await?;
            sub.unsubscribe_after(1).await?;
            // Only a free slot hears `mapper_status`: a busy one has nothing to answer, and
            // waking every mapper for each `im_listening` slowed each hand-off by ~0.5 ms.
            let mut status = self
                .client
                .subscribe(self.subjects.mapper_status.clone())
                .await?;
            self.subscribed.set().await?;
            announce(&self.client, &self.subjects, &self.id).await?;
            let msg = loop {
                tokio::select! {
                    m = sub.next() => break m,
                    Some(s) = status.next() => {
                        // The fetcher asks when it has chunks and no credit, as app9's does.
                        if s.payload.as_ref() == ANYONE_LISTENING {
                            announce(&self.client, &self.subjects, &self.id).await?;
                        }
                    }
                    _ = shutdown.wait() => break None,
                }
            };
            drop(status);
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
        let work = simulated_work(chunk.index, self.args.work_ms_min, self.args.work_ms_max);
        if !work.is_zero() {
            work_until(started + work).await;
        }
        let mut headers = HeaderMap::new();
        headers.insert(HDR_WORKER, self.id.as_str());
        for name in [protocol::HDR_RUN, protocol::HDR_ATTEMPT] {
            if let Some(v) = msg.headers.as_ref().and_then(|h| h.get(name)) {
                headers.insert(name, v.clone());
            }
        }
        // Over the server's limit the publish would fail, and the mapper with it, again for
        // each re-send: set the chunk aside instead.
        let limit = self.client.server_info().max_payload;
        if mapped.payload.len() > limit {
            let reason = format!(
                "chunk #{} maps to {} bytes, over the server's max_payload of {limit}: use smaller chunks or a transform with smaller output",
                chunk.index,
                mapped.payload.len()
            );
            self.dead_letter(&msg.subject, &reason, msg.payload.clone())
                .await?;
            return Ok(());
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

/// The simulated work for chunk `index`: drawn from `lo..=hi` ms by the index, so a chunk takes
/// the same time whichever mapper gets it and a benchmark knows the total work in advance.
pub fn simulated_work(index: u64, lo: u64, hi: u64) -> Duration {
    if hi == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(fastrand::Rng::with_seed(index ^ 0x6e61_7473_666c_6f77).u64(lo..=hi))
}

/// Stands in for work until `deadline`, on a blocking thread as CPU-bound work would run.
/// A tokio timer fires on whole milliseconds, up to ~1.3 ms late here; over 100 chunks of
/// 100 ms that alone was 1.3% of a benchmark run.
async fn work_until(deadline: Instant) {
    let _ = tokio::task::spawn_blocking(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()))
    })
    .await;
}

async fn announce(client: &Client, subjects: &Subjects, id: &str) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert(HDR_WORKER, id);
    client
        .publish_with_headers(subjects.mapper_status.clone(), headers, IM_LISTENING.into())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_work_is_drawn_by_chunk_index_within_the_range() {
        assert_eq!(simulated_work(7, 0, 0), Duration::ZERO);
        assert_eq!(simulated_work(7, 0, 200), simulated_work(7, 0, 200));
        let draws: Vec<u64> = (0..1000)
            .map(|i| simulated_work(i, 50, 150).as_millis() as u64)
            .collect();
        assert!(draws.iter().all(|d| (50..=150).contains(d)));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(
            distinct.len() > 90,
            "only {} distinct draws",
            distinct.len()
        );
        let mean = draws.iter().sum::<u64>() as f64 / 1000.0;
        assert!((95.0..105.0).contains(&mean), "mean {mean} ms");
    }

    #[tokio::test]
    async fn simulated_work_never_ends_early() {
        for ms in [1, 7, 30] {
            let deadline = Instant::now() + Duration::from_millis(ms);
            work_until(deadline).await;
            assert!(Instant::now() >= deadline);
        }
    }
}
