//! natsflow operator: the `Pipeline` resource and the reconciler that runs it on Kubernetes.

pub mod children;
pub mod controller;
pub mod crd;
pub mod metrics;
pub mod progress;
pub mod reconcile;
pub mod status;
pub mod telemetry;
