//! Logging and the operator's HTTP endpoints (/metrics, /healthz, /readyz).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;
use tracing_subscriber::{fmt, EnvFilter};

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube=warn,kube_lease_manager=warn"));
    let b = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

/// Serves in the background. `ready` turns true once the operator can reach the API server.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let state = Shared {
        registry: Arc::new(registry),
        ready,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    });
    Ok(())
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let mut body = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut body, &s.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
