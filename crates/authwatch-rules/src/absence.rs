//! The state of an absence rule ("A, then no B for the same key within T"): the keys open,
//! when each must be closed by, and the cooldowns of the keys that fired. The engine feeds it
//! matches in event-time order and asks it for the deadlines its watermark has passed; time
//! comes only from events, so a replay fires what the live run fired.

use std::collections::BTreeMap;
use std::sync::Arc;

use authwatch_event::Micros;

use crate::hit::HitInfo;
use crate::keys::Key;
use crate::HashMap;

/// One key opened and not yet closed.
#[derive(Debug)]
pub(crate) struct Open {
    /// When the opening event happened.
    pub(crate) at: Micros,
    /// Its place in [`AbsenceState::deadlines`].
    seq: u64,
    /// The opening event, for the alert (its evidence).
    pub(crate) info: Arc<HitInfo>,
}

/// What an absence rule keeps.
#[derive(Debug, Default)]
pub(crate) struct AbsenceState {
    open: HashMap<Key, Open>,
    /// (deadline, seq) → key, the earliest first.
    deadlines: BTreeMap<(Micros, u64), Key>,
    /// Keys that fired, quiet until this event time.
    cooling: HashMap<Key, Micros>,
    seq: u64,
}

impl AbsenceState {
    /// Keys open.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// An opening event at `at`: the key must be closed by `at + window`. A key already open
    /// keeps its first opening (the earliest deadline). Past `max_keys` open keys the one
    /// whose deadline is nearest is dropped, and `true` returned (counted as evicted).
    pub(crate) fn open(
        &mut self,
        key: Key,
        at: Micros,
        window: Micros,
        info: Arc<HitInfo>,
        max_keys: usize,
    ) -> bool {
        if self.open.contains_key(&key) {
            return false;
        }
        let mut evicted = false;
        if self.open.len() >= max_keys {
            if let Some((_, k)) = self.deadlines.pop_first() {
                self.open.remove(&k);
                evicted = true;
            }
        }
        self.seq += 1;
        self.deadlines
            .insert((at.saturating_add(window), self.seq), key.clone());
        self.open.insert(
            key,
            Open {
                at,
                seq: self.seq,
                info,
            },
        );
        evicted
    }

    /// A closing (or cancelling) event at `at`: the key is no longer awaited. A close dated
    /// before the opening event closes nothing.
    pub(crate) fn close(&mut self, key: &Key, at: Micros, window: Micros) {
        if let Some(o) = self.open.get(key) {
            if at >= o.at {
                let d = (o.at.saturating_add(window), o.seq);
                self.deadlines.remove(&d);
                self.open.remove(key);
            }
        }
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Micros> {
        self.deadlines.first_key_value().map(|((d, _), _)| *d)
    }

    /// Takes the earliest deadline if it is at or before `upto`: the key, its opening, and
    /// whether it fires (`false` inside the cooldown of an earlier firing of the key).
    pub(crate) fn take_due(
        &mut self,
        upto: Micros,
        cooldown: Micros,
    ) -> Option<(Micros, Key, Open, bool)> {
        let (d, key, open) = loop {
            let (&(d, _), _) = self.deadlines.first_key_value()?;
            if d > upto {
                return None;
            }
            let ((d, _), key) = self.deadlines.pop_first()?;
            if let Some(open) = self.open.remove(&key) {
                break (d, key, open);
            }
        };
        let fires = self.cooling.get(&key).is_none_or(|&until| d >= until);
        if fires {
            self.cooling.insert(key.clone(), d.saturating_add(cooldown));
        }
        Some((d, key, open, fires))
    }

    /// Forgets cooldowns that ended by `now`.
    pub(crate) fn sweep(&mut self, now: Micros) {
        self.cooling.retain(|_, until| *until > now);
    }
}
