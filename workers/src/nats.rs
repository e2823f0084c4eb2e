//! Connecting to NATS: auth, TLS, and reconnecting with backoff for as long as it takes.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::{
    config::NatsArgs,
    metrics::Metrics,
    protocol::{Subjects, HDR_REASON, HDR_SUBJECT, HDR_TRUNCATED, HDR_WORKER},
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
    // app9's clients (nats.js) take `nats://user:pass@host` or `nats://token@host` in
    // NATS_URL; async-nats parses but does not send them, so they are passed on here.
    let explicit =
        args.nats_creds_file.is_some() || args.nats_user.is_some() || args.nats_token.is_some();
    if let (false, Some(addr)) = (explicit, url_credentials(&args.nats_url)) {
        opts = match addr.password() {
            Some(pass) => opts.user_and_password(addr.username().unwrap_or("").into(), pass.into()),
            None => opts.token(addr.username().unwrap_or("").into()),
        };
    }
    if let Some(token) = &args.nats_token {
        opts = opts.token(token.clone());
    }
    if let Some(ca) = &args.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let reconnects = metrics.nats_reconnects.clone();
    let url = redact_url(&args.nats_url);
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
    // Room for the headers above (a reason is a line): a message set aside must not fail
    // to publish for its size.
    let room = client.server_info().max_payload.saturating_sub(1024);
    let payload = if payload.len() > room {
        headers.insert(HDR_TRUNCATED, payload.len().to_string().as_str());
        payload.slice(..room)
    } else {
        payload
    };
    client
        .publish_with_headers(subjects.dead_letter.clone(), headers, payload)
        .await?;
    Ok(())
}

/// The first of `urls` that carries a user (and password) or a token.
fn url_credentials(urls: &str) -> Option<async_nats::ServerAddr> {
    urls.split(',')
        .filter_map(|u| u.trim().parse::<async_nats::ServerAddr>().ok())
        .find(|a| a.username().is_some())
}

/// NATS URLs as they may be logged: a password or token in `nats://user:pass@host` is
/// replaced by `***`.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let rest_at = u.find("://").map_or(0, |i| i + 3);
            let authority_end = u[rest_at..].find('/').map_or(u.len(), |i| rest_at + i);
            match u[rest_at..authority_end].rfind('@') {
                Some(at) => format!("{}***{}", &u[..rest_at], &u[rest_at + at..]),
                None => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_nats_url_are_never_logged() {
        assert_eq!(
            redact_url("nats://app:s3cret@nats-1:4222,tls://tok3n@nats-2:4222/x@y,nats-3:4222"),
            "nats://***@nats-1:4222,tls://***@nats-2:4222/x@y,nats-3:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

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
