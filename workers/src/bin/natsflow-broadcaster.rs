use clap::Parser;
use natsflow::{broadcaster, cli::BroadcasterCli, metrics::Metrics, telemetry, worker};
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = BroadcasterCli::parse();
    telemetry::init(cli.common.log_format);
    // One TLS provider for the HTTP client (ring, as NATS uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    worker::exit_status(run(cli).await)
}

async fn run(cli: BroadcasterCli) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let w = worker::start(
        "broadcaster",
        &cli.common,
        metrics,
        registry,
        axum::Router::new(),
    )
    .await?;
    broadcaster::run(w, cli.broadcaster).await
}
