//! Stop signals: SIGTERM (Kubernetes) and SIGINT (Ctrl-C) both ask a worker to stop cleanly.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// A flag that flips to `true` once a stop signal arrives.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Installs the signal handlers. Call from inside the runtime.
    pub fn install() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received: stopping"),
                _ = int.recv() => tracing::info!("SIGINT received: stopping"),
            }
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// Never fires; for tests and embedding.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Shutdown(rx)
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
