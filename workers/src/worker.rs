//! What every worker binary does before its own work starts: logging, metrics, the NATS
//! connection, the health endpoints and the stop signal.

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
    serve::spawn(
        common.metrics_addr,
        registry,
        move || probe.connection_state() == State::Connected,
        extra,
    )
    .await?;
    Ok(Worker {
        id,
        client,
        metrics,
        subjects: Subjects::new(&common.subject_prefix),
        shutdown,
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
