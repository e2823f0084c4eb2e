//! The event contract: what a todo backend publishes, and the message made from it.
//!
//! ```json
//! {"id": "9f1c…", "event": "created", "todo": {"id": "42", "text": "Buy milk", "done": false}}
//! ```
//! `event` is `created` or `updated`; `id` (optional) identifies the event, so a re-delivered
//! event is recognised in JetStream mode; the default message reads
//! `A todo was created: Buy milk`.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Created,
    Updated,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Todo {
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    pub text: String,
    #[serde(default)]
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub id: Option<String>,
    pub event: Kind,
    pub todo: Todo,
}

pub const DEFAULT_TEMPLATE: &str = "A todo was {event}: {text}";

pub fn parse(payload: &[u8]) -> Result<Event, String> {
    serde_json::from_slice(payload).map_err(|e| {
        format!("not a todo event {{\"event\": \"created\"|\"updated\", \"todo\": {{\"text\": ...}}}}: {e}")
    })
}

/// Fills `{event}`, `{text}`, `{id}` (the todo's) and `{done}` into `template`.
pub fn render(template: &str, e: &Event) -> String {
    let id = match &e.todo.id {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let kind = match e.event {
        Kind::Created => "created",
        Kind::Updated => "updated",
    };
    template
        .replace("{event}", kind)
        .replace("{text}", &e.todo.text)
        .replace("{id}", &id)
        .replace("{done}", if e.todo.done { "done" } else { "not done" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_the_default_message() {
        let e = parse(br#"{"event":"created","todo":{"id":42,"text":"Buy milk"}}"#).unwrap();
        assert_eq!(render(DEFAULT_TEMPLATE, &e), "A todo was created: Buy milk");
        assert_eq!(render("#{id} {done}", &e), "#42 not done");
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        assert!(parse(b"hello").is_err());
        assert!(parse(br#"{"event":"deleted","todo":{"text":"x"}}"#).is_err());
        assert!(parse(br#"{"event":"created"}"#)
            .unwrap_err()
            .contains("not a todo event"));
    }
}
