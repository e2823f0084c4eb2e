//! What every worker binary does before its own work starts: logging, metrics, the NATS
//! connection, the health endpoints and the stop signal.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use async_nats::{connection::State, Client};
use axum::Router;
use prometheus_client::registry::Registry;

use crate::{
    config::CommonArgs, metrics::Metrics, nats, protocol::Subjects, serve, shutdown::Shutdown,
};

pub struct Worker {
    pub id: String,
    pub client: Client,
    pub metrics: Metrics,
    pub subjects: Subjects,
    pub shutdown: Shutdown,
    pub subscribed: Subscribed,
}

/// Set once the worker's subscriptions are made: /readyz says ready only from then on, so
/// nobody (a Service, a test, the operator) sends to a worker that would not hear it yet.
#[derive(Clone)]
pub struct Subscribed {
    client: Client,
    flag: Arc<AtomicBool>,
}

impl Subscribed {
    pub async fn set(&self) -> anyhow::Result<()> {
        if !self.flag.load(Ordering::Relaxed) {
            // The flush returns once the server has processed the subscriptions sent before it.
            self.client.flush().await?;
            self.flag.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Starts the shared parts; `extra` routes join /metrics, /healthz and /readyz.
pub async fn start(
    kind: &str,
    common: &CommonArgs,
    metrics: Metrics,
    registry: Registry,
    extra: Router,
) -> anyhow::Result<Worker> {
    let shutdown = Shutdown::install();
    let id = crate::protocol::worker_id(kind);
    let client = nats::connect(&common.nats, &id, &metrics).await?;
    let probe = client.clone();
    let subscribed = Subscribed {
        client: client.clone(),
        flag: Arc::new(AtomicBool::new(false)),
    };
    let flag = subscribed.flag.clone();
    serve::spawn(
        common.metrics_addr,
        registry,
        move || {
            if probe.connection_state() != State::Connected {
                Err("not connected to NATS")
            } else if !flag.load(Ordering::Relaxed) {
                Err("not subscribed yet")
            } else {
                Ok(())
            }
        },
        extra,
    )
    .await?;
    Ok(Worker {
        id,
        client,
        metrics,
        subjects: Subjects::new(&common.subject_prefix),
        shutdown,
        subscribed,
    })
}

/// Logs a worker's fatal error in words and turns it into the exit status.
pub fn exit_status(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
