//! The `authwatch` binary's library: inputs, the shared pipeline, sinks, and the commands.
//!
//! Decoding lives in `authwatch-event` and detection in `authwatch-rules`; this crate wires
//! them to files, standard input and outputs.

pub mod alarms;
pub mod config;
pub mod demo;
pub mod generate;
pub mod iam;
pub mod input;
pub mod live;
pub mod pipeline;
pub mod replay;
pub mod rule_files;
pub mod service;
pub mod sinks;
pub mod summary;
