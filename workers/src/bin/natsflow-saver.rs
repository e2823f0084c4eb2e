use clap::Parser;
use natsflow::{cli::SaverCli, metrics::Metrics, saver, telemetry, worker};
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = SaverCli::parse();
    telemetry::init(cli.common.log_format);
    worker::exit_status(run(cli).await)
}

async fn run(cli: SaverCli) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let w = worker::start("saver", &cli.common, metrics, registry, axum::Router::new()).await?;
    saver::run(w, cli.saver).await
}
