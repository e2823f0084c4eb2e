use axum::{http::header, routing::get, Router};
use clap::Parser;
use natsflow::{cli::FetcherCli, fetcher, metrics::Metrics, telemetry, worker};
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = FetcherCli::parse();
    telemetry::init(cli.common.log_format);
    // One TLS provider for the http source (ring, as NATS uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    worker::exit_status(run(cli).await)
}

async fn run(cli: FetcherCli) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let (done, total) = (metrics.chunks_done.clone(), metrics.chunks_total.clone());
    // The operator reads this to fill in the Pipeline's status.progress.
    let progress = Router::new().route(
        "/progress",
        get(move || {
            let body = format!(
                "{{\"chunksDone\":{},\"chunksTotal\":{}}}\n",
                done.get(),
                total.get()
            );
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let w = worker::start("fetcher", &cli.common, metrics, registry, progress).await?;
    fetcher::run(w, cli.fetcher).await?;
    Ok(())
}
