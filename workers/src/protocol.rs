//! The wire protocol: subject names, payloads and headers, exactly as the seed's app9 uses
//! them so a natsflow worker can stand in for an app9 service and the other way round.
//! Everything natsflow adds travels in headers, which app9's clients never look at.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Readiness signals on `mapper_status` (plain text).
pub const ANYONE_LISTENING: &[u8] = b"anyone_listening";
pub const IM_LISTENING: &[u8] = b"im_listening";

/// Queue groups, as in app9.
pub const MAPPER_QUEUE: &str = "mapper.workers";
pub const SAVER_QUEUE: &str = "saver.workers";

/// Which run a chunk belongs to (a restarted fetcher keeps it).
pub const HDR_RUN: &str = "Natsflow-Run";
/// 1 for the first send of a chunk, 2 for its first re-send, and so on.
pub const HDR_ATTEMPT: &str = "Natsflow-Attempt";
/// The worker that published the message (`<kind>-<host>-<pid>`).
pub const HDR_WORKER: &str = "Natsflow-Worker";
/// Why a message was dead-lettered.
pub const HDR_REASON: &str = "Natsflow-Reason";
/// The subject a dead-lettered message arrived on.
pub const HDR_SUBJECT: &str = "Natsflow-Subject";
/// On a dead letter cut to fit the server's max_payload: the original size in bytes.
pub const HDR_TRUNCATED: &str = "Natsflow-Truncated";

/// The subjects of one pipeline, prefixed `<prefix>.` when a prefix is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    pub mapper_status: String,
    pub mapper_data: String,
    pub saver_data: String,
    pub processed_data: String,
    /// natsflow's own: messages a worker could not process, with the reason in a header.
    pub dead_letter: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        let name = |s: &str| {
            if prefix.is_empty() {
                s.to_string()
            } else {
                format!("{prefix}.{s}")
            }
        };
        Subjects {
            mapper_status: name("mapper_status"),
            mapper_data: name("mapper_data"),
            saver_data: name("saver_data"),
            processed_data: name("processed_data"),
            dead_letter: name("natsflow_dead_letter"),
        }
    }
}

/// A chunk on `mapper_data` (objects from the source) or `saver_data` (mapped objects).
#[derive(Debug, Serialize, Deserialize)]
pub struct Chunk<T> {
    pub index: u64,
    pub data: Vec<T>,
}

/// A chunk whose objects are kept as unparsed JSON, so each can be handled on its own.
pub type RawChunk<'a> = Chunk<&'a RawValue>;

pub fn parse_raw_chunk(payload: &[u8]) -> Result<RawChunk<'_>, String> {
    serde_json::from_slice(payload)
        .map_err(|e| format!("not a chunk {{\"index\": N, \"data\": [...]}}: {e}"))
}

/// `processed_data` carries the chunk index as decimal text, e.g. `827`.
pub fn ack_payload(index: u64) -> bytes::Bytes {
    bytes::Bytes::from(index.to_string())
}

pub fn parse_ack(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.trim().parse().ok()
}

/// A name that identifies this process in headers and logs.
pub fn worker_id(kind: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{kind}-{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_subjects_are_app9_names() {
        let s = Subjects::new("");
        assert_eq!(s.mapper_status, "mapper_status");
        assert_eq!(s.mapper_data, "mapper_data");
        assert_eq!(s.saver_data, "saver_data");
        assert_eq!(s.processed_data, "processed_data");
    }

    #[test]
    fn prefix_is_dotted() {
        assert_eq!(Subjects::new("users").saver_data, "users.saver_data");
    }

    #[test]
    fn ack_round_trip() {
        assert_eq!(parse_ack(&ack_payload(827)), Some(827));
        assert_eq!(parse_ack(b" 12\n"), Some(12));
        assert_eq!(parse_ack(b"x"), None);
        assert_eq!(parse_ack(b"-1"), None);
    }

    #[test]
    fn raw_chunk_keeps_objects() {
        let c = parse_raw_chunk(br#"{"index":3,"data":[{"a":1},2]}"#).unwrap();
        assert_eq!(c.index, 3);
        assert_eq!(c.data[1].get(), "2");
        assert!(parse_raw_chunk(b"{}").is_err());
    }
}
