//! Connecting to NATS: auth, TLS, and reconnecting with backoff for as long as it takes.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::{
    config::NatsArgs,
    metrics::Metrics,
    protocol::{Subjects, HDR_REASON, HDR_SUBJECT, HDR_WORKER},
};

/// Connects in the background: the call returns at once and the client keeps retrying
/// (with backoff up to 5 s) until the server answers, so a worker started before NATS
/// simply waits, reports not-ready on /readyz, and logs each attempt.
pub async fn connect(args: &NatsArgs, name: &str, metrics: &Metrics) -> anyhow::Result<Client> {
    let mut opts = ConnectOptions::new();
    if let Some(path) = &args.nats_creds_file {
        opts = opts.credentials_file(path).await.map_err(|e| {
            anyhow::anyhow!("cannot read NATS credentials file {}: {e}", path.display())
        })?;
    }
    if let (Some(user), Some(pass)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &args.nats_token {
        opts = opts.token(token.clone());
    }
    if let Some(ca) = &args.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let reconnects = metrics.nats_reconnects.clone();
    let url = args.nats_url.clone();
    let client = opts
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(backoff)
        .event_callback(move |event| {
            let reconnects = reconnects.clone();
            let url = url.clone();
            async move {
                match event {
                    Event::Connected => tracing::info!(%url, "connected to NATS"),
                    Event::Disconnected => {
                        reconnects.inc();
                        tracing::warn!(%url, "lost the NATS connection: reconnecting")
                    }
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "NATS dropped messages: this worker reads too slowly")
                    }
                    other => tracing::warn!(%url, "NATS: {other}"),
                }
            }
        })
        .connect(args.nats_url.as_str())
        .await?;
    Ok(client)
}

/// 0, 100 ms, 200 ms, 400 ms ... capped at 5 s, with up to 20% jitter so replicas spread out.
pub fn backoff(attempt: usize) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let base = 100u64
        .saturating_mul(1 << attempt.min(16).saturating_sub(1))
        .min(5_000);
    Duration::from_millis(base + fastrand::u64(0..=base / 5))
}

/// Sets a message aside on the dead-letter subject with why and where it came from.
/// Logs and counts it too, so every worker reports bad input the same way.
pub async fn dead_letter(
    client: &async_nats::Client,
    subjects: &Subjects,
    id: &str,
    metrics: &Metrics,
    subject: &str,
    reason: &str,
    payload: bytes::Bytes,
) -> anyhow::Result<()> {
    tracing::warn!("dead-lettered a message on {subject}: {reason}");
    metrics.dead_letters.inc();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HDR_WORKER, id);
    headers.insert(HDR_SUBJECT, subject);
    // Header values are single-line.
    headers.insert(HDR_REASON, reason.replace(['\r', '\n'], " ").as_str());
    client
        .publish_with_headers(subjects.dead_letter.clone(), headers, payload)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert!(
            backoff(1) >= Duration::from_millis(100) && backoff(1) <= Duration::from_millis(120)
        );
        assert!(backoff(4) >= Duration::from_millis(800));
        assert!(backoff(50) <= Duration::from_millis(6_000));
    }
}
