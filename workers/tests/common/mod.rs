//! Test harness: a real nats-server on a free loopback port and the real worker binaries as
//! child processes, killed with SIGKILL when a test asks for it and when the test ends.
#![allow(dead_code)]

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use natsflow::local::nats_server;

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "natsflow-test-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn nats_server_bin() -> PathBuf {
    nats_server::find()
        .or_else(|| Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/nats-server")).filter(|p| p.is_file()))
        .expect("nats-server not found: run scripts/ensure-nats-server (the README's test command does)")
}

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    /// The server's HTTP monitoring port (/varz).
    pub monitor_port: u16,
    extra: Vec<String>,
    dir: PathBuf,
}

impl Nats {
    pub fn start(name: &str) -> Nats {
        Nats::start_with(name, &[])
    }

    /// With extra nats-server flags, e.g. `["--auth", "token"]`.
    pub fn start_with(name: &str, extra: &[&str]) -> Nats {
        let mut n = Nats {
            child: None,
            port: nats_server::free_port().unwrap(),
            monitor_port: nats_server::free_port().unwrap(),
            dir: temp_dir(name),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        n.launch();
        n
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .unwrap();
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("js"))
            .args(&self.extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(
            Duration::from_secs(10),
            "nats-server accepts connections",
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Same port, same JetStream store: as a pod restarting on its volume.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A worker binary of this crate, run as a real process.
pub struct Proc {
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    pub log: PathBuf,
    pub metrics_port: u16,
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "fetcher" => env!("CARGO_BIN_EXE_natsflow-fetcher").into(),
        "mapper" => env!("CARGO_BIN_EXE_natsflow-mapper").into(),
        "saver" => env!("CARGO_BIN_EXE_natsflow-saver").into(),
        "broadcaster" => env!("CARGO_BIN_EXE_natsflow-broadcaster").into(),
        "natsflow" => env!("CARGO_BIN_EXE_natsflow").into(),
        other => panic!("no binary {other}"),
    }
}

impl Proc {
    pub fn worker(kind: &str, name: &str, nats: &Nats, log_dir: &Path) -> Proc {
        let metrics_port = nats_server::free_port().unwrap();
        Proc {
            name: name.into(),
            bin: bin(kind),
            args: Vec::new(),
            envs: vec![
                ("NATS_URL".into(), nats.url()),
                (
                    "NATSFLOW_METRICS_ADDR".into(),
                    format!("127.0.0.1:{metrics_port}"),
                ),
                ("RUST_LOG".into(), "info,async_nats=warn".into()),
            ],
            child: None,
            log: log_dir.join(format!("{name}.log")),
            metrics_port,
        }
    }

    pub fn args(mut self, args: &[&str]) -> Proc {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Proc {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn start(mut self) -> Proc {
        self.spawn();
        self
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(&self.bin)
                .args(&self.args)
                .envs(self.envs.iter().cloned())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Waits for the process to end; panics with its log after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not finish within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One sample of a metric from the worker's /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.metrics_port, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} not in /metrics of {}:\n{text}", self.name))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// A tiny HTTP/1.0 GET, enough for the workers' own endpoints.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

pub fn wait_until(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The folder the file sink made for the one run that saved into `out`.
pub fn run_folder(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "one run folder in {}: {dirs:?}",
        out.display()
    );
    dirs[0].clone()
}

/// Every chunk file of the data set is in the run's folder under `out`, once, with exactly
/// what the mapper should have made of the generated chunk.
pub fn assert_all_chunks_saved(out: &Path, objects: u64, chunk_size: u64, seed: u64) {
    let dir = &run_folder(out);
    use natsflow::{fetcher::source::Generated, mapper::transform, protocol};
    let source = Generated {
        seed,
        objects,
        chunk_size,
    };
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chunk-"))
        .collect();
    files.sort();
    assert_eq!(files.len() as u64, source.chunks(), "one file per chunk");
    for i in 0..source.chunks() {
        let saved = std::fs::read(natsflow::saver::sink::chunk_path(dir, i)).unwrap();
        let input = source.chunk(i);
        let expected = transform::map_chunk(
            &transform::Transform::Fullname,
            &protocol::parse_raw_chunk(&input).unwrap(),
        )
        .payload;
        assert_eq!(saved, expected, "chunk #{i} saved as mapped");
    }
}
