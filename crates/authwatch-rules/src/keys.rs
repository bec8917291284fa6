//! A rule's keys: [`Key`], the encoded values of its `group_by` (24 bytes and, usually, no
//! allocation), and [`Keys`], the keys' states in a slab with a recency list through it, for
//! least-recently-counted eviction at `max_keys` in O(1). Moved out of engine.rs (issue #19).

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::net::Ipv6Addr;
use std::sync::Arc;

use crate::window::KeyState;

/// Longest encoded key kept inline in a [`Key`] (an IPv4 address encodes in at most 18).
const INLINE_KEY: usize = 22;

/// A key: the values of a rule's `group_by`. Each value is encoded as its length in bytes,
/// `:`, and the value, so no value can run into the next. Memory per key matters when an
/// attacker sprays addresses, so a key takes 24 bytes and, in the common cases, no allocation:
/// an encoding of up to [`INLINE_KEY`] bytes (any IPv4 address, short names) is stored inline,
/// one IPv6 address in canonical form as its 16 bytes, anything else in one shared allocation.
/// The same values always give the same variant, so the derived equality and hash are those
/// of the values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Ip6([u8; 16]),
    Heap(Arc<str>),
}

impl Key {
    pub(crate) fn new<S: AsRef<str>>(values: &[S]) -> Key {
        if let [v] = values {
            let v = v.as_ref();
            if v.contains(':') {
                if let Ok(ip) = v.parse::<Ipv6Addr>() {
                    // Only if it writes back the same: `::FFFF:1.2.3.4` stays text.
                    if ip.to_string() == v {
                        return Key::Ip6(ip.octets());
                    }
                }
            }
        }
        let mut s = String::with_capacity(values.iter().map(|v| v.as_ref().len() + 4).sum());
        for v in values {
            let v = v.as_ref();
            s.push_str(&v.len().to_string());
            s.push(':');
            s.push_str(v);
        }
        if s.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            // `s.len() <= 22` fits in a u8.
            return Key::Inline {
                len: s.len() as u8,
                bytes,
            };
        }
        Key::Heap(Arc::from(s))
    }

    /// The encoding [`Key::new`] made of the values (what a multi-replica deployment routes
    /// by): the same values always give the same text, whichever variant holds it.
    pub(crate) fn encoded(&self) -> Cow<'_, str> {
        match self {
            Key::Inline { len, bytes } => Cow::Borrowed(
                std::str::from_utf8(bytes.get(..usize::from(*len)).unwrap_or_default())
                    .unwrap_or_default(),
            ),
            Key::Ip6(b) => {
                let text = Ipv6Addr::from(*b).to_string();
                Cow::Owned(format!("{}:{text}", text.len()))
            }
            Key::Heap(s) => Cow::Borrowed(s),
        }
    }

    /// The values, in `group_by` order.
    pub(crate) fn values(&self) -> Vec<String> {
        if let Key::Ip6(b) = self {
            return vec![Ipv6Addr::from(*b).to_string()];
        }
        let encoded = self.encoded();
        let mut rest: &str = &encoded;
        let mut out = Vec::new();
        while let Some((len, tail)) = rest.split_once(':') {
            let Some(value) = len.parse::<usize>().ok().and_then(|l| tail.get(..l)) else {
                break;
            };
            out.push(value.to_owned());
            rest = &tail[value.len()..];
        }
        out
    }
}

/// No slot (the end of the recency list).
const NIL: u32 = u32::MAX;

/// One key's slot in [`Keys`].
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) key: Key,
    /// Neighbours in the recency list (least recently counted first), or [`NIL`].
    prev: u32,
    next: u32,
    pub(crate) state: KeyState,
}

/// A rule's keys: their states in a slab, found through a hash table of slab indexes (4 bytes
/// a bucket instead of a whole entry: at a million keys the table is half empty), and a
/// doubly linked recency list through the slots for least-recently-counted eviction in O(1).
#[derive(Debug)]
pub(crate) struct Keys {
    table: hashbrown::HashTable<u32>,
    slots: Vec<Option<Slot>>,
    /// Empty slots to reuse.
    free: Vec<u32>,
    /// Least and most recently counted key.
    head: u32,
    tail: u32,
    hasher: foldhash::fast::RandomState,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            table: hashbrown::HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl Keys {
    /// Most keys a rule can hold: slab indexes are `u32` ([`NIL`] excluded).
    pub(crate) const MAX: usize = (u32::MAX - 1) as usize;

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize).and_then(Option::as_ref)
    }

    pub(crate) fn slot_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }

    pub(crate) fn find(&self, key: &Key) -> Option<u32> {
        let h = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.table
            .find(h, |&i| {
                slots
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.key == *key)
            })
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let Some((prev, next)) = self.slot(i).map(|s| (s.prev, s.next)) else {
            return;
        };
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn link_last(&mut self, i: u32) {
        let tail = self.tail;
        if let Some(s) = self.slot_mut(i) {
            s.prev = tail;
            s.next = NIL;
        }
        match self.slot_mut(tail) {
            Some(t) => t.next = i,
            None => self.head = i,
        }
        self.tail = i;
    }

    /// Marks the key most recently counted.
    pub(crate) fn touch(&mut self, i: u32) {
        if self.tail != i {
            self.unlink(i);
            self.link_last(i);
        }
    }

    /// Adds a key (most recently counted); its index.
    pub(crate) fn insert(&mut self, key: Key, state: KeyState) -> u32 {
        let h = self.hasher.hash_one(&key);
        let slot = Slot {
            key,
            prev: NIL,
            next: NIL,
            state,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(h, i, |&j| {
            slots
                .get(j as usize)
                .and_then(Option::as_ref)
                .map_or(0, |s| hasher.hash_one(&s.key))
        });
        self.link_last(i);
        i
    }

    fn remove(&mut self, i: u32) {
        let Some(h) = self.slot(i).map(|s| self.hasher.hash_one(&s.key)) else {
            return;
        };
        self.unlink(i);
        if let Ok(e) = self.table.find_entry(h, |&j| j == i) {
            e.remove();
        }
        self.slots[i as usize] = None;
        self.free.push(i);
    }

    /// Removes the least recently counted key; false if there is none.
    pub(crate) fn evict_lru(&mut self) -> bool {
        let head = self.head;
        if self.slot(head).is_none() {
            return false;
        }
        self.remove(head);
        true
    }

    /// Keeps the keys for which `keep` is true; then gives memory back when most of the slab
    /// is empty (after a spray's keys expire).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut KeyState) -> bool) {
        for i in 0..self.slots.len() as u32 {
            let drop = self.slot_mut(i).is_some_and(|s| !keep(&mut s.state));
            if drop {
                self.remove(i);
            }
        }
        if self.slots.len() > 1024 && self.len() < self.slots.len() / 4 {
            self.compact();
        }
    }

    /// Rebuilds the slab with only the live keys, in recency order.
    fn compact(&mut self) {
        let mut live = Vec::with_capacity(self.len());
        let mut i = self.head;
        while let Some(slot) = self.slots.get_mut(i as usize).and_then(Option::take) {
            i = slot.next;
            live.push(slot);
        }
        *self = Keys {
            hasher: std::mem::take(&mut self.hasher),
            ..Keys::default()
        };
        self.slots.reserve_exact(live.len());
        for slot in live {
            self.insert(slot.key, slot.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit_id::AuditId;
    use crate::rule::RuleKind;
    use crate::window::Entry;

    #[test]
    fn keys_give_back_their_values_whatever_their_form() {
        let cases: &[&[&str]] = &[
            &["198.51.100.7"],
            &["255.255.255.255"],
            &["2001:db8::1"],
            &["::ffff:1.2.3.4"],
            &["2001:DB8::1"],
            &["2001:0db8::1"],
            &["system:serviceaccount:kube-system:a-rather-long-name"],
            &["alice", "api-1"],
            &["", ":"],
            &["1:2", "3"],
        ];
        for values in cases {
            let key = Key::new(values);
            assert_eq!(key.values(), values.to_vec(), "{key:?}");
        }
        assert!(matches!(Key::new(&["2001:db8::1"]), Key::Ip6(_)));
        assert!(matches!(
            Key::new(&["2001:DB8::1"]),
            Key::Heap(_) | Key::Inline { .. }
        ));
        assert!(matches!(Key::new(&["255.255.255.255"]), Key::Inline { .. }));
        assert_ne!(Key::new(&["1:2", "3"]), Key::new(&["1", "2:3"]));
        assert_eq!(std::mem::size_of::<Key>(), 24);
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<AuditId>(), 24);
    }

    #[test]
    fn keys_evict_least_recently_counted_and_give_memory_back() {
        let mut keys = Keys::default();
        let kind = RuleKind::Threshold;
        let ids: Vec<u32> = (0..3000)
            .map(|i| keys.insert(Key::new(&[i.to_string()]), KeyState::new(&kind)))
            .collect();
        keys.touch(ids[0]);
        assert!(keys.evict_lru());
        assert_eq!(keys.find(&Key::new(&["1"])), None);
        assert_eq!(keys.find(&Key::new(&["0"])), Some(ids[0]));
        let mut n = 0;
        keys.retain(|_| {
            n += 1;
            n % 10 == 0
        });
        assert_eq!(keys.len(), 299);
        assert!(keys.slots.len() < 1000);
        // Recency order survives compaction (the keys were counted in numeric order).
        let mut order = Vec::new();
        while let Some(k) = keys.slot(keys.head).map(|s| s.key.values()) {
            order.extend(k.iter().filter_map(|v| v.parse::<u32>().ok()));
            keys.evict_lru();
        }
        assert_eq!(order.len(), 299);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(keys.len(), 0);
    }
}
