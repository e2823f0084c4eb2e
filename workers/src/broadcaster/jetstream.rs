//! JetStream mode: events are kept in a stream until a broadcaster has handled them, and each
//! event is claimed in a key-value bucket before it is sent. So no event is lost while every
//! broadcaster is down, and none is sent twice, even when a broadcaster dies between sending
//! and acknowledging: the replica that gets the event again finds the claim and does not send.
//!
//! The broadcaster creates what it needs if it is missing: the stream (subjects: the event
//! subject), the durable pull consumer `broadcaster` that the replicas share, and the bucket
//! `natsflow-broadcast-claims` (entries expire after 7 days).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy},
    kv, stream, AckKind,
};
use futures::StreamExt;

use super::{event, Handled};

pub const CONSUMER: &str = "broadcaster";
pub const CLAIMS: &str = "natsflow-broadcast-claims";
const CLAIMED: &[u8] = b"claimed";
const SENT: &[u8] = b"sent";

pub struct Setup {
    pub stream: String,
    pub subject: String,
    pub ack_wait: Duration,
}

/// Runs until `stop` resolves; `handle` sends one event and says what happened.
pub async fn run<F, Fut>(
    client: &async_nats::Client,
    setup: &Setup,
    subscribed: &crate::worker::Subscribed,
    mut stop: crate::shutdown::Shutdown,
    mut handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(async_nats::Message) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Handled>>,
{
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: setup.stream.clone(),
            subjects: vec![setup.subject.clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot use the JetStream stream {}: {e}", setup.stream))?;
    let consumer: pull::Stream = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: setup.ack_wait,
                max_deliver: 20,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot use the durable consumer {CONSUMER}: {e}"))?
        .messages()
        .await?;
    let claims = match js.get_key_value(CLAIMS).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: CLAIMS.into(),
                description: "natsflow broadcaster: events claimed or sent".into(),
                history: 1,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot use the key-value bucket {CLAIMS}: {e}"))?,
    };
    tracing::info!(
        "JetStream mode: stream {}, durable consumer {CONSUMER}, claims in {CLAIMS}",
        setup.stream
    );
    subscribed.set().await?;
    let mut messages = consumer;
    loop {
        let msg = tokio::select! {
            m = messages.next() => m,
            _ = stop.wait() => None,
        };
        let Some(msg) = msg else { break };
        let msg = msg.map_err(|e| anyhow::anyhow!("JetStream consumer: {e}"))?;
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let outcome = match event::parse(&msg.payload) {
            // Not an event: the handler sets it aside; there is nothing to claim.
            Err(_) => handle(msg.message.clone()).await?,
            Ok(ev) => {
                let key = claim_key(ev.id.as_deref(), &setup.stream, seq);
                match claims.create(&key, CLAIMED.into()).await {
                    Ok(_) => {
                        let h = handle(msg.message.clone()).await?;
                        if h == Handled::Sent {
                            let _ = claims.put(&key, SENT.into()).await;
                        }
                        h
                    }
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                        match claims.get(&key).await.ok().flatten().as_deref() {
                            Some(SENT) => {
                                tracing::debug!(event = %key, "already sent: acknowledging")
                            }
                            _ => tracing::warn!(
                                event = %key,
                                "a broadcaster claimed this event and stopped before confirming it was sent: not sending again (possibly lost)"
                            ),
                        }
                        Handled::AlreadyClaimed
                    }
                    Err(e) => {
                        // The claim store is unreachable: leave the event for a later delivery.
                        tracing::warn!(event = %key, "cannot claim the event, it will come again: {e}");
                        let _ = msg
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                        continue;
                    }
                }
            }
        };
        let kind = match outcome {
            Handled::Sent | Handled::PossiblyLost | Handled::AlreadyClaimed => AckKind::Ack,
            Handled::Failed | Handled::Invalid => AckKind::Term,
        };
        if let Err(e) = msg.ack_with(kind).await {
            tracing::warn!("cannot acknowledge an event (it may come again; its claim stops a second send): {e}");
        }
    }
    Ok(())
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`: an event id that fits is used as it is, any other is
/// hashed; without an id, the stream sequence identifies the event.
pub fn claim_key(id: Option<&str>, stream: &str, seq: u64) -> String {
    match id {
        Some(id)
            if !id.is_empty()
                && id.len() <= 200
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)) =>
        {
            format!("id.{id}")
        }
        Some(id) => format!("h.{:016x}", crate::config::fnv1a(id.as_bytes())),
        None => format!("seq.{stream}.{seq}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_keys_are_valid_kv_keys() {
        assert_eq!(claim_key(Some("e-42"), "S", 1), "id.e-42");
        assert!(claim_key(Some("a b/c"), "S", 1).starts_with("h."));
        assert_eq!(claim_key(None, "TODOS", 7), "seq.TODOS.7");
    }
}
