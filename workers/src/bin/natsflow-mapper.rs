use clap::Parser;
use natsflow::{
    config::{CommonArgs, MapperArgs},
    mapper,
    metrics::Metrics,
    telemetry, worker,
};
use prometheus_client::registry::Registry;

/// natsflow mapper: takes one chunk at a time per slot from mapper_data (queue group
/// mapper.workers), transforms it and passes it to saver_data. Scale it with replicas.
#[derive(Parser)]
#[command(name = "natsflow-mapper", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    mapper: MapperArgs,
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
