use std::process::ExitCode;

use clap::{Parser, Subcommand};
use natsflow::local::{bench, run};

/// natsflow: a NATS data-processing pipeline (fetcher, mappers, saver) you can run here or
/// on Kubernetes with the natsflow operator.
#[derive(Parser)]
#[command(name = "natsflow", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on this machine: nats-server, fetcher, mappers and saver.
    Run(run::RunArgs),
    /// Measure natsflow against raw async-nats request/reply in the same run (own nats-server).
    Bench(bench::BenchArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => match bench::bench(args).await {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("natsflow bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => match run::run(args).await {
            Ok(outcome) => {
                print!("{}", run::report(&outcome));
                if outcome.summary.complete {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("natsflow run: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
