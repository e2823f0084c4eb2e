use clap::Parser;
use natsflow::{
    config::{CommonArgs, SaverArgs},
    metrics::Metrics,
    saver, telemetry, worker,
};
use prometheus_client::registry::Registry;

/// natsflow saver: stores mapped chunks from saver_data (queue group saver.workers), each
/// chunk once, and acknowledges each on processed_data after it is durable.
#[derive(Parser)]
#[command(name = "natsflow-saver", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    saver: SaverArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.common.log_format);
    worker::exit_status(run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let w = worker::start("saver", &cli.common, metrics, registry, axum::Router::new()).await?;
    saver::run(w, cli.saver).await
}
