//! natsflow workers: the fetcher, mapper and saver of the app9-compatible pipeline, and the
//! pieces they share (wire protocol, configuration, NATS connection, health and metrics).

pub mod broadcaster;
pub mod cli;
pub mod config;
pub mod fetcher;
pub mod local;
pub mod mapper;
pub mod metrics;
pub mod nats;
pub mod protocol;
pub mod saver;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod worker;
