//! `natsflow run`: starts nats-server (unless `--nats-url`), the saver, the mappers and the
//! fetcher; shows progress; restarts a crashed worker a few times as Kubernetes would; ends
//! with a summary and exit status 0 only when every chunk was saved.

use std::{
    collections::{BTreeMap, HashSet},
    io::IsTerminal,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    nats_server,
    procs::{self, Proc},
};
use crate::{
    fetcher::Summary,
    protocol::{self, Subjects},
    saver::sink,
};

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Number of mapper processes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub mappers: u32,
    /// Objects in the generated data set.
    #[arg(long, default_value_t = 100_000)]
    pub objects: u64,
    /// Objects per chunk.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub chunk_size: u64,
    /// Seed of the generated data set.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated work per chunk in each mapper, in ms: `MIN-MAX` (app9: 0-10000).
    #[arg(long, default_value = "0-0", value_parser = parse_range)]
    pub work_ms: (u64, u64),
    /// A chunk not acknowledged by then is sent again.
    #[arg(long, default_value = "5s")]
    pub ack_timeout: String,
    /// Save chunks as files in a folder named after the run in this directory (default: the
    /// saver logs them).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this NATS server instead of starting one.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Subject prefix ("" = app9's names).
    #[arg(long, default_value = "")]
    pub subject_prefix: String,
    /// Keep the workers' logs here (default: a temporary directory, kept only on failure).
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// Also run broadcasters that forward todo events (subject todos.events) to this URL as
    /// the generic target: POST {"user": "bot", "message": ...}.
    #[arg(long)]
    pub broadcast_url: Option<String>,
    /// Broadcaster processes, with --broadcast-url.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub broadcasters: u32,
    /// No progress bar or progress lines (for `natsflow bench`).
    #[arg(long, hide = true)]
    pub quiet: bool,
    /// Restarts allowed per worker before the run gives up.
    #[arg(long, default_value_t = 3)]
    pub max_restarts: u32,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let lo: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a range like 0-200"))?;
    let hi: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a range like 0-200"))?;
    if lo > hi {
        return Err(format!("`{s}`: the minimum is above the maximum"));
    }
    Ok((lo, hi))
}

/// What a run reports; also the outcome the bench collects.
pub struct Outcome {
    pub summary: Summary,
    pub dead_letters: u64,
    pub wall: Duration,
    /// Highest peak memory (max RSS, KiB) seen per process kind: fetcher, mapper, saver.
    pub peak_kib: BTreeMap<String, u64>,
    /// With `--out`: the folder of this run's chunk files.
    pub saved_in: Option<PathBuf>,
}

const GRACE: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let wall = Instant::now();
    let (dir, temporary) = match &args.logs {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("natsflow-run-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let mut session = Session {
        procs: Vec::new(),
        nats: None,
        dir: dir.clone(),
        peak_kib: BTreeMap::new(),
    };
    let mut result = session.run(&args, wall).await;
    session.stop().await;
    if let Ok(o) = &mut result {
        for (kind, kib) in &session.peak_kib {
            let e = o.peak_kib.entry(kind.clone()).or_default();
            *e = (*e).max(*kib);
        }
    }
    match &result {
        Ok(o) if o.summary.complete && temporary => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(_) | Err(_) if !args.quiet => eprintln!("worker logs: {}", dir.display()),
        _ => {}
    }
    result
}

struct Session {
    procs: Vec<Proc>,
    nats: Option<Proc>,
    dir: PathBuf,
    peak_kib: BTreeMap<String, u64>,
}

impl Session {
    /// Records each worker's peak memory so far (VmHWM), by kind.
    fn sample_memory(&mut self) {
        for p in &self.procs {
            let Some(kib) = p.pid().and_then(peak_rss_kib) else {
                continue;
            };
            let kind = p.name.split('-').next().unwrap_or(&p.name).to_string();
            let e = self.peak_kib.entry(kind).or_default();
            *e = (*e).max(kib);
        }
    }

    async fn stop(&mut self) {
        self.sample_memory();
        procs::stop_all(&mut self.procs, GRACE).await;
        if let Some(n) = self.nats.as_mut() {
            n.stop(GRACE).await;
        }
    }

    async fn run(&mut self, args: &RunArgs, wall: Instant) -> anyhow::Result<Outcome> {
        let bins = Binaries::next_to_this_exe()?;
        let url = match &args.nats_url {
            Some(u) => u.clone(),
            None => {
                let server =
                    nats_server::find().ok_or_else(|| anyhow::anyhow!(nats_server::NOT_FOUND))?;
                let port = nats_server::free_port()?;
                self.nats = Some(nats_server::start(&server, &self.dir, port).await?);
                format!("nats://127.0.0.1:{port}")
            }
        };
        let client = async_nats::ConnectOptions::new()
            .name("natsflow-run")
            .connection_timeout(Duration::from_secs(5))
            .connect(url.as_str())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach NATS at {}: {e}",
                    crate::nats::redact_url(&url)
                )
            })?;
        let subjects = Subjects::new(&args.subject_prefix);
        let mut acks = client.subscribe(subjects.processed_data.clone()).await?;
        let mut dead = client.subscribe(subjects.dead_letter.clone()).await?;
        client.flush().await?;

        let summary_file = self.dir.join("summary.json");
        let _ = std::fs::remove_file(&summary_file);
        let common = |p: Proc| {
            p.env("NATS_URL", &url)
                .env("NATSFLOW_SUBJECT_PREFIX", &args.subject_prefix)
                .env("NATSFLOW_METRICS_ADDR", "127.0.0.1:0")
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info,async_nats=warn".into()),
                )
        };
        let mut saver = common(Proc::new("saver", &bins.saver, &self.dir));
        if let Some(out) = &args.out {
            saver = saver
                .env("NATSFLOW_SINK", "file")
                .env("NATSFLOW_SINK_DIR", out.display().to_string());
        }
        self.procs.push(saver);
        for i in 1..=args.mappers {
            self.procs.push(
                common(Proc::new(&format!("mapper-{i}"), &bins.mapper, &self.dir))
                    .env("NATSFLOW_WORK_MS_MIN", args.work_ms.0.to_string())
                    .env("NATSFLOW_WORK_MS_MAX", args.work_ms.1.to_string()),
            );
        }
        self.procs.push(
            common(Proc::new("fetcher", &bins.fetcher, &self.dir))
                .env("NATSFLOW_OBJECTS", args.objects.to_string())
                .env("NATSFLOW_CHUNK_SIZE", args.chunk_size.to_string())
                .env("NATSFLOW_SEED", args.seed.to_string())
                .env("NATSFLOW_ACK_TIMEOUT", &args.ack_timeout)
                .env("NATSFLOW_EXIT_WHEN_DONE", "true")
                // A fresh run each time, even against a NATS that saw this data set before.
                .env(
                    "NATSFLOW_RUN_ID",
                    format!(
                        "local-{}-{}",
                        std::process::id(),
                        wall.elapsed().as_nanos() ^ fastrand::u128(..)
                    ),
                )
                .env("NATSFLOW_SUMMARY_FILE", summary_file.display().to_string()),
        );
        if let Some(target) = &args.broadcast_url {
            for i in 1..=args.broadcasters {
                self.procs.push(
                    common(Proc::new(
                        &format!("broadcaster-{i}"),
                        &bins.broadcaster,
                        &self.dir,
                    ))
                    .env("NATSFLOW_TARGET", "generic")
                    .env("NATSFLOW_TARGET_SECRET", target),
                );
            }
            if !args.quiet {
                eprintln!(
                    "broadcasting todo events published on todos.events at {}",
                    crate::nats::redact_url(&url)
                );
            }
        }
        for p in &mut self.procs {
            p.start()?;
        }

        let total = args.objects.div_ceil(args.chunk_size);
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            progress_bar(total)
        };
        let mut saved = HashSet::new();
        let mut dead_letters = 0u64;
        let mut first_ack: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_line = Instant::now();
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);

        loop {
            tokio::select! {
                _ = &mut interrupted => {
                    bar.abandon();
                    anyhow::bail!("interrupted: {}/{total} chunks saved; stopped every process natsflow started", saved.len());
                }
                Some(m) = acks.next() => {
                    if let Some(i) = protocol::parse_ack(&m.payload) {
                        first_ack.get_or_insert_with(Instant::now);
                        if saved.insert(i) {
                            bar.set_position(saved.len() as u64);
                            if let Some(t) = first_ack {
                                let secs = t.elapsed().as_secs_f64().max(1e-3);
                                bar.set_message(format!("{:.0} objects/s", (saved.len() as u64 * args.chunk_size) as f64 / secs));
                            }
                        }
                    }
                }
                Some(_) = dead.next() => dead_letters += 1,
                _ = tick.tick() => {
                    self.sample_memory();
                    if bar.is_hidden() && !args.quiet && last_line.elapsed() > Duration::from_secs(2) {
                        last_line = Instant::now();
                        eprintln!("saved {}/{total} chunks", saved.len());
                    }
                    if let Some(summary) = self.check_workers(args, &summary_file).await? {
                        bar.finish_and_clear();
                        // Dead letters published just before the end are still on their way.
                        client.flush().await?;
                        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), dead.next()).await {
                            dead_letters += 1;
                        }
                        let mut peak_kib = self.peak_kib.clone();
                        if let Some(kib) = summary.peak_rss_kib {
                            peak_kib.insert("fetcher".into(), kib);
                        }
                        let saved_in = args.out.as_ref().map(|o| o.join(sink::run_dir(&summary.run_id)));
                        return Ok(Outcome { summary, dead_letters, wall: wall.elapsed(), peak_kib, saved_in });
                    }
                }
            }
        }
    }

    /// Restarts crashed workers; returns the summary once the fetcher has finished.
    async fn check_workers(
        &mut self,
        args: &RunArgs,
        summary_file: &Path,
    ) -> anyhow::Result<Option<Summary>> {
        for p in &mut self.procs {
            let Some(status) = p.exited() else { continue };
            if p.name == "fetcher" && status.success() {
                let s: Summary = serde_json::from_slice(&std::fs::read(summary_file)?)?;
                return Ok(Some(s));
            }
            if p.restarts >= args.max_restarts {
                anyhow::bail!(
                    "{} failed {} times (last: {status}); giving up. Its last log lines:\n{}",
                    p.name,
                    p.restarts + 1,
                    p.log_tail(8)
                );
            }
            p.restarts += 1;
            eprintln!(
                "{} exited ({status}); restarting it ({}/{})",
                p.name, p.restarts, args.max_restarts
            );
            tokio::time::sleep(Duration::from_millis(200 * p.restarts as u64)).await;
            p.start()?;
        }
        if let Some(n) = self.nats.as_mut() {
            if let Some(status) = n.exited() {
                anyhow::bail!("nats-server exited ({status}):\n{}", n.log_tail(8));
            }
        }
        Ok(None)
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} chunks  {msg}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The worker binaries, which sit next to `natsflow` in the same build.
pub struct Binaries {
    pub fetcher: PathBuf,
    pub mapper: PathBuf,
    pub saver: PathBuf,
    pub broadcaster: PathBuf,
}

impl Binaries {
    pub fn next_to_this_exe() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(anyhow::anyhow!(
                    "{} not found next to natsflow: build every binary with `cargo build --release -p natsflow-workers`",
                    p.display()
                ))
            }
        };
        Ok(Binaries {
            fetcher: find("natsflow-fetcher")?,
            mapper: find("natsflow-mapper")?,
            saver: find("natsflow-saver")?,
            broadcaster: find("natsflow-broadcaster")?,
        })
    }
}

/// The end-of-run report, as `natsflow run` prints it.
pub fn report(o: &Outcome) -> String {
    let s = &o.summary;
    let head = if s.complete {
        format!("all {} chunks saved", s.chunks)
    } else {
        format!("{}/{} chunks saved", s.chunks_done, s.chunks)
    };
    let mut r = format!(
        "natsflow run: {head}\n  objects       {}\n  pipeline time {:.2} s (first chunk sent to last saved)\n  total time    {:.2} s (with start-up)\n  objects/s     {:.0}\n  re-sends      {}\n  duplicates    {}\n  dead letters  {}\n",
        s.objects,
        s.elapsed_secs,
        o.wall.as_secs_f64(),
        s.objects_per_sec,
        s.resends,
        s.duplicates,
        o.dead_letters
    );
    if let Some(dir) = &o.saved_in {
        r += &format!("  saved in      {}\n", dir.display());
    }
    r
}

/// Peak resident memory of a process in KiB (VmHWM), Linux only.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
