//! Kubernetes audit events as authwatch reads them.
//!
//! - [`time`]: event timestamps to microseconds and back.
//! - [`event`]: the lean, borrowed [`AuditEvent`] and [`decode`].
//! - [`record`]: [`RawRecord`], what every source yields, and [`visit_events`], the one path
//!   from a record to events (following log-shipper wrappers and `EventList`s).
//! - [`framing`]: the file layouts events come in (JSON Lines, CloudWatch's S3 export,
//!   `filter-log-events` output, subscription payloads) and their detection by content.
//!
//! This crate does no I/O of its own: sources hand it bytes.
#![warn(missing_docs)]

pub mod event;
pub mod framing;
pub mod record;
pub mod structure;
pub mod time;

pub use event::{decode, AuditEvent, DecodeError, Decoded, Text};
pub use record::{cluster_from_log_group, visit_events, EventView, RawRecord};
pub use time::Micros;
