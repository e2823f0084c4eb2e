//! The broadcaster: forwards todo events from NATS to a chat service. Replicas share the
//! queue group `broadcaster`, so each event goes to one of them and is sent at most once.

pub mod delivery;
pub mod event;
pub mod target;

use std::time::Duration;

use async_nats::Message;
use futures::StreamExt;

use crate::{config::BroadcasterArgs, metrics::TargetLabel, nats::dead_letter, worker::Worker};
use delivery::{Outcome, Policy};
use target::Target;

pub const QUEUE: &str = "broadcaster";

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
    let mut sub = w
        .client
        .queue_subscribe(args.subject.clone(), QUEUE.into())
        .await?;
    tracing::info!(
        "broadcaster ready: forwarding events on {} to {}",
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
        forward(
            &w,
            &http,
            &target,
            &policy,
            &label,
            &args.message_template,
            msg,
        )
        .await?;
    }
    w.client.flush().await?;
    tracing::info!("broadcaster stopped");
    Ok(())
}

async fn forward(
    w: &Worker,
    http: &reqwest::Client,
    target: &Target,
    policy: &Policy,
    label: &TargetLabel,
    template: &str,
    msg: Message,
) -> anyhow::Result<()> {
    let m = &w.metrics;
    let ev = match event::parse(&msg.payload) {
        Ok(ev) => ev,
        Err(reason) => {
            tracing::warn!("dead-lettered a message on {}: {reason}", msg.subject);
            m.dead_letters.inc();
            return dead_letter(
                &w.client,
                &w.subjects,
                &w.id,
                &msg.subject,
                &reason,
                msg.payload,
            )
            .await;
        }
    };
    let text = event::render(template, &ev);
    let id = ev.id.as_deref().unwrap_or("-");
    match delivery::send(http, target, &text, policy, || {
        m.broadcast_retried.get_or_create(label).inc();
    })
    .await
    {
        Outcome::Sent { attempts } => {
            m.broadcast_sent.get_or_create(label).inc();
            tracing::debug!(event = id, attempts, "sent to {}", label.target);
        }
        Outcome::Failed { reason } => {
            m.broadcast_failed.get_or_create(label).inc();
            tracing::warn!(event = id, "not sent to {}: {reason}", label.target);
        }
        Outcome::PossiblyLost { reason } => {
            m.broadcast_possibly_lost.get_or_create(label).inc();
            tracing::warn!(
                event = id,
                "maybe not sent to {} (not retried, to avoid a duplicate): {reason}",
                label.target
            );
        }
    }
    Ok(())
}
