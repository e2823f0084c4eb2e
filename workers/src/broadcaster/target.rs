//! Chat targets: the exact request each service documents, and its message length limit.

use serde_json::{json, Value};

use crate::config::TargetKind;

pub const TELEGRAM_API: &str = "https://api.telegram.org";

/// Where and what to POST. `secret` is the bot token (Telegram) or the webhook URL.
pub struct Target {
    pub kind: TargetKind,
    secret: String,
    telegram_api: String,
    chat_id: String,
}

/// Shows everything but the secret.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .field("chat_id", &self.chat_id)
            .finish()
    }
}

impl Target {
    pub fn new(
        kind: TargetKind,
        secret: String,
        telegram_api: &str,
        chat_id: Option<&str>,
    ) -> Result<Target, String> {
        if secret.trim().is_empty() {
            return Err(format!(
                "{} needs its {}: set NATSFLOW_TARGET_SECRET or NATSFLOW_TARGET_SECRET_FILE",
                kind.name(),
                kind.secret_name()
            ));
        }
        if kind == TargetKind::Telegram && chat_id.is_none_or(str::is_empty) {
            return Err("telegram needs a chat id: set NATSFLOW_TELEGRAM_CHAT_ID".into());
        }
        if kind != TargetKind::Telegram
            && !(secret.starts_with("http://") || secret.starts_with("https://"))
        {
            return Err(format!(
                "the {} webhook URL must start with http:// or https://",
                kind.name()
            ));
        }
        Ok(Target {
            kind,
            secret: secret.trim().to_string(),
            telegram_api: telegram_api.trim_end_matches('/').to_string(),
            chat_id: chat_id.unwrap_or_default().to_string(),
        })
    }

    /// The URL to POST to. It holds the secret: never log it.
    pub fn url(&self) -> String {
        match self.kind {
            TargetKind::Telegram => format!("{}/bot{}/sendMessage", self.telegram_api, self.secret),
            _ => self.secret.clone(),
        }
    }

    /// The JSON body, with the text cut to the service's limit.
    pub fn body(&self, text: &str) -> Value {
        let text = truncate(text, self.kind.max_chars());
        match self.kind {
            // https://core.telegram.org/bots/api#sendmessage
            TargetKind::Telegram => json!({"chat_id": self.chat_id, "text": text}),
            // https://api.slack.com/messaging/webhooks
            TargetKind::Slack => json!({"text": text}),
            // https://discord.com/developers/docs/resources/webhook#execute-webhook
            TargetKind::Discord => json!({"content": text}),
            // the seed's exercise 4.06
            TargetKind::Generic => json!({"user": "bot", "message": text}),
        }
    }
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Telegram => "telegram",
            TargetKind::Slack => "slack",
            TargetKind::Discord => "discord",
            TargetKind::Generic => "generic",
        }
    }

    fn secret_name(self) -> &'static str {
        match self {
            TargetKind::Telegram => "bot token",
            TargetKind::Generic => "URL",
            _ => "webhook URL",
        }
    }

    /// Characters a message may have.
    pub fn max_chars(self) -> usize {
        match self {
            TargetKind::Telegram => 4096,
            TargetKind::Slack => 40_000,
            TargetKind::Discord => 2000,
            TargetKind::Generic => 100_000,
        }
    }
}

/// Cuts to at most `max` characters, marking the cut with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max - 1).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telegram_request() {
        let t = Target::new(
            TargetKind::Telegram,
            "123:abc".into(),
            "http://127.0.0.1:9/",
            Some("-100"),
        )
        .unwrap();
        assert_eq!(t.url(), "http://127.0.0.1:9/bot123:abc/sendMessage");
        assert_eq!(t.body("hi"), json!({"chat_id": "-100", "text": "hi"}));
    }

    #[test]
    fn webhook_bodies() {
        let t = |k| Target::new(k, "https://hooks.example/x".into(), TELEGRAM_API, None).unwrap();
        assert_eq!(t(TargetKind::Slack).body("hi"), json!({"text": "hi"}));
        assert_eq!(t(TargetKind::Discord).body("hi"), json!({"content": "hi"}));
        assert_eq!(
            t(TargetKind::Generic).body("A todo was created"),
            json!({"user": "bot", "message": "A todo was created"})
        );
        assert_eq!(t(TargetKind::Generic).url(), "https://hooks.example/x");
    }

    #[test]
    fn long_messages_are_cut_to_the_limit() {
        let t = Target::new(
            TargetKind::Discord,
            "https://d/x".into(),
            TELEGRAM_API,
            None,
        )
        .unwrap();
        let body = t.body(&"é".repeat(3000));
        let text = body["content"].as_str().unwrap();
        assert_eq!(text.chars().count(), 2000);
        assert!(text.ends_with('…'));
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(
            Target::new(TargetKind::Telegram, "t".into(), TELEGRAM_API, None)
                .unwrap_err()
                .contains("chat id")
        );
        assert!(
            Target::new(TargetKind::Slack, "".into(), TELEGRAM_API, None)
                .unwrap_err()
                .contains("NATSFLOW_TARGET_SECRET")
        );
        assert!(
            Target::new(TargetKind::Slack, "not-a-url".into(), TELEGRAM_API, None)
                .unwrap_err()
                .contains("http")
        );
    }
}
