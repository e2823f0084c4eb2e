//! Sending one message: bounded retries with backoff only when the target clearly did not
//! take it (could not connect, 5xx, 429 with its Retry-After or Telegram's retry_after). An
//! ambiguous failure, such as a timeout after the request went out, is not retried: sending
//! again could post the message twice.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::target::Target;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        attempts: u32,
    },
    /// The target answered no (e.g. 400, 401, 404) or retries ran out.
    Failed {
        reason: String,
    },
    /// Unknown whether the target took it.
    PossiblyLost {
        reason: String,
    },
}

pub struct Policy {
    pub max_attempts: u32,
    /// Longest total time spent on one message, waits included.
    pub budget: Duration,
}

/// What one attempt learned.
enum Attempt {
    Sent,
    Retry { after: Duration, reason: String },
    Failed(String),
    Ambiguous(String),
}

pub async fn send(
    http: &reqwest::Client,
    target: &Target,
    text: &str,
    policy: &Policy,
    mut on_retry: impl FnMut(),
) -> Outcome {
    let started = Instant::now();
    let body = target.body(text);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match once(http, target, &body).await {
            Attempt::Sent => return Outcome::Sent { attempts: attempt },
            Attempt::Failed(reason) => return Outcome::Failed { reason },
            Attempt::Ambiguous(reason) => return Outcome::PossiblyLost { reason },
            Attempt::Retry { after, reason } => {
                let wait = after.max(crate::nats::backoff(attempt as usize));
                if attempt >= policy.max_attempts || started.elapsed() + wait > policy.budget {
                    return Outcome::Failed {
                        reason: format!("{reason}; gave up after {attempt} attempts"),
                    };
                }
                on_retry();
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn once(http: &reqwest::Client, target: &Target, body: &serde_json::Value) -> Attempt {
    let request = http
        .post(target.url())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    let resp = match request.send().await {
        Ok(r) => r,
        // The URL holds the token or webhook secret: errors are reported without it.
        Err(e) if e.is_connect() => {
            return Attempt::Retry {
                after: Duration::ZERO,
                reason: format!("cannot connect: {}", e.without_url()),
            }
        }
        Err(e) => {
            return Attempt::Ambiguous(format!("no answer after sending: {}", e.without_url()))
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Attempt::Sent;
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    let text = resp.text().await.unwrap_or_default();
    if status == StatusCode::TOO_MANY_REQUESTS {
        // Telegram: {"ok": false, "parameters": {"retry_after": 3}}
        let telegram = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["parameters"]["retry_after"].as_f64())
            .and_then(|s| Duration::try_from_secs_f64(s).ok());
        let after = retry_after.or(telegram).unwrap_or(Duration::from_secs(1));
        return Attempt::Retry {
            after,
            reason: format!("rate limited (429), retry after {after:?}"),
        };
    }
    if status.is_server_error() {
        return Attempt::Retry {
            after: retry_after.unwrap_or_default(),
            reason: format!("target error {status}"),
        };
    }
    Attempt::Failed(format!(
        "target refused the message: {status} {}",
        short(&text)
    ))
}

fn short(s: &str) -> String {
    super::target::truncate(s.trim(), 200)
}
