//! Child processes of `natsflow run`: each in its own process group (so a terminal's Ctrl-C
//! reaches only natsflow, which then stops them in order) and killed by the kernel if
//! natsflow itself dies, so no process is ever left behind.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
    pub restarts: u32,
}

impl Proc {
    pub fn new(name: &str, program: &Path, log_dir: &Path) -> Proc {
        Proc {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            restarts: 0,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Proc {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Proc {
        self.envs.push((k.to_string(), v.into()));
        self
    }

    pub fn start(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only sets a flag of the new process.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", self.program.display()),
            )
        })?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The exit status if the process has ended (and forgets it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if self.child.is_none() {
            return;
        }
        self.signal(libc::SIGTERM);
        let child = self.child.as_mut().expect("checked above");
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        self.child = None;
    }

    /// The last lines of the process's log, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Stops every process, all at once: SIGTERM, then SIGKILL after `grace`.
pub async fn stop_all(procs: &mut [Proc], grace: Duration) {
    futures::future::join_all(procs.iter_mut().map(|p| p.stop(grace))).await;
}
