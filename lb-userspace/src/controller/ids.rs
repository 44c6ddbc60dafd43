//! Target ids and their quarantine.

use std::collections::BTreeSet;

use crate::dataplane::saved::SavedIds;

/// Why no id could be handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exhausted {
    /// Only quarantined ids are left: read the flow table and ask again.
    NeedsFlowScan,
    /// Every id is in use or named by a flow.
    Full,
}

/// Target ids. Fresh ids are handed out first; an id whose target is gone is quarantined and
/// only reused once no flow entry names it any more (checked by scanning the flow table when
/// fresh ids run out), so a stale flow can never be sent to an unrelated new target.
#[derive(Clone, Debug)]
pub struct IdPool {
    next_fresh: u32,
    max: u32,
    quarantined: BTreeSet<u32>,
    free: BTreeSet<u32>,
}

impl IdPool {
    pub fn new(max: u32) -> IdPool {
        IdPool {
            next_fresh: 0,
            max,
            quarantined: BTreeSet::new(),
            free: BTreeSet::new(),
        }
    }

    /// A free id: a freed one, else a fresh one, else a quarantined one that no flow entry
    /// names. `named` is the set of ids the flow table names, `None` when it has not been
    /// read: reading it is a walk of the whole table, done only when this asks for it.
    pub(super) fn allocate(&mut self, named: Option<&BTreeSet<u32>>) -> Result<u32, Exhausted> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        if self.next_fresh < self.max {
            self.next_fresh += 1;
            return Ok(self.next_fresh - 1);
        }
        if self.quarantined.is_empty() {
            return Err(Exhausted::Full);
        }
        let Some(named) = named else {
            return Err(Exhausted::NeedsFlowScan);
        };
        self.reclaim(named);
        self.free.pop_first().ok_or(Exhausted::Full)
    }

    pub(super) fn from_saved(saved: &SavedIds, max: u32) -> IdPool {
        IdPool {
            next_fresh: saved.next_fresh.min(max),
            max,
            quarantined: saved.quarantined.iter().copied().collect(),
            free: saved.free.iter().copied().filter(|&id| id < max).collect(),
        }
    }

    pub(super) fn saved(&self) -> SavedIds {
        SavedIds {
            next_fresh: self.next_fresh,
            quarantined: self.quarantined.iter().copied().collect(),
            free: self.free.iter().copied().collect(),
        }
    }

    pub(super) fn quarantine(&mut self, id: u32) {
        self.quarantined.insert(id);
    }

    /// Frees quarantined ids that no flow names.
    fn reclaim(&mut self, named: &BTreeSet<u32>) {
        let reusable: Vec<u32> = self.quarantined.difference(named).copied().collect();
        for id in reusable {
            self.quarantined.remove(&id);
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_until_exhausted_then_reclaimed_only_when_unreferenced() {
        let mut pool = IdPool::new(3);
        let taken: Vec<_> = (0..3).map(|_| pool.allocate(None).unwrap()).collect();
        assert_eq!(taken, [0, 1, 2]);
        // Nothing quarantined: full, without asking for the flow table.
        assert_eq!(pool.allocate(None), Err(Exhausted::Full));
        pool.quarantine(1);
        pool.quarantine(2);
        // Quarantined ids are reused only after the flow table was read.
        assert_eq!(pool.allocate(None), Err(Exhausted::NeedsFlowScan));
        // A flow still names 2: only 1 may be reused.
        let two = BTreeSet::from([2]);
        assert_eq!(pool.allocate(Some(&two)), Ok(1));
        assert_eq!(pool.allocate(Some(&two)), Err(Exhausted::Full));
        assert_eq!(pool.allocate(Some(&BTreeSet::new())), Ok(2));
    }

    #[test]
    fn a_saved_pool_is_the_same_pool() {
        let mut pool = IdPool::new(8);
        for _ in 0..4 {
            pool.allocate(None).unwrap();
        }
        pool.quarantine(1);
        pool.quarantine(3);
        pool.reclaim(&BTreeSet::from([3]));
        let again = IdPool::from_saved(&pool.saved(), 8);
        assert_eq!(again.saved(), pool.saved());
        // A smaller map (restart with fewer --max-targets) drops the ids it cannot hold.
        let smaller = IdPool::from_saved(&pool.saved(), 1);
        assert_eq!(smaller.saved().next_fresh, 1);
        assert!(smaller.saved().free.is_empty());
    }
}
