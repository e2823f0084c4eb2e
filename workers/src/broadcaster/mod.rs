//! The broadcaster: forwards todo events from NATS to a chat service. Replicas share the
//! queue group `broadcaster`, so each event goes to one of them and is sent at most once.

pub mod delivery;
pub mod event;
pub mod jetstream;
pub mod target;

use std::time::Duration;

use async_nats::Message;
use futures::StreamExt;

use crate::{
    config::{BroadcastMode, BroadcasterArgs},
    metrics::TargetLabel,
    nats::dead_letter,
    worker::Worker,
};
use delivery::{Outcome, Policy};
use target::Target;

pub const QUEUE: &str = "broadcaster";

/// What became of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    Sent,
    Failed,
    PossiblyLost,
    Invalid,
    /// JetStream mode: another delivery of this event was already claimed.
    AlreadyClaimed,
}

/// Reads the target's secret from the environment or a mounted file.
pub fn secret(args: &BroadcasterArgs) -> anyhow::Result<String> {
    if let Some(path) = &args.target_secret_file {
        return std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                anyhow::anyhow!("cannot read the target secret from {}: {e}", path.display())
            });
    }
    Ok(args.target_secret.clone().unwrap_or_default())
}

pub async fn run(w: Worker, args: BroadcasterArgs) -> anyhow::Result<()> {
    let target = Target::new(
        args.target,
        secret(&args)?,
        &args.telegram_api_url,
        args.telegram_chat_id.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(args.timeout)
        .user_agent(concat!("natsflow-broadcaster/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let policy = Policy {
        max_attempts: args.max_attempts,
        budget: args.retry_budget,
    };
    let label = TargetLabel {
        target: args.target.name().into(),
    };
    // Exported from the start at 0, so dashboards and alerts see them before the first event.
    for family in [
        &w.metrics.broadcast_sent,
        &w.metrics.broadcast_failed,
        &w.metrics.broadcast_retried,
        &w.metrics.broadcast_possibly_lost,
    ] {
        let _ = family.get_or_create(&label);
    }
    let sender = Sender {
        w: &w,
        http,
        target,
        policy,
        label,
        template: args.message_template.clone(),
    };
    match args.mode {
        BroadcastMode::Core => {
            let mut sub = w
                .client
                .queue_subscribe(args.subject.clone(), QUEUE.into())
                .await?;
            w.subscribed.set().await?;
            tracing::info!(
                "broadcaster ready: forwarding events on {} to {} (core NATS, queue group {QUEUE})",
                args.subject,
                args.target.name()
            );
            let mut shutdown = w.shutdown.clone();
            loop {
                let msg = tokio::select! {
                    m = sub.next() => m,
                    _ = shutdown.wait() => None,
                };
                let Some(msg) = msg else { break };
                sender.forward(msg).await?;
            }
        }
        BroadcastMode::Jetstream => {
            let setup = jetstream::Setup {
                stream: args.stream.clone(),
                subject: args.subject.clone(),
                ack_wait: args.ack_wait,
            };
            tracing::info!(
                "broadcaster ready: forwarding events on {} to {}",
                args.subject,
                args.target.name()
            );
            jetstream::run(
                &w.client,
                &setup,
                &w.subscribed,
                w.shutdown.clone(),
                |msg| sender.forward(msg),
            )
            .await?;
        }
    }
    w.client.flush().await?;
    tracing::info!("broadcaster stopped");
    Ok(())
}

struct Sender<'a> {
    w: &'a Worker,
    http: reqwest::Client,
    target: Target,
    policy: Policy,
    label: TargetLabel,
    template: String,
}

impl Sender<'_> {
    async fn forward(&self, msg: Message) -> anyhow::Result<Handled> {
        let (w, label) = (self.w, &self.label);
        let m = &w.metrics;
        let ev = match event::parse(&msg.payload) {
            Ok(ev) => ev,
            Err(reason) => {
                dead_letter(
                    &w.client,
                    &w.subjects,
                    &w.id,
                    m,
                    &msg.subject,
                    &reason,
                    msg.payload,
                )
                .await?;
                return Ok(Handled::Invalid);
            }
        };
        let text = event::render(&self.template, &ev);
        let id = ev.id.as_deref().unwrap_or("-");
        let retried = || {
            m.broadcast_retried.get_or_create(label).inc();
        };
        Ok(
            match delivery::send(&self.http, &self.target, &text, &self.policy, retried).await {
                Outcome::Sent { attempts } => {
                    m.broadcast_sent.get_or_create(label).inc();
                    tracing::debug!(event = id, attempts, "sent to {}", label.target);
                    Handled::Sent
                }
                Outcome::Failed { reason } => {
                    m.broadcast_failed.get_or_create(label).inc();
                    tracing::warn!(event = id, "not sent to {}: {reason}", label.target);
                    Handled::Failed
                }
                Outcome::PossiblyLost { reason } => {
                    m.broadcast_possibly_lost.get_or_create(label).inc();
                    tracing::warn!(
                        event = id,
                        "maybe not sent to {} (not retried, to avoid a duplicate): {reason}",
                        label.target
                    );
                    Handled::PossiblyLost
                }
            },
        )
    }
}
