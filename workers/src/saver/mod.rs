//! The saver: takes mapped chunks from `saver_data` (queue group `saver.workers`), stores
//! them, and only then acknowledges the index on `processed_data`.

pub mod sink;

use std::{sync::Arc, time::Instant};

use async_nats::Message;
use futures::StreamExt;

use crate::{
    config::{SaverArgs, SinkKind},
    nats::dead_letter,
    protocol::{self, SAVER_QUEUE},
    worker::Worker,
};
use sink::{Saved, Sink};

pub async fn run(w: Worker, args: SaverArgs) -> anyhow::Result<()> {
    let sink = Arc::new(match args.sink {
        SinkKind::Log => Sink::log(),
        SinkKind::File => Sink::file(args.sink_dir.clone()).map_err(|e| {
            anyhow::anyhow!(
                "cannot use {} for the file sink: {e}",
                args.sink_dir.display()
            )
        })?,
    });
    let sub = w
        .client
        .queue_subscribe(w.subjects.saver_data.clone(), SAVER_QUEUE.into())
        .await?;
    w.subscribed.set().await?;
    tracing::info!("saver ready: sink {:?}", args.sink);
    let mut shutdown = w.shutdown.clone();
    let w = Arc::new(w);
    sub.take_until(Box::pin(async move { shutdown.wait().await }))
        .for_each_concurrent(args.save_concurrency as usize, |msg| {
            let (w, sink) = (w.clone(), sink.clone());
            async move {
                if let Err(e) = save(&w, &sink, msg).await {
                    tracing::error!("{e:#}");
                }
            }
        })
        .await;
    w.client.flush().await?;
    tracing::info!("saver stopped");
    Ok(())
}

async fn save(w: &Worker, sink: &Sink, msg: Message) -> anyhow::Result<()> {
    let started = Instant::now();
    w.metrics.chunks_received.inc();
    let (index, objects) = match protocol::parse_raw_chunk(&msg.payload) {
        Ok(c) => (c.index, c.data.len()),
        Err(reason) => {
            return dead_letter(
                &w.client,
                &w.subjects,
                &w.id,
                &w.metrics,
                &msg.subject,
                &reason,
                msg.payload,
            )
            .await;
        }
    };
    let run = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(protocol::HDR_RUN))
        .map(|v| v.as_str().to_string());
    // On a failed save nothing is acknowledged: the fetcher sends the chunk again later.
    let saved = sink
        .save(run.as_deref(), index, objects, msg.payload)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot save chunk #{index}, leaving it for a re-send: {e}")
        })?;
    match saved {
        Saved::New => w.metrics.chunks_saved.inc(),
        Saved::Again => {
            tracing::debug!("chunk #{index} was already saved: acknowledging again");
            w.metrics.duplicates_dropped.inc()
        }
    };
    // The run id goes back with the ack, so a fetcher never counts another run's chunk.
    let (subject, ack) = (
        w.subjects.processed_data.clone(),
        protocol::ack_payload(index),
    );
    match &run {
        Some(run) => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(protocol::HDR_RUN, run.as_str());
            w.client.publish_with_headers(subject, headers, ack).await?
        }
        None => w.client.publish(subject, ack).await?,
    }
    w.metrics
        .processing_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(())
}
