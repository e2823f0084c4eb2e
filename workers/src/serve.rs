//! The HTTP endpoints every worker serves: /metrics (Prometheus text), /healthz (the process
//! is alive), /readyz (connected to NATS and subscribed), plus JSON extras a worker adds (the fetcher's
//! /progress).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;

#[derive(Clone)]
struct Health {
    registry: Arc<Registry>,
    ready: Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>,
}

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
pub async fn spawn(
    addr: SocketAddr,
    registry: Registry,
    ready: impl Fn() -> Result<(), &'static str> + Send + Sync + 'static,
    extra: Router,
) -> anyhow::Result<SocketAddr> {
    let state = Health {
        registry: Arc::new(registry),
        ready: Arc::new(ready),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(extra);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /metrics: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    tracing::info!("serving /metrics, /healthz and /readyz on http://{bound}");
    Ok(bound)
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &h.registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    match (h.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
