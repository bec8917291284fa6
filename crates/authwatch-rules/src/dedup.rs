//! De-duplication: the auditIDs each rule has counted ([`SeenIds`]), so that a request read
//! twice counts once per rule, and their forgetting once no open window can need them. Moved
//! out of engine.rs (issue #19).

use authwatch_event::Micros;

use crate::audit_id::AuditId;
use crate::HashMap;

/// The auditIDs counted, with the rules that counted each (one bit per rule), to ignore later
/// copies (detection.md: "one request counts once per rule"). One map for all rules: an
/// address spray that several rules count costs one entry per request, not one per rule.
/// An entry is 40 bytes (a UUID id inline); ids are forgotten by a sweep of the map.
#[derive(Debug, Default)]
pub(crate) struct SeenIds {
    /// id → (time first counted, bits of the first 64 rules that counted it).
    map: HashMap<AuditId, (Micros, u64)>,
    /// Rules past the 64th (rare), one entry per (id, rule).
    more: HashMap<(AuditId, usize), Micros>,
    pub(crate) last_sweep: Option<Micros>,
}

impl SeenIds {
    /// Records that `rule` counted `id` (at `time`); false if it already had.
    pub(crate) fn first_for(&mut self, id: &AuditId, rule: usize, time: Micros) -> bool {
        let entry = match self.map.get_mut(id) {
            Some(e) => e,
            None => self.map.entry(id.clone()).or_insert((time, 0)),
        };
        if rule < 64 {
            let bit = 1u64 << rule;
            let fresh = entry.1 & bit == 0;
            entry.1 |= bit;
            return fresh;
        }
        self.more.insert((id.clone(), rule), time).is_none()
    }

    /// Forgets ids first counted at or before `before`. A whole pass over the map, but the
    /// engine sweeps at most every eighth of the longest window, so each id is visited a
    /// bounded number of times.
    pub(crate) fn forget(&mut self, before: Micros) {
        self.map.retain(|_, (first, _)| *first > before);
        if !self.more.is_empty() {
            self.more.retain(|_, t| *t > before);
        }
    }
}
