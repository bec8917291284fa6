//! The `authwatch` binary's library: inputs, the shared pipeline, sinks, and the commands.
//!
//! Decoding lives in `authwatch-event` and detection in `authwatch-rules`; this crate wires
//! them to files, standard input and outputs.

/// The runtime every AWS call of authwatch runs on: one thread (the work is waiting for
/// the network), timers and I/O enabled.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub mod alarms;
pub mod cli;
pub mod config;
pub mod demo;
pub mod generate;
pub mod iam;
pub mod investigate;
pub mod pipeline;
pub mod replay;
pub mod rule_files;
pub mod service;
pub mod sinks;
pub mod sources;
pub mod summary;
pub mod telemetry;
