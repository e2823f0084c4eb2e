//! `natsflow run`: the whole pipeline on one machine, as real processes running the same
//! binaries a cluster runs, with its own nats-server unless given one.

pub mod bench;
pub mod nats_server;
pub mod procs;
pub mod run;
