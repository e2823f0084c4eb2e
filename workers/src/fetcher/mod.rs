//! The fetcher: splits the data set into chunks, hands out one chunk per mapper readiness
//! signal, and keeps a lease per chunk until the saver acknowledges it on `processed_data`.

pub mod http;
pub mod leases;
pub mod progress;
pub mod source;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{
    config::{FetcherArgs, SourceKind},
    protocol::{self, ANYONE_LISTENING, HDR_ATTEMPT, HDR_RUN, IM_LISTENING},
    worker::Worker,
};
use leases::{Ack, Leases};

/// What a finished (or stopped) run did; logged, and written with `--summary-file`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub run_id: String,
    pub complete: bool,
    pub objects: u64,
    pub chunks: u64,
    pub chunks_done: u64,
    /// Chunks already done by an earlier fetcher of the same run.
    pub chunks_resumed: u64,
    pub sends: u64,
    pub resends: u64,
    /// Acknowledgements of chunks that were already done.
    pub duplicates: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed_secs: f64,
    pub objects_per_sec: f64,
    /// This fetcher's peak memory (max RSS) in KiB, when the OS tells.
    #[serde(default)]
    pub peak_rss_kib: Option<u64>,
}

/// True when saved, or when there is no store to save to.
async fn save_progress(store: Option<&progress::Store>, leases: &Leases) -> bool {
    match store {
        Some(store) => {
            store
                .save(progress::to_bits(leases.total(), |i| leases.is_done(i)))
                .await
        }
        None => true,
    }
}

/// Downloaded chunks not yet saved, at most (http source); ~1 MiB at 100 objects per chunk.
const AHEAD: u64 = 256;

/// How long without a readiness signal, while chunks wait, before asking `anyone_listening`.
const STALL: Duration = Duration::from_secs(1);
/// Most often progress is written to the key-value bucket.
const SAVE_EVERY: Duration = Duration::from_millis(500);

pub async fn run(mut w: Worker, args: FetcherArgs) -> anyhow::Result<Summary> {
    let generated = source::Generated {
        seed: args.seed,
        objects: args.objects,
        chunk_size: args.chunk_size,
    };
    // The http source streams its chunks in; the generated one knows them all up front.
    let (pieces_tx, mut pieces) = tokio::sync::mpsc::channel(64);
    let mut downloaded: Vec<bytes::Bytes> = Vec::new();
    let mut source_ended = true;
    let total = match (args.source, &args.source_url) {
        (SourceKind::Http, Some(url)) => {
            source_ended = false;
            tokio::spawn(http::download(url.clone(), args.chunk_size, pieces_tx));
            0
        }
        _ => generated.chunks(),
    };
    let generating = source_ended;
    let objects = if generating { args.objects } else { 0 };
    let run_id = args.run_id();
    let store = if args.no_resume {
        None
    } else {
        progress::Store::open(&w.client, &run_id).await
    };
    let saved = match &store {
        Some(s) => s.load().await,
        None => None,
    };
    let mut leases = Leases::new(total, args.ack_timeout, |i| {
        saved.as_ref().is_some_and(|b| progress::bit(b, i))
    });
    let resumed = leases.done();
    if resumed > 0 {
        tracing::info!(run = %run_id, "resuming: {resumed}/{total} chunks were already saved");
    }
    w.metrics.chunks_total.set(total as i64);
    w.metrics.chunks_done.set(resumed as i64);

    let mut status = w.client.subscribe(w.subjects.mapper_status.clone()).await?;
    let mut acks = w
        .client
        .subscribe(w.subjects.processed_data.clone())
        .await?;
    // Each chunk goes with a reply subject nobody answers, so that the server says at once
    // when a send reached no mapper (its readiness signal was stale: the mapper died, or
    // answered twice) instead of the chunk waiting out its ack timeout.
    let inbox = w.client.new_inbox();
    let mut undelivered = w.client.subscribe(format!("{inbox}.*.*")).await?;
    w.client
        .publish(w.subjects.mapper_status.clone(), ANYONE_LISTENING.into())
        .await?;
    w.subscribed.set().await?;
    tracing::info!(
        run = %run_id,
        "fetcher ready: {total} chunks of {} objects, ack timeout {:?}",
        args.chunk_size,
        args.ack_timeout
    );

    let mut s = Summary {
        run_id: run_id.clone(),
        complete: source_ended && leases.is_complete(),
        objects,
        chunks: total,
        chunks_done: resumed,
        chunks_resumed: resumed,
        sends: 0,
        resends: 0,
        duplicates: 0,
        elapsed_secs: 0.0,
        objects_per_sec: 0.0,
        peak_rss_kib: None,
    };
    let mut credits: u64 = 0;
    let mut prepared: Option<(u64, bytes::Bytes)> = None;
    let mut started: Option<Instant> = None;
    let mut last_ready = Instant::now();
    let mut last_ask = Instant::now();
    let mut last_log = Instant::now();
    let mut last_save = Instant::now();
    let mut dirty = false;
    let mut save_failed = false;
    let mut finished_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50).min(args.ack_timeout / 4));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let now = tokio::select! {
            _ = w.shutdown.wait() => break,
            // Read ahead of the mappers by at most AHEAD unsaved chunks: the download waits
            // (TCP backpressure) rather than the whole document piling up in memory.
            Some(piece) = pieces.recv(), if !source_ended && leases.total() - leases.done() < AHEAD => {
                match piece {
                    http::Piece::Chunk(chunk) => {
                        let i = leases.push(saved.as_ref().is_some_and(|b| progress::bit(b, downloaded.len() as u64)));
                        // A chunk already saved is never sent again: keep nothing of it.
                        downloaded.push(if leases.is_done(i) { bytes::Bytes::new() } else { chunk });
                        if leases.is_done(i) {
                            w.metrics.chunks_done.inc();
                        }
                    }
                    http::Piece::End(n) => {
                        source_ended = true;
                        s.objects = n;
                        s.chunks = leases.total();
                        // Known only now: until then the operator shows the total as unknown.
                        w.metrics.chunks_total.set(leases.total() as i64);
                        tracing::info!("source read: {n} objects in {} chunks", leases.total());
                    }
                    http::Piece::Failed(e) => anyhow::bail!(e),
                }
                Instant::now()
            }
            Some(msg) = status.next() => {
                if msg.payload.as_ref() == IM_LISTENING {
                    credits += 1;
                    last_ready = Instant::now();
                }
                Instant::now()
            }
            Some(msg) = acks.next() => {
                // An ack names its run when the saver knows it (app9's savers do not).
                let run = msg.headers.as_ref().and_then(|h| h.get(HDR_RUN));
                if run.is_some_and(|r| r.as_str() != run_id) {
                    tracing::debug!("ignored an ack of another run");
                    continue;
                }
                match protocol::parse_ack(&msg.payload).map(|i| (i, leases.ack(i))) {
                    Some((i, Ack::New)) => {
                        dirty = true;
                        w.metrics.chunks_done.inc();
                        if let Some(chunk) = downloaded.get_mut(i as usize) {
                            *chunk = bytes::Bytes::new();
                        }
                    }
                    Some((_, Ack::Duplicate)) => {
                        s.duplicates += 1;
                        w.metrics.duplicates_dropped.inc();
                    }
                    Some((i, Ack::Unknown)) => tracing::warn!("ignored ack for chunk #{i}: this run has {} chunks", leases.total()),
                    None => tracing::warn!(payload = %String::from_utf8_lossy(&msg.payload), "ignored ack: not a chunk index"),
                }
                Instant::now()
            }
            Some(msg) = undelivered.next() => {
                if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    let mut parts = msg.subject.rsplit('.');
                    let attempt = parts.next().and_then(|a| a.parse().ok());
                    let index = parts.next().and_then(|i| i.parse().ok());
                    if let (Some(index), Some(attempt)) = (index, attempt) {
                        if leases.release(index, attempt) {
                            w.metrics.chunks_unreached.inc();
                            tracing::debug!("chunk #{index} reached no mapper: it goes with the next readiness signal");
                        }
                    }
                }
                Instant::now()
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if leases.expire(now) > 0 {
                    tracing::debug!("ack timeout passed for some chunks: sending them again");
                }
                now
            }
        };

        // One chunk per readiness signal.
        while credits > 0 {
            let Some((index, attempt)) = leases.next_to_send(now) else {
                break;
            };
            credits -= 1;
            let mut headers = HeaderMap::new();
            headers.insert(HDR_RUN, run_id.as_str());
            headers.insert(HDR_ATTEMPT, attempt.to_string().as_str());
            let payload: bytes::Bytes = match (downloaded.get(index as usize), prepared.take()) {
                (Some(chunk), _) => chunk.clone(),
                (None, Some((i, chunk))) if i == index => chunk,
                _ => generated.chunk(index).into(),
            };
            w.client
                .publish_with_reply_and_headers(
                    w.subjects.mapper_data.clone(),
                    format!("{inbox}.{index}.{attempt}"),
                    headers,
                    payload.clone(),
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot send chunk #{index} ({} bytes; the server takes at most {}): {e}; lower the chunk size if it is too big",
                        payload.len(),
                        w.client.server_info().max_payload
                    )
                })?;
            started.get_or_insert(now);
            s.sends += 1;
            w.metrics.chunks_sent.inc();
            if attempt > 1 {
                s.resends += 1;
                w.metrics.chunks_resent.inc();
                tracing::info!(
                    "re-sent chunk #{index} (attempt {attempt}): not acknowledged within {:?}",
                    args.ack_timeout
                );
            }
        }

        // Make the next chunk now, while no mapper waits for it.
        if generating {
            if let Some(next) = leases.peek_next() {
                if prepared.as_ref().is_none_or(|(i, _)| *i != next) {
                    prepared = Some((next, generated.chunk(next).into()));
                }
            }
        }

        // Mappers that announced themselves while no fetcher listened are asked again.
        if credits == 0
            && leases.has_pending()
            && last_ready.elapsed() > STALL
            && last_ask.elapsed() > STALL
        {
            tracing::debug!(
                "chunks are waiting and no mapper said it is ready: asking anyone_listening"
            );
            w.client
                .publish(w.subjects.mapper_status.clone(), ANYONE_LISTENING.into())
                .await?;
            last_ask = Instant::now();
        }

        s.chunks_done = leases.done();
        let due = last_save.elapsed() >= SAVE_EVERY || (leases.is_complete() && !save_failed);
        if dirty && due {
            let saved = save_progress(store.as_ref(), &leases).await;
            (dirty, save_failed) = (!saved, !saved);
            last_save = Instant::now();
        }
        if source_ended && leases.is_complete() && finished_at.is_none() {
            finished_at = Some(Instant::now());
            fill_rates(&mut s, started, finished_at, args.chunk_size);
            s.complete = true;
            log_summary(&s);
            write_summary(&args, &s)?;
            if args.exit_when_done {
                return Ok(s);
            }
            tracing::info!(
                "every chunk is saved; staying up until stopped (use --exit-when-done to exit)"
            );
        } else if finished_at.is_none() && last_log.elapsed() >= args.progress_every {
            last_log = Instant::now();
            log_progress(&leases, started, args.chunk_size);
        }
    }

    if dirty {
        save_progress(store.as_ref(), &leases).await;
    }
    if finished_at.is_none() {
        fill_rates(&mut s, started, None, args.chunk_size);
        tracing::info!(
            "stopped with {}/{} chunks saved; a fetcher of the same run resumes from here",
            s.chunks_done,
            s.chunks
        );
        write_summary(&args, &s)?;
    }
    Ok(s)
}

fn fill_rates(s: &mut Summary, started: Option<Instant>, end: Option<Instant>, chunk_size: u64) {
    let elapsed = match started {
        Some(t) => end
            .unwrap_or_else(Instant::now)
            .duration_since(t)
            .as_secs_f64(),
        None => 0.0,
    };
    let objects_now = ((s.chunks_done - s.chunks_resumed) * chunk_size).min(s.objects);
    s.elapsed_secs = elapsed;
    s.objects_per_sec = if elapsed > 0.0 {
        objects_now as f64 / elapsed
    } else {
        0.0
    };
}

fn log_progress(leases: &Leases, started: Option<Instant>, chunk_size: u64) {
    let (done, total) = (leases.done(), leases.total());
    let secs = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let rate = if secs > 0.0 {
        (done * chunk_size) as f64 / secs
    } else {
        0.0
    };
    tracing::info!(
        "saved {done}/{total} chunks ({:.0}%), {rate:.0} objects/s, {} in flight",
        100.0 * done as f64 / total.max(1) as f64,
        leases.in_flight()
    );
}

fn log_summary(s: &Summary) {
    tracing::info!(
        run = %s.run_id,
        "all {} chunks saved: {} objects in {:.2}s ({:.0} objects/s), {} re-sends, {} duplicate acks",
        s.chunks,
        s.objects,
        s.elapsed_secs,
        s.objects_per_sec,
        s.resends,
        s.duplicates
    );
}

fn write_summary(args: &FetcherArgs, s: &Summary) -> anyhow::Result<()> {
    if let Some(path) = &args.summary_file {
        let s = &Summary {
            peak_rss_kib: crate::local::run::peak_rss_kib(std::process::id()),
            ..s.clone()
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}
