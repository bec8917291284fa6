//! authwatch's rules and detection engine.
//!
//! A pure library: no async runtime, no AWS, no I/O, no clock. Rule files come in as text,
//! events as decoded [`EventView`](authwatch_event::EventView)s carrying their own time, and
//! alerts go out as [`Alert`] values. That is what makes replays deterministic and the
//! engine testable, fuzzable and benchmarkable alone.
//!
//! - [`rule`]: the YAML rule format of detection.md and its validation; rule kinds.
//! - [`condition`]: `match`/`exclude` conditions (operators, groups, named lists).
//! - [`matcher`]: the stateless half of the engine: which rules an event matches, the keys it
//!   counts toward (also the conditions' old path, re-exports of [`condition`]).
//! - [`field`]: dotted field paths and the values found at them.
//! - [`engine`]: reorder buffer, auditID de-duplication, sliding windows, cooldown, bounded
//!   key memory (its parts are private modules: audit_id, hit, keys, window, dedup, firing).
//! - [`prefilter`]: the literal bytes a line must contain for any rule to match it.
//! - [`alert`]: the alert record every sink receives.
//! - [`testing`]: rule tests (`tests:` in rule files).
#![warn(missing_docs)]

mod absence;
pub mod alert;
mod audit_id;
pub mod condition;
mod dedup;
mod duration;
pub mod engine;
pub mod field;
mod firing;
mod hit;
mod keys;
pub mod matcher;
pub mod prefilter;
pub mod rule;
mod rule_test;
pub mod testing;
mod window;

pub use alert::{Alert, Group};
pub use engine::{Engine, EngineConfig, EngineStats, Matcher, Prepared, CARDINALITY_RULE};
pub use prefilter::Prefilter;
pub use rule::{check_unique_ids, load_rules, Rule, RuleError, RuleKind, Severity};
pub use testing::{run_tests, CaseOutcome, RuleTest};

/// The engine's maps are keyed by text an attacker chooses (addresses, auditIDs): foldhash is
/// several times cheaper than SipHash and, seeded per process, still not predictable.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
