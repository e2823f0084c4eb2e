//! The command lines of the worker binaries, in one place so a test can check that what the
//! operator renders is exactly what each worker reads.

use clap::Parser;

use crate::config::{BroadcasterArgs, CommonArgs, FetcherArgs, MapperArgs, SaverArgs};

/// natsflow fetcher: splits the data set into chunks, sends one to each ready mapper and
/// re-sends a chunk only when its ack timeout passes. Exactly one should run per pipeline.
#[derive(Parser, Debug)]
#[command(name = "natsflow-fetcher", version)]
pub struct FetcherCli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub fetcher: FetcherArgs,
}

/// natsflow mapper: takes one chunk at a time per slot from mapper_data (queue group
/// mapper.workers), transforms it and passes it to saver_data. Scale it with replicas.
#[derive(Parser, Debug)]
#[command(name = "natsflow-mapper", version)]
pub struct MapperCli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub mapper: MapperArgs,
}

/// natsflow saver: stores mapped chunks from saver_data (queue group saver.workers), each
/// chunk once, and acknowledges each on processed_data after it is durable.
#[derive(Parser, Debug)]
#[command(name = "natsflow-saver", version)]
pub struct SaverCli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub saver: SaverArgs,
}

/// natsflow broadcaster: forwards todo events from NATS to Telegram, Slack, Discord or a
/// generic webhook. Any number of replicas forward each event once (queue group broadcaster).
#[derive(Parser, Debug)]
#[command(name = "natsflow-broadcaster", version)]
pub struct BroadcasterCli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub broadcaster: BroadcasterArgs,
}
