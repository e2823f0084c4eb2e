//! Where saved chunks go. Both sinks are idempotent per chunk of a run: saving a chunk twice
//! leaves it saved once and says so, so a re-sent chunk is acknowledged but not stored again.
//! Chunks are keyed by run and index, so a new data set on the same volume is saved in full
//! instead of being taken for the chunks of the last one.

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

#[derive(Debug, PartialEq, Eq)]
pub enum Saved {
    New,
    Again,
}

pub enum Sink {
    /// One log line per chunk; remembers the chunks it logged.
    Log(Mutex<HashSet<(String, u64)>>),
    /// One file per chunk, `RUN/chunk-000827.json`, created atomically and fsynced.
    File(PathBuf),
}

impl Sink {
    pub fn log() -> Sink {
        Sink::Log(Mutex::default())
    }

    /// Also removes temporary files a killed saver left behind. Should another saver still
    /// be writing one, its save fails, it does not acknowledge, and the chunk comes again.
    pub fn file(dir: PathBuf) -> std::io::Result<Sink> {
        std::fs::create_dir_all(&dir)?;
        remove_temporary_files(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                remove_temporary_files(&entry.path())?;
            }
        }
        Ok(Sink::File(dir))
    }

    /// Returns once the chunk is durable (for `file`: data and directory entry fsynced).
    /// `run` is the fetcher's run id from the message headers; app9's messages have none.
    pub async fn save(
        &self,
        run: Option<&str>,
        index: u64,
        objects: usize,
        payload: bytes::Bytes,
    ) -> std::io::Result<Saved> {
        match self {
            Sink::Log(seen) => {
                let run = run.unwrap_or_default();
                let new = seen
                    .lock()
                    .expect("sink lock")
                    .insert((run.to_string(), index));
                if new {
                    tracing::info!(run, "saved chunk #{index}: {objects} objects");
                }
                Ok(if new { Saved::New } else { Saved::Again })
            }
            Sink::File(dir) => {
                let dir = match run {
                    Some(run) => dir.join(run_dir(run)),
                    None => dir.clone(),
                };
                tokio::task::spawn_blocking(move || save_file(&dir, index, &payload))
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }
}

/// The folder of a run's chunks: the run id, with anything but `[A-Za-z0-9._-]` replaced, so
/// a header can never name a path outside the sink's directory.
pub fn run_dir(run: &str) -> String {
    let mut name: String = run
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert_str(0, "run");
    }
    name
}

pub fn chunk_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("chunk-{index:06}.json"))
}

fn remove_temporary_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".chunk-") && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(dir.join(&*name));
        }
    }
    Ok(())
}

fn save_file(dir: &Path, index: u64, payload: &[u8]) -> std::io::Result<Saved> {
    let path = chunk_path(dir, index);
    if path.exists() {
        return Ok(Saved::Again);
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    let tmp = dir.join(format!(
        ".chunk-{index:06}.{}.{}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(payload)?;
    f.sync_all()?;
    drop(f);
    // A hard link fails if the chunk exists, so of two concurrent saves exactly one is New.
    let linked = std::fs::hard_link(&tmp, &path);
    std::fs::remove_file(&tmp)?;
    std::fs::File::open(dir)?.sync_all()?;
    match linked {
        Ok(()) => Ok(Saved::New),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Saved::Again),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_sink_saves_each_chunk_once() {
        let dir = std::env::temp_dir().join(format!("natsflow-sink-{}", fastrand::u64(..)));
        let sink = Sink::file(dir.clone()).unwrap();
        assert_eq!(sink.save(None, 3, 1, "a".into()).await.unwrap(), Saved::New);
        assert_eq!(
            sink.save(None, 3, 1, "b".into()).await.unwrap(),
            Saved::Again
        );
        assert_eq!(std::fs::read_to_string(chunk_path(&dir, 3)).unwrap(), "a");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary files left: {names:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn concurrent_saves_of_one_chunk_count_once() {
        let dir = std::env::temp_dir().join(format!("natsflow-sink-{}", fastrand::u64(..)));
        let sink = std::sync::Arc::new(Sink::file(dir.clone()).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let s = sink.clone();
                tokio::spawn(async move { s.save(None, 5, 1, "x".into()).await.unwrap() })
            })
            .collect();
        let mut new = 0;
        for t in tasks {
            new += (t.await.unwrap() == Saved::New) as usize;
        }
        assert_eq!(new, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn log_sink_saves_each_chunk_once() {
        let sink = Sink::log();
        assert_eq!(sink.save(None, 1, 1, "a".into()).await.unwrap(), Saved::New);
        assert_eq!(
            sink.save(None, 1, 1, "a".into()).await.unwrap(),
            Saved::Again
        );
    }

    #[tokio::test]
    async fn chunks_of_different_runs_are_saved_apart() {
        let dir = std::env::temp_dir().join(format!("natsflow-sink-{}", fastrand::u64(..)));
        let sink = Sink::file(dir.clone()).unwrap();
        for run in [Some("a"), Some("b"), None] {
            assert_eq!(sink.save(run, 7, 1, "x".into()).await.unwrap(), Saved::New);
            assert_eq!(
                sink.save(run, 7, 1, "x".into()).await.unwrap(),
                Saved::Again
            );
        }
        assert!(chunk_path(&dir.join("a"), 7).is_file());
        assert!(chunk_path(&dir.join("b"), 7).is_file());
        assert!(chunk_path(&dir, 7).is_file());
        std::fs::remove_dir_all(dir).unwrap();

        let log = Sink::log();
        assert_eq!(
            log.save(Some("a"), 7, 1, "x".into()).await.unwrap(),
            Saved::New
        );
        assert_eq!(
            log.save(Some("b"), 7, 1, "x".into()).await.unwrap(),
            Saved::New
        );
    }

    #[test]
    fn a_run_id_never_leaves_the_sink_directory() {
        assert_eq!(
            run_dir("generated-s1-o100000-c100"),
            "generated-s1-o100000-c100"
        );
        assert_eq!(run_dir("../../etc"), "run.._.._etc");
        assert_eq!(run_dir(".."), "run..");
        assert_eq!(run_dir(""), "run");
        assert_eq!(run_dir("a/b c"), "a_b_c");
    }
}
