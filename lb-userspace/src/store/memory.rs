//! An in-memory store with etcd's revision rules, for unit tests: one revision per write,
//! watches from a revision (refused below the compacted one), leases, and an outage switch.

use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

use tokio::sync::mpsc::{self, UnboundedSender};

use super::{Change, Entry, Expect, Kv, Listing, LocalFuture, Read, StoreError, WatchMessage};

#[derive(Default)]
struct State {
    revision: i64,
    keys: BTreeMap<String, (Entry, Option<i64>)>,
    /// Every change, for watches from an earlier revision.
    history: Vec<(i64, Change)>,
    compacted: i64,
    watchers: Vec<(String, UnboundedSender<WatchMessage>)>,
    leases: BTreeMap<i64, bool>,
    next_lease: i64,
    down: bool,
    /// Writes that lose to another writer first: each `put_if` with `ModRevision` pops one
    /// and lets it write before it.
    racers: Vec<Vec<u8>>,
}

/// Clones share one store (several nodes of a test).
#[derive(Clone, Default)]
pub struct MemoryKv(Rc<RefCell<State>>);

impl MemoryKv {
    /// From now on every operation fails and watches end (`false`: the store is back).
    pub fn set_down(&self, down: bool) {
        let mut state = self.0.borrow_mut();
        state.down = down;
        if down {
            for (_, watcher) in state.watchers.drain(..) {
                let _ = watcher.send(WatchMessage::Ended("connection refused".into()));
            }
        }
    }

    /// Forgets history up to the current revision, as etcd's compaction does.
    pub fn compact(&self) {
        let mut state = self.0.borrow_mut();
        state.compacted = state.revision;
        let compacted = state.compacted;
        state.history.retain(|(r, _)| *r > compacted);
    }

    /// Writes `value` to `key` as another writer would (etcdctl put).
    pub fn put(&self, key: &str, value: &[u8]) -> i64 {
        self.0.borrow_mut().write(key, value.to_vec(), None)
    }

    /// The next `n` compare-and-swap writes each find that another writer came first.
    pub fn race(&self, values: Vec<Vec<u8>>) {
        self.0.borrow_mut().racers = values;
    }

    /// A lease runs out (its keys go).
    pub fn expire(&self, lease: i64) {
        let mut state = self.0.borrow_mut();
        state.leases.insert(lease, false);
        let gone: Vec<String> = state
            .keys
            .iter()
            .filter(|(_, (_, l))| *l == Some(lease))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            state.delete(&key);
        }
    }

    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.0.borrow().keys.get(key).map(|(e, _)| e.value.clone())
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.0.borrow().down {
            return Err(StoreError {
                store: self.name(),
                reason: "connection refused".into(),
                refused: false,
            });
        }
        Ok(())
    }
}

impl State {
    fn write(&mut self, key: &str, value: Vec<u8>, lease: Option<i64>) -> i64 {
        self.revision += 1;
        let entry = Entry {
            key: key.into(),
            value,
            mod_revision: self.revision,
        };
        self.keys.insert(key.into(), (entry.clone(), lease));
        self.publish(Change::Put(entry));
        self.revision
    }

    fn delete(&mut self, key: &str) {
        if self.keys.remove(key).is_some() {
            self.revision += 1;
            let revision = self.revision;
            self.publish(Change::Delete {
                key: key.into(),
                revision,
            });
        }
    }

    fn publish(&mut self, change: Change) {
        let key = match &change {
            Change::Put(e) => e.key.clone(),
            Change::Delete { key, .. } => key.clone(),
        };
        self.history.push((self.revision, change.clone()));
        self.watchers.retain(|(prefix, watcher)| {
            !key.starts_with(prefix.as_str())
                || watcher
                    .send(WatchMessage::Changes(vec![change.clone()]))
                    .is_ok()
        });
    }
}

impl Kv for MemoryKv {
    fn name(&self) -> String {
        "etcd://memory/test".into()
    }

    fn get(&self, key: String) -> LocalFuture<'_, Result<Read, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let state = self.0.borrow();
            Ok(Read {
                entry: state.keys.get(&key).map(|(e, _)| e.clone()),
                revision: state.revision,
            })
        })
    }

    fn list(&self, prefix: String) -> LocalFuture<'_, Result<Listing, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let state = self.0.borrow();
            Ok(Listing {
                entries: state
                    .keys
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, (e, _))| e.clone())
                    .collect(),
                revision: state.revision,
            })
        })
    }

    fn put_if(
        &self,
        key: String,
        value: Vec<u8>,
        expect: Expect,
    ) -> LocalFuture<'_, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.0.borrow_mut();
            if matches!(expect, Expect::ModRevision(_)) {
                if let Some(racer) = state.racers.pop() {
                    state.write(&key, racer, None);
                }
            }
            let current = state.keys.get(&key).map(|(e, _)| e.mod_revision);
            let holds = match expect {
                Expect::Absent => current.is_none(),
                Expect::ModRevision(r) => current == Some(r),
            };
            Ok(holds.then(|| state.write(&key, value, None)))
        })
    }

    fn watch(
        &self,
        prefix: String,
        from: i64,
    ) -> LocalFuture<'_, Result<mpsc::UnboundedReceiver<WatchMessage>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.0.borrow_mut();
            let (tx, rx) = mpsc::unbounded_channel();
            if from <= state.compacted {
                let _ = tx.send(WatchMessage::Compacted {
                    oldest: state.compacted + 1,
                });
                return Ok(rx);
            }
            let past: Vec<Change> = state
                .history
                .iter()
                .filter(|(r, c)| *r >= from && key_of(c).starts_with(&prefix))
                .map(|(_, c)| c.clone())
                .collect();
            if !past.is_empty() {
                let _ = tx.send(WatchMessage::Changes(past));
            }
            state.watchers.push((prefix, tx));
            Ok(rx)
        })
    }

    fn grant(&self, _ttl_s: i64) -> LocalFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.0.borrow_mut();
            state.next_lease += 1;
            let lease = state.next_lease;
            state.leases.insert(lease, true);
            Ok(lease)
        })
    }

    fn keep_alive(&self, lease: i64) -> LocalFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            self.check()?;
            Ok(self.0.borrow().leases.get(&lease) == Some(&true))
        })
    }

    fn put_leased(
        &self,
        key: String,
        value: Vec<u8>,
        lease: i64,
    ) -> LocalFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.0.borrow_mut().write(&key, value, Some(lease));
            Ok(())
        })
    }
}

fn key_of(change: &Change) -> &str {
    match change {
        Change::Put(e) => &e.key,
        Change::Delete { key, .. } => key,
    }
}
