use clap::Parser;
use natsflow::{cli::MapperCli, mapper, metrics::Metrics, telemetry, worker};
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = MapperCli::parse();
    telemetry::init(cli.common.log_format);
    worker::exit_status(run(cli).await)
}

async fn run(cli: MapperCli) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let w = worker::start(
        "mapper",
        &cli.common,
        metrics,
        registry,
        axum::Router::new(),
    )
    .await?;
    mapper::run(w, cli.mapper).await
}
