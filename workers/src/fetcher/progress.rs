//! Progress that outlives the fetcher: the set of saved chunks, kept in the JetStream
//! key-value bucket `natsflow-progress` under the run id, so a restarted fetcher resumes.
//! Without JetStream the set lives in memory only and a restarted fetcher starts over
//! (savers then drop the chunks they already saved).

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

pub const BUCKET: &str = "natsflow-progress";

pub struct Store {
    kv: kv::Store,
    key: String,
}

impl Store {
    /// Opens (creating if needed) the bucket; `None` when the server has no JetStream.
    pub async fn open(client: &async_nats::Client, run_id: &str) -> Option<Store> {
        // The client connects in the background: wait for the server, so that a fetcher
        // started before NATS does not take it for one without JetStream.
        if let Err(e) = client.flush().await {
            tracing::warn!("cannot reach NATS to read saved progress: {e}");
        }
        let js = jetstream::new(client.clone());
        let config = kv::Config {
            bucket: BUCKET.into(),
            description: "natsflow fetcher progress: saved chunks per run".into(),
            history: 1,
            ..Default::default()
        };
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => match js.create_key_value(config).await {
                Ok(kv) => kv,
                Err(e) => {
                    tracing::warn!(
                        "progress is kept in memory only, so a restarted fetcher starts over: \
                         JetStream key-value bucket {BUCKET} unavailable ({e}); run nats-server with -js to resume"
                    );
                    return None;
                }
            },
        };
        Some(Store {
            kv,
            key: key_for(run_id),
        })
    }

    pub async fn load(&self) -> Option<Bytes> {
        match self.kv.get(self.key.as_str()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cannot read saved progress, starting over: {e}");
                None
            }
        }
    }

    /// False when the save failed (logged); the caller tries again later.
    pub async fn save(&self, bits: Bytes) -> bool {
        match self.kv.put(self.key.as_str(), bits).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("cannot save progress (will retry): {e}");
                false
            }
        }
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`; anything else becomes `_`.
fn key_for(run_id: &str) -> String {
    run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One bit per chunk, set when the chunk is done.
pub fn to_bits(total: u64, done: impl Fn(u64) -> bool) -> Bytes {
    let mut bits = vec![0u8; total.div_ceil(8) as usize];
    for i in 0..total {
        if done(i) {
            bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }
    Bytes::from(bits)
}

pub fn bit(bits: &[u8], i: u64) -> bool {
    bits.get((i / 8) as usize)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        let b = to_bits(13, |i| i % 3 == 0);
        assert_eq!(b.len(), 2);
        for i in 0..13 {
            assert_eq!(bit(&b, i), i % 3 == 0);
        }
        assert!(!bit(&b, 99));
    }

    #[test]
    fn keys_are_valid() {
        assert_eq!(key_for("generated-s1-o100-c10"), "generated-s1-o100-c10");
        assert_eq!(key_for("a b/c"), "a_b_c");
    }
}
