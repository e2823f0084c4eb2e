use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
};

use clap::{Parser, Subcommand};
use kube_lease_manager::LeaseManagerBuilder;
use natsflow_operator::{
    controller,
    metrics::Metrics,
    reconcile::Context,
    telemetry::{self, LogFormat},
};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

/// natsflow-operator: runs natsflow Pipelines (natsflow.dev/v1alpha1) on Kubernetes.
#[derive(Parser)]
#[command(name = "natsflow-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Watch Pipelines in this namespace only (default: all namespaces).
    #[arg(long, env = "NATSFLOW_NAMESPACE", global = true)]
    namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "NATSFLOW_METRICS_ADDR",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "NATSFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Pipelines reconciled at once. Each one in flight holds an API connection, so this
    /// bounds the operator's memory and its load on the API server after a restart.
    #[arg(
        long,
        env = "NATSFLOW_MAX_CONCURRENT_RECONCILES",
        default_value_t = 8,
        value_parser = clap::value_parser!(u16).range(1..),
        global = true
    )]
    max_concurrent_reconciles: u16,
    /// Namespace of the leader-election Lease (default: the pod's, from POD_NAMESPACE).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "natsflow-system",
        global = true
    )]
    lease_namespace: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (the default).
    Run,
    /// Print the Pipeline CRD as YAML (what crds/pipeline.yaml holds).
    Crd,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", natsflow_operator::crd::crd_yaml());
        return ExitCode::SUCCESS;
    }
    telemetry::init(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    telemetry::serve(cli.metrics_addr, registry, ready.clone()).await?;

    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot configure a Kubernetes client (in-cluster or KUBECONFIG): {e}")
    })?;
    controller::check_crd(&client).await?;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);

    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("natsflow-operator-{}", std::process::id()));
    let leases = LeaseManagerBuilder::new(client.clone(), "natsflow-operator")
        .with_namespace(&cli.lease_namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, lease_task) = leases.watch().await;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    tracing::info!(
        "natsflow-operator {} started as {identity}; watching Pipelines in {}; waiting to lead (Lease {}/natsflow-operator)",
        env!("CARGO_PKG_VERSION"),
        cli.namespace.as_deref().unwrap_or("all namespaces"),
        cli.lease_namespace
    );
    let ctx = Arc::new(Context::new(client, metrics));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            changed = leader.changed() => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped");
                }
            }
        }
        if !*leader.borrow_and_update() {
            continue;
        }
        tracing::info!("leading: reconciling Pipelines");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = controller::run(
            ctx.clone(),
            cli.namespace.clone(),
            cli.max_concurrent_reconciles,
            async move {
                let _ = stop_rx.await;
            },
        );
        tokio::pin!(run);
        // None: the controller ended by itself.
        let stop = tokio::select! {
            _ = &mut run => None,
            _ = term.recv() => Some(true),
            _ = int.recv() => Some(true),
            _ = leader.wait_for(|l| !*l) => {
                tracing::warn!("lost the leader Lease: pausing until it is ours again");
                Some(false)
            }
        };
        let Some(stop) = stop else {
            // Its watches end only when told to: exit, so that the pod restarts.
            drop(leader);
            let _ = lease_task.await;
            anyhow::bail!("the controller stopped unexpectedly; exiting so the pod restarts");
        };
        let _ = stop_tx.send(());
        run.await;
        if stop {
            break;
        }
    }
    tracing::info!("shutting down: releasing the leader Lease");
    drop(leader);
    let _ = lease_task.await;
    Ok(())
}
