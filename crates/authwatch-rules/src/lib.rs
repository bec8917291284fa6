//! authwatch's rules and detection engine.
//!
//! A pure library: no async runtime, no AWS, no I/O, no clock. Rule files come in as text,
//! events as decoded [`EventView`](authwatch_event::EventView)s carrying their own time, and
//! alerts go out as [`Alert`] values. That is what makes replays deterministic and the
//! engine testable, fuzzable and benchmarkable alone.
//!
//! - [`rule`]: the YAML rule format of detection.md and its validation; rule kinds.
//! - [`matcher`]: `match`/`exclude` conditions (operators, groups, named lists).
//! - [`field`]: dotted field paths and the values found at them.
//! - [`engine`]: reorder buffer, auditID de-duplication, sliding windows, cooldown, bounded
//!   key memory.
//! - [`prefilter`]: the literal bytes a line must contain for any rule to match it.
//! - [`alert`]: the alert record every sink receives.
//! - [`testing`]: rule tests (`tests:` in rule files).
#![warn(missing_docs)]

pub mod alert;
pub mod engine;
pub mod field;
pub mod matcher;
pub mod prefilter;
pub mod rule;
pub mod testing;

pub use alert::{Alert, Group};
pub use engine::{Engine, EngineConfig, EngineStats, Matcher, Prepared, CARDINALITY_RULE};
pub use prefilter::Prefilter;
pub use rule::{check_unique_ids, load_rules, Rule, RuleError, RuleKind, Severity};
pub use testing::{run_tests, CaseOutcome, RuleTest};
