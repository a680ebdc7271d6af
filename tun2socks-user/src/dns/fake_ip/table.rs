//! The fake-IP table proper: names, slots and addresses, with an LRU list of
//! the entries that may be reused. Single-threaded and clock-free: the pool
//! wraps it in a mutex and passes the time in.
//!
//! Every entry lives in a *slot* that owns one address of each enabled family
//! for good: slots are created on demand up to the capacity and never freed,
//! and reusing an entry gives its slot (and so its addresses) to a new name.
//! So the address-to-slot map is filled once per slot and never changes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::FakeAddrs;
use super::range::AddrRange;

/// Index of a slot; `NIL` ends the LRU list.
pub(super) type SlotId = u32;
const NIL: SlotId = SlotId::MAX;

/// The largest capacity the `u32` slot ids can address (`NIL` is taken).
pub(super) const MAX_CAPACITY: usize = (NIL - 1) as usize;

/// Every entry is pinned or was used less than a TTL ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Full;

struct Slot {
    name: Arc<str>,
    addrs: FakeAddrs,
    /// Live connections and flows using the entry; while non-zero the slot is
    /// out of the LRU list, so it can't be chosen for reuse.
    pins: u32,
    /// When an answer last handed the entry out or a connection last let go
    /// of it.
    last_use: Instant,
    prev: SlotId,
    next: SlotId,
}

pub(super) struct Table {
    slots: Vec<Slot>,
    by_name: HashMap<Arc<str>, SlotId>,
    by_addr: HashMap<IpAddr, SlotId>,
    /// Unpinned slots ordered by `last_use`, oldest first. Reuse only ever
    /// looks at the head: if the oldest entry is still within its TTL, every
    /// other one is too, so allocation is O(1) even when the table is full.
    head: SlotId,
    tail: SlotId,
    v4: Option<AddrRange>,
    v6: Option<AddrRange>,
    capacity: usize,
    ttl: Duration,
}

impl Table {
    /// `capacity` must not exceed what the ranges can hand out (nor
    /// [`MAX_CAPACITY`]); the pool's constructor clamps it.
    pub(super) fn new(v4: Option<AddrRange>, v6: Option<AddrRange>, capacity: usize, ttl: Duration) -> Self {
        Self {
            slots: Vec::new(),
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            head: NIL,
            tail: NIL,
            v4,
            v6,
            capacity,
            ttl,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The entry for `name` (already normalised), created or taken over from
    /// the least recently used reusable entry if there is none.
    pub(super) fn get_or_insert(&mut self, name: &str, now: Instant) -> Result<FakeAddrs, Full> {
        if let Some(&id) = self.by_name.get(name) {
            self.touch(id, now);
            return Ok(self.slot(id).addrs);
        }
        let id = match self.new_slot(name, now) {
            Some(id) => id,
            None => self.reuse_oldest(name, now)?,
        };
        let key = Arc::clone(&self.slot(id).name);
        self.by_name.insert(key, id);
        Ok(self.slot(id).addrs)
    }

    /// Pins the entry owning `addr`, if any: it keeps its name until unpinned.
    pub(super) fn pin(&mut self, addr: IpAddr) -> Option<(SlotId, Arc<str>)> {
        let id = *self.by_addr.get(&addr)?;
        if self.slot(id).pins == 0 {
            self.unlink(id);
        }
        let slot = self.slot_mut(id);
        // Pins are bounded by the number of live sessions, far below u32::MAX.
        slot.pins += 1;
        Some((id, Arc::clone(&slot.name)))
    }

    /// Undoes one [`pin`](Self::pin); the entry's TTL starts again at `now`.
    pub(super) fn unpin(&mut self, id: SlotId, now: Instant) {
        let slot = self.slot_mut(id);
        debug_assert!(slot.pins > 0, "unpin without pin");
        slot.pins = slot.pins.saturating_sub(1);
        slot.last_use = slot.last_use.max(now);
        if slot.pins == 0 {
            self.push_back(id);
        }
    }

    /// A fresh slot with the next free addresses, while below capacity.
    fn new_slot(&mut self, name: &str, now: Instant) -> Option<SlotId> {
        if self.slots.len() >= self.capacity {
            return None;
        }
        // The capacity is clamped to what each range can hand out, so an
        // enabled range that runs dry here is unreachable; treat it as full.
        let v4 = match &mut self.v4 {
            Some(range) => Some(Ipv4Addr::from(u32::try_from(range.take()?).ok()?)),
            None => None,
        };
        let v6 = match &mut self.v6 {
            Some(range) => Some(Ipv6Addr::from(range.take()?)),
            None => None,
        };
        let id = SlotId::try_from(self.slots.len()).ok()?;
        let addrs = FakeAddrs { v4, v6 };
        self.slots.push(Slot {
            name: name.into(),
            addrs,
            pins: 0,
            last_use: now,
            prev: NIL,
            next: NIL,
        });
        for addr in addrs.iter() {
            self.by_addr.insert(addr, id);
        }
        self.push_back(id);
        tracing::debug!(name, ?v4, ?v6, "fake-IP entry created");
        Some(id)
    }

    /// Gives the least recently used entry to `name`, if nothing has used it
    /// for a TTL.
    fn reuse_oldest(&mut self, name: &str, now: Instant) -> Result<SlotId, Full> {
        let id = self.head;
        if id == NIL || now.saturating_duration_since(self.slot(id).last_use) < self.ttl {
            return Err(Full);
        }
        let old = std::mem::replace(&mut self.slot_mut(id).name, name.into());
        if let Entry::Occupied(entry) = self.by_name.entry(old) {
            tracing::debug!(old = %entry.key(), new = name, "fake-IP entry reused");
            entry.remove();
        }
        self.touch(id, now);
        Ok(id)
    }

    /// Marks the entry as just handed out.
    fn touch(&mut self, id: SlotId, now: Instant) {
        let slot = self.slot_mut(id);
        slot.last_use = slot.last_use.max(now);
        if slot.pins == 0 {
            self.unlink(id);
            self.push_back(id);
        }
    }

    fn push_back(&mut self, id: SlotId) {
        let tail = self.tail;
        let slot = self.slot_mut(id);
        slot.prev = tail;
        slot.next = NIL;
        match tail {
            NIL => self.head = id,
            tail => self.slot_mut(tail).next = id,
        }
        self.tail = id;
    }

    fn unlink(&mut self, id: SlotId) {
        let slot = self.slot_mut(id);
        let (prev, next) = (slot.prev, slot.next);
        slot.prev = NIL;
        slot.next = NIL;
        match prev {
            NIL => self.head = next,
            prev => self.slot_mut(prev).next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.slot_mut(next).prev = prev,
        }
    }

    fn slot(&self, id: SlotId) -> &Slot {
        &self.slots[id as usize]
    }

    fn slot_mut(&mut self, id: SlotId) -> &mut Slot {
        &mut self.slots[id as usize]
    }

    /// Names of the reusable-candidate list, oldest first (tests only).
    #[cfg(test)]
    pub(super) fn lru_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut id = self.head;
        while id != NIL {
            names.push(self.slot(id).name.to_string());
            id = self.slot(id).next;
        }
        names
    }

    /// Panics unless the maps and the list agree with the slots (tests only).
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        assert_eq!(self.by_name.len(), self.slots.len(), "one name per slot");
        for (name, &id) in &self.by_name {
            assert_eq!(&self.slot(id).name, name);
        }
        for (addr, &id) in &self.by_addr {
            assert!(self.slot(id).addrs.iter().any(|a| a == *addr));
        }
        let (mut id, mut prev, mut linked) = (self.head, NIL, 0);
        while id != NIL {
            let slot = self.slot(id);
            assert_eq!(slot.pins, 0, "a pinned slot is in the LRU list");
            assert_eq!(slot.prev, prev);
            (prev, id, linked) = (id, slot.next, linked + 1);
        }
        assert_eq!(self.tail, prev);
        assert_eq!(linked, self.slots.iter().filter(|s| s.pins == 0).count());
    }
}
