//! Worker configuration: the one parser. Every setting is a flag and an environment variable
//! (`NATS_URL` as in the seed, the rest `NATSFLOW_*`), so the operator configures workers with
//! a ConfigMap mounted by `envFrom` and Secrets by `secretKeyRef`, and a person runs them with
//! flags. Secret values are accepted from the environment or a file and never printed.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// NATS credentials file (JWT + NKey seed), e.g. a mounted Secret.
    #[arg(long, env = "NATSFLOW_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// NATS user name (with NATSFLOW_NATS_PASSWORD).
    #[arg(long, env = "NATSFLOW_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password. Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "NATSFLOW_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS token. Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "NATSFLOW_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// PEM file of the CA that signed the NATS server's certificate; turns TLS on.
    #[arg(long, env = "NATSFLOW_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Prefix for the pipeline's subjects ("" = app9's bare names).
    #[arg(long, env = "NATSFLOW_SUBJECT_PREFIX", default_value = "")]
    pub subject_prefix: String,
    /// Address of the /metrics, /healthz and /readyz endpoints (port 0 picks a free one).
    #[arg(long, env = "NATSFLOW_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "NATSFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone, Debug)]
pub struct FetcherArgs {
    /// Where the objects come from: `generated` (deterministic people, app9's shape) or
    /// `http` (a JSON array or NDJSON document at --source-url).
    #[arg(long, env = "NATSFLOW_SOURCE", value_enum, default_value_t = SourceKind::Generated)]
    pub source: SourceKind,
    /// URL of the http source.
    #[arg(
        long,
        env = "NATSFLOW_SOURCE_URL",
        required_if_eq("source", "http"),
        hide_env_values = true
    )]
    pub source_url: Option<String>,
    /// Number of generated objects.
    #[arg(long, env = "NATSFLOW_OBJECTS", default_value_t = 100_000)]
    pub objects: u64,
    /// Seed of the generated data set: the same seed gives the same objects.
    #[arg(long, env = "NATSFLOW_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Objects per chunk.
    #[arg(long, env = "NATSFLOW_CHUNK_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub chunk_size: u64,
    /// A chunk not acknowledged by then is sent again (e.g. 30s, 500ms, 2m).
    #[arg(long, env = "NATSFLOW_ACK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// Run identifier: progress is kept under it. Default: derived from the source settings.
    #[arg(long, env = "NATSFLOW_RUN_ID")]
    pub run_id: Option<String>,
    /// Start over instead of resuming from the progress saved in JetStream.
    #[arg(long, env = "NATSFLOW_NO_RESUME")]
    pub no_resume: bool,
    /// Exit once every chunk is saved (default: stay up and report completion).
    #[arg(long, env = "NATSFLOW_EXIT_WHEN_DONE")]
    pub exit_when_done: bool,
    /// Write the end-of-run summary as JSON to this file.
    #[arg(long, env = "NATSFLOW_SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,
    /// Seconds between progress log lines.
    #[arg(long, env = "NATSFLOW_PROGRESS_EVERY", default_value = "5s", value_parser = parse_duration)]
    pub progress_every: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Generated,
    Http,
}

impl FetcherArgs {
    pub fn total_chunks(&self) -> u64 {
        self.objects.div_ceil(self.chunk_size)
    }

    pub fn run_id(&self) -> String {
        if let Some(id) = &self.run_id {
            return id.clone();
        }
        match (self.source, &self.source_url) {
            (SourceKind::Http, Some(url)) => {
                format!("http-{:016x}-c{}", fnv1a(url.as_bytes()), self.chunk_size)
            }
            _ => format!(
                "generated-s{}-o{}-c{}",
                self.seed, self.objects, self.chunk_size
            ),
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct MapperArgs {
    /// Chunks this mapper processes at once (app9: 1).
    #[arg(long, env = "NATSFLOW_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Transform: `fullname` maps {uuid, fn, ln} to {id, name: "fn ln"}; `jq` applies --jq.
    #[arg(long, env = "NATSFLOW_TRANSFORM", value_enum, default_value_t = TransformKind::Fullname)]
    pub transform: TransformKind,
    /// jq expression applied to each object (with --transform jq), e.g. '{id: .uuid}'.
    #[arg(long, env = "NATSFLOW_JQ")]
    pub jq: Option<String>,
    /// Least simulated work per chunk, in milliseconds.
    #[arg(long, env = "NATSFLOW_WORK_MS_MIN", default_value_t = 0)]
    pub work_ms_min: u64,
    /// Most simulated work per chunk, in milliseconds (app9: 10000). Each chunk's work is
    /// drawn from the range by its index, so runs repeat.
    #[arg(long, env = "NATSFLOW_WORK_MS_MAX", default_value_t = 0)]
    pub work_ms_max: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformKind {
    Fullname,
    Jq,
}

#[derive(Args, Clone, Debug)]
pub struct SaverArgs {
    /// Where chunks are saved: `log` writes a line per chunk, `file` one JSON file per chunk.
    #[arg(long, env = "NATSFLOW_SINK", value_enum, default_value_t = SinkKind::Log)]
    pub sink: SinkKind,
    /// Directory of the file sink.
    #[arg(long, env = "NATSFLOW_SINK_DIR", default_value = "/data")]
    pub sink_dir: PathBuf,
    /// Chunks saved at once.
    #[arg(long, env = "NATSFLOW_SAVE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub save_concurrency: u32,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    Log,
    File,
}

#[derive(Args, Clone, Debug)]
pub struct BroadcasterArgs {
    /// Subject the application publishes todo events on.
    #[arg(long, env = "NATSFLOW_EVENT_SUBJECT", default_value = "todos.events")]
    pub subject: String,
    /// Where events go.
    #[arg(long, env = "NATSFLOW_TARGET", value_enum)]
    pub target: TargetKind,
    /// The bot token (telegram) or webhook URL (slack, discord, generic). Prefer the
    /// environment variable, set from a Secret: flags show in `ps`.
    #[arg(long, env = "NATSFLOW_TARGET_SECRET", hide_env_values = true)]
    pub target_secret: Option<String>,
    /// File holding the token or webhook URL, e.g. a mounted Secret.
    #[arg(long, env = "NATSFLOW_TARGET_SECRET_FILE")]
    pub target_secret_file: Option<PathBuf>,
    /// Telegram chat to post to.
    #[arg(long, env = "NATSFLOW_TELEGRAM_CHAT_ID")]
    pub telegram_chat_id: Option<String>,
    /// Telegram Bot API base URL (a self-hosted Bot API server, or a test server).
    #[arg(
        long,
        env = "NATSFLOW_TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub telegram_api_url: String,
    /// Message text; {event}, {text}, {id} and {done} are filled in from the event.
    #[arg(
        long,
        env = "NATSFLOW_MESSAGE_TEMPLATE",
        default_value = "A todo was {event}: {text}"
    )]
    pub message_template: String,
    /// Timeout of one request to the target.
    #[arg(long, env = "NATSFLOW_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Attempts per message when the target clearly did not take it (5xx, 429, refused).
    #[arg(long, env = "NATSFLOW_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Longest time spent on one message, waits included.
    #[arg(long, env = "NATSFLOW_RETRY_BUDGET", default_value = "60s", value_parser = parse_duration)]
    pub retry_budget: Duration,
    /// `core`: a queue group, an event held by a killed replica is lost; `jetstream`: a
    /// stream and a claim per event, nothing lost while broadcasters are down, never twice.
    #[arg(long, env = "NATSFLOW_BROADCAST_MODE", value_enum, default_value_t = BroadcastMode::Core)]
    pub mode: BroadcastMode,
    /// JetStream mode: the stream holding the events (created if missing).
    #[arg(long, env = "NATSFLOW_STREAM", default_value = "TODO_EVENTS")]
    pub stream: String,
    /// JetStream mode: an event not acknowledged by then is delivered again.
    #[arg(long, env = "NATSFLOW_ACK_WAIT", default_value = "90s", value_parser = parse_duration)]
    pub ack_wait: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BroadcastMode {
    Core,
    Jetstream,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Telegram,
    Slack,
    Discord,
    Generic,
}

/// A stable 64-bit digest (FNV-1a), so a run id stays the same across builds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 30s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "`{s}`: use a duration above zero, like 500ms, 30s or 2m"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
    }
}
