//! The shared store of several nodes (`sluice run --store etcd://host:port/prefix`): the
//! model every node applies, the stickiness keys they share and each node's report, kept in
//! etcd under one prefix:
//!
//! | key | value |
//! |---|---|
//! | `<prefix>/model` | the model as TOML ([`Model::to_toml`](crate::model::Model::to_toml)); one etcd revision is one whole model |
//! | `<prefix>/stickiness-keys` | the stickiness key file's text (`proxy::cookie_keys`), made once |
//! | `<prefix>/nodes/<name>` | a node's [`NodeReport`] as JSON, under a lease: gone when the node is |
//!
//! [`Kv`] is the seam: the few operations the daemon needs (read with revision, create-only
//! and compare-and-swap writes, a watch from a revision, leases). [`etcd::EtcdKv`] is etcd's;
//! [`memory::MemoryKv`] an in-memory one for unit tests. The rules (which revision to apply,
//! unreachable state, backoff) are pure in [`follow`]; [`compare_and_swap`] and [`seed`] are
//! the write rules over the seam.

pub mod access;
pub mod etcd;
pub mod follow;
pub mod memory;
mod url;

use std::{future::Future, pin::Pin};

pub use access::{AccessError, Credentials, Rotated, Rotation, StoreAccess};
pub use follow::{Backoff, Follow, NodeReport, Refusal, StoreStatus};
pub use url::{StoreUrl, UrlError};

/// A future on the daemon's single thread.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// How many times an edit is tried again after another node's write won the race.
pub const CAS_ATTEMPTS: usize = 5;

/// A key's value and the store revision that last changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A key as read, and the store's revision at the time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub entry: Option<Entry>,
    pub revision: i64,
}

/// Every key under a prefix, and the store's revision at the time: a watch from `revision +
/// 1` misses nothing that came after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub revision: i64,
}

/// What a conditional write expects of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Created only if absent.
    Absent,
    /// Replaced only if it was last changed at this revision.
    ModRevision(i64),
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Entry),
    Delete { key: String, revision: i64 },
}

/// What a watch delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes of one store revision or more, in order.
    Changes(Vec<Change>),
    /// The revision asked for is compacted away: read everything again and watch anew.
    Compacted { oldest: i64 },
    /// The watch ended (the store went away); nothing more comes.
    Ended(String),
}

/// The store cannot be reached, or refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the store {store} {}: {reason}", if *refused { "refused this node" } else { "cannot be reached" })]
pub struct StoreError {
    pub store: String,
    pub reason: String,
    /// The store answered and refused (a wrong password, a user without permission on the
    /// prefix): trying again does not help.
    pub refused: bool,
}

/// The operations the daemon needs of a store.
pub trait Kv {
    /// The store as the operator named it (`etcd://10.0.0.1:2379/sluice`), for messages.
    fn name(&self) -> String;
    fn get(&self, key: String) -> LocalFuture<'_, Result<Read, StoreError>>;
    fn list(&self, prefix: String) -> LocalFuture<'_, Result<Listing, StoreError>>;
    /// Writes `value` if `expect` holds: the revision written, or none when it did not hold.
    fn put_if(
        &self,
        key: String,
        value: Vec<u8>,
        expect: Expect,
    ) -> LocalFuture<'_, Result<Option<i64>, StoreError>>;
    /// Every change under `prefix` from store revision `from` on.
    fn watch(
        &self,
        prefix: String,
        from: i64,
    ) -> LocalFuture<'_, Result<tokio::sync::mpsc::UnboundedReceiver<WatchMessage>, StoreError>>;
    /// A lease of `ttl_s` seconds; keys written under it go when it expires.
    fn grant(&self, ttl_s: i64) -> LocalFuture<'_, Result<i64, StoreError>>;
    /// Renews `lease`: false if it expired already (grant a new one).
    fn keep_alive(&self, lease: i64) -> LocalFuture<'_, Result<bool, StoreError>>;
    fn put_leased(
        &self,
        key: String,
        value: Vec<u8>,
        lease: i64,
    ) -> LocalFuture<'_, Result<(), StoreError>>;
}

/// The keys under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` without a trailing `/` (`/sluice`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Everything of this prefix (with the `/`, so `/sluice2` is not in `/sluice`).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn model(&self) -> String {
        format!("{}/model", self.prefix)
    }

    pub fn stickiness_keys(&self) -> String {
        format!("{}/stickiness-keys", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.prefix)
    }
}

/// What [`seed`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seeded {
    /// This node wrote the first value, at this revision.
    Wrote(i64),
    /// Another node did before (or the key was there): its value.
    Found(Entry),
}

/// Creates `key` with `value` unless it exists (one of several nodes starting at once wins);
/// either way, the value now in the store.
pub async fn seed(kv: &dyn Kv, key: &str, value: Vec<u8>) -> Result<Seeded, StoreError> {
    if let Some(revision) = kv.put_if(key.into(), value, Expect::Absent).await? {
        return Ok(Seeded::Wrote(revision));
    }
    match kv.get(key.into()).await?.entry {
        Some(entry) => Ok(Seeded::Found(entry)),
        // Created and deleted again between the two calls: an operator at work.
        None => Err(StoreError {
            store: kv.name(),
            reason: format!("{key} was deleted while this node seeded it; start again"),
            refused: false,
        }),
    }
}

/// Why an edit through the store did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError<E> {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key holds nothing to edit.
    #[error("{0} holds no value")]
    Absent(String),
    /// The edit itself refused the value it was given.
    #[error(transparent)]
    Edit(E),
    /// Other writers won every one of [`CAS_ATTEMPTS`] tries.
    #[error("{key} was changed by other writers during each of {attempts} attempts; nothing was written, try again")]
    Lost { key: String, attempts: usize },
}

/// Read `key` at revision R, `edit` its value, write the result only if the key is still at R;
/// tried again from a fresh read when another writer came first, at most [`CAS_ATTEMPTS`]
/// times. The revision written.
pub async fn compare_and_swap<E>(
    kv: &dyn Kv,
    key: &str,
    mut edit: impl FnMut(&Entry) -> Result<Vec<u8>, E>,
) -> Result<i64, CasError<E>> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(entry) = kv.get(key.into()).await?.entry else {
            return Err(CasError::Absent(key.into()));
        };
        let value = edit(&entry).map_err(CasError::Edit)?;
        let expect = Expect::ModRevision(entry.mod_revision);
        if let Some(revision) = kv.put_if(key.into(), value, expect).await? {
            return Ok(revision);
        }
    }
    Err(CasError::Lost {
        key: key.into(),
        attempts: CAS_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests;
