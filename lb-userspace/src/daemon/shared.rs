//! The daemon in store mode (`sluice run --store etcd://...`): the model is the store's.
//! [`start`] reads it (seeding it from `--config` when the prefix holds none, with a
//! create-only write so that of two nodes starting at once exactly one seeds) and shares the
//! stickiness keys; [`follow`] then applies every new revision through
//! [`Daemon::apply_model`], keeps this node's report under a lease, and reconnects with
//! backoff when the store goes away (reading everything again, so no revision is missed,
//! compaction included); [`Daemon::submit`] writes CLI and API edits with compare-and-swap
//! and answers once this node has applied them.
//!
//! A revision this node cannot take (it does not validate, or cannot be applied here) is
//! refused: logged, shown in status and in the node's report, and the node keeps serving the
//! revision it runs.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, VecDeque},
    path::Path,
    rc::Rc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc::UnboundedReceiver;

use super::{Daemon, Origin};
use crate::{
    api::ControlError,
    controller::Changes,
    dataplane::{saved::Store, Dataplane},
    model::{edit::Edit, files, Model},
    store::{
        self, etcd::EtcdKv, AccessError, Backoff, CasError, Change, Credentials, Entry, Follow,
        Keys, Kv, LocalFuture, NodeReport, Rotated, Rotation, Seeded, StoreAccess, StoreError,
        StoreStatus, StoreUrl, WatchMessage,
    },
};

/// How long `sluice run --store` tries to reach the store before it refuses to start.
pub const START_PATIENCE: Duration = Duration::from_secs(10);
/// How long an edit waits for this node to apply the revision it wrote.
pub const APPLY_PATIENCE: Duration = Duration::from_secs(10);
/// The lease of a node's report: a dead node's report is gone this long after it died.
pub const NODE_TTL_S: i64 = 10;
/// How often the lease is renewed (and an outage noticed when nothing else happens).
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
/// Outcomes of recent revisions kept for the edits waiting on them.
const OUTCOMES_KEPT: usize = 64;

/// The store, as the daemon holds it.
pub struct Shared {
    /// The client in use: another one once renewed credentials work ([`Renewal`]).
    kv: RefCell<Rc<dyn Kv>>,
    store: String,
    renewal: Option<Renewal>,
    keys: Keys,
    follow: RefCell<Follow>,
    /// The newest revision this node has applied or refused.
    settled: tokio::sync::watch::Sender<i64>,
    outcomes: RefCell<VecDeque<(i64, Result<Changes, String>)>>,
    lease: Cell<Option<i64>>,
    /// What the store holds of this node's report.
    reported: RefCell<Option<NodeReport>>,
}

/// A client connected with `credentials`.
pub type Connect =
    Box<dyn Fn(Credentials) -> LocalFuture<'static, Result<Box<dyn Kv>, StoreError>>>;

/// How the daemon follows credential files renewed in place ([`Rotation`]'s rules): what reads
/// them and what connects with them.
pub struct Renewal {
    read: Box<dyn Fn() -> Result<Credentials, AccessError>>,
    connect: Connect,
    rotation: RefCell<Rotation>,
}

impl Renewal {
    pub fn new(
        in_use: Credentials,
        read: Box<dyn Fn() -> Result<Credentials, AccessError>>,
        connect: Connect,
    ) -> Renewal {
        Renewal {
            read,
            connect,
            rotation: RefCell::new(Rotation::new(in_use)),
        }
    }

    /// etcd's: the files `sluice run` was given, the endpoints of `url`.
    pub fn etcd(url: &StoreUrl, access: StoreAccess, in_use: Credentials) -> Renewal {
        let url = url.clone();
        Renewal::new(
            in_use,
            Box::new(move || access.load()),
            Box::new(move |credentials| {
                let url = url.clone();
                Box::pin(async move {
                    let kv = EtcdKv::new(&url, &credentials).await?;
                    Ok(Box::new(kv) as Box<dyn Kv>)
                })
            }),
        )
    }
}

impl Shared {
    pub fn new(kv: Box<dyn Kv>, keys: Keys, node: String) -> Shared {
        Shared {
            follow: RefCell::new(Follow::new(kv.name(), node)),
            store: kv.name(),
            kv: RefCell::new(Rc::from(kv)),
            renewal: None,
            keys,
            settled: tokio::sync::watch::Sender::new(0),
            outcomes: RefCell::default(),
            lease: Cell::new(None),
            reported: RefCell::new(None),
        }
    }

    /// From now on the credential files are read again at every renewal of the node's lease
    /// and after the store was lost; new ones replace the client once they work.
    pub fn renewing(mut self, renewal: Renewal) -> Shared {
        self.renewal = Some(renewal);
        self
    }

    fn kv(&self) -> Rc<dyn Kv> {
        Rc::clone(&self.kv.borrow())
    }

    /// The store as the operator named it.
    fn name(&self) -> String {
        self.store.clone()
    }

    /// Reads the credential files again: whether a client with new ones replaced the one in
    /// use (the store answered them; the watch is then started again on it).
    async fn renew(&self) -> bool {
        let Some(renewal) = &self.renewal else {
            return false;
        };
        let next = renewal.rotation.borrow_mut().read((renewal.read)());
        if renewal.rotation.borrow().settled() {
            self.follow.borrow_mut().credentials(None);
        }
        let credentials = match next {
            Rotated::Unchanged => return false,
            Rotated::Unusable(e) => {
                log::error!(
                    "the store's credential files changed and cannot be used: {e}; this node keeps reaching {} with the ones it has",
                    self.store
                );
                self.follow
                    .borrow_mut()
                    .credentials(Some(format!("the files cannot be used: {e}")));
                return false;
            }
            Rotated::Try(credentials) => credentials,
        };
        let checked = async {
            let kv = (renewal.connect)(credentials.clone()).await?;
            kv.get(self.keys.model()).await?;
            Ok::<_, StoreError>(kv)
        };
        match checked.await {
            Ok(kv) => {
                log::info!(
                    "the store's credential files changed: {} is reached with them from now on ({credentials:?})",
                    self.store
                );
                renewal.rotation.borrow_mut().taken(credentials);
                self.follow.borrow_mut().credentials(None);
                *self.kv.borrow_mut() = Rc::from(kv);
                true
            }
            Err(e) => {
                self.follow
                    .borrow_mut()
                    .credentials(Some(format!("the store does not take them: {e}")));
                if renewal.rotation.borrow_mut().failed(credentials) {
                    log::error!(
                        "the store's credential files changed, but they do not work yet ({e}); this node keeps the ones it has, and tries the files again every {KEEP_ALIVE_EVERY:?}"
                    );
                }
                false
            }
        }
    }

    pub fn status(&self) -> StoreStatus {
        self.follow.borrow().status().clone()
    }

    fn lost(&self, e: &StoreError) {
        if self.follow.borrow_mut().lost(now_ms(), e.reason.clone()) {
            log::warn!(
                "{e}; this node keeps forwarding with revision {} of the model and tries again",
                shown(self.follow.borrow().applied_revision())
            );
        }
    }

    fn reached(&self) {
        if let Some(since) = self.follow.borrow_mut().reached() {
            log::info!(
                "the store {} answers again (unreachable for {:.1} s)",
                self.name(),
                now_ms().saturating_sub(since) as f64 / 1000.0
            );
        }
    }

    fn settle(&self, revision: i64, outcome: Result<Changes, String>) {
        let mut outcomes = self.outcomes.borrow_mut();
        if outcomes.len() == OUTCOMES_KEPT {
            outcomes.pop_front();
        }
        outcomes.push_back((revision, outcome));
        drop(outcomes);
        self.settled.send_if_modified(|settled| {
            let newer = revision > *settled;
            *settled = (*settled).max(revision);
            newer
        });
    }
}

fn shown(revision: Option<i64>) -> String {
    revision.map_or("none".into(), |r| r.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why `sluice run --store` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}; sluice run --store starts only with the shared model (a data plane pinned by an earlier daemon keeps forwarding meanwhile): start etcd, or check --store (and --store-cacert, --store-cert, --store-key for an etcd that serves TLS)")]
    Unreachable(StoreError),
    #[error("{0}; check --store-user and --store-password-file, and that the user's role may read and write the prefix (etcdctl role grant-permission ROLE --prefix readwrite PREFIX/)")]
    Refused(StoreError),
    #[error("{store} holds no model ({key} is absent) and no --config was given to seed it: check the prefix, or start one node with --config FILE")]
    Empty { store: String, key: String },
    #[error("the model in {store} (revision {revision}) does not validate: {reason}; fix it in the store (etcdctl put {key} < FILE, after `sluice check FILE`)")]
    Invalid {
        store: String,
        key: String,
        revision: i64,
        reason: String,
    },
    #[error("the stickiness keys of {store} cannot be written to {file}: {source}")]
    KeyFile {
        store: String,
        file: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] crate::proxy::cookie_keys::KeyFileError),
}

/// What [`start`] read.
pub struct Started {
    pub shared: Shared,
    pub model: Model,
    pub revision: i64,
}

/// Connects to `url` with `credentials` (read from `access`'s files, which are followed from
/// then on: [`Renewal`]), waiting at most [`START_PATIENCE`] (not at all for a
/// store that refuses them); seeds the model from `config` if
/// the prefix holds none; makes the stickiness keys the store's (seeding them from `key_file`,
/// made if missing); reads the model to run first.
pub async fn start(
    url: &StoreUrl,
    access: &StoreAccess,
    credentials: &Credentials,
    config: Option<&Path>,
    node: &str,
    key_file: &Path,
) -> Result<Started, Box<dyn std::error::Error + Send + Sync>> {
    let keys = Keys::new(&url.prefix);
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    let mut backoff = Backoff::default();
    // Connecting with a user authenticates at once, so it is tried again as a read is.
    let kv = loop {
        let reached = async {
            let kv = EtcdKv::new(url, credentials).await?;
            kv.get(keys.model()).await?;
            Ok::<_, StoreError>(kv)
        };
        match reached.await {
            Ok(kv) => break kv,
            Err(e) if e.refused => return Err(StartError::Refused(e).into()),
            Err(e) if tokio::time::Instant::now() + Backoff::MAX > deadline => {
                return Err(StartError::Unreachable(e).into())
            }
            Err(e) => {
                log::warn!("{e}; trying again");
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    };
    let store = kv.name();
    let entry = match kv.get(keys.model()).await?.entry {
        Some(entry) => {
            if let Some(config) = config {
                log::warn!(
                    "{store} holds a model already (revision {}): it is applied, not {} (the store wins; --config only seeds an empty store)",
                    entry.mod_revision,
                    config.display()
                );
            }
            entry
        }
        None => {
            let Some(config) = config else {
                return Err(StartError::Empty {
                    store,
                    key: keys.model(),
                }
                .into());
            };
            let text = Model::load(config)?.to_toml()?;
            match store::seed(&kv, &keys.model(), text.clone().into_bytes()).await? {
                Seeded::Wrote(revision) => {
                    log::info!(
                        "{store} held no model: seeded it from {} (revision {revision})",
                        config.display()
                    );
                    Entry {
                        key: keys.model(),
                        value: text.into_bytes(),
                        mod_revision: revision,
                    }
                }
                Seeded::Found(entry) => {
                    log::info!(
                        "another node seeded {store} first (revision {}): {} is not applied",
                        entry.mod_revision,
                        config.display()
                    );
                    entry
                }
            }
        }
    };
    share_stickiness_keys(&kv, &keys, key_file).await?;
    let model = parse(&store, &entry).map_err(|reason| StartError::Invalid {
        store: store.clone(),
        key: keys.model(),
        revision: entry.mod_revision,
        reason,
    })?;
    Ok(Started {
        shared: Shared::new(Box::new(kv), keys, node.to_string()).renewing(Renewal::etcd(
            url,
            access.clone(),
            credentials.clone(),
        )),
        model,
        revision: entry.mod_revision,
    })
}

/// The store's stickiness keys become this node's key file (the proxy reads it as without a
/// store); the first node to start puts its own keys there (made if missing), once.
async fn share_stickiness_keys(
    kv: &dyn Kv,
    keys: &Keys,
    key_file: &Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let key = keys.stickiness_keys();
    let text = match kv.get(key.clone()).await?.entry {
        Some(entry) => entry.value,
        None => {
            crate::proxy::cookie_keys::CookieKeys::load_or_create(key_file)
                .map_err(StartError::Keys)?;
            let own =
                files::read_regular(key_file, 1 << 20).map_err(|source| StartError::KeyFile {
                    store: kv.name(),
                    file: key_file.display().to_string(),
                    source,
                })?;
            match store::seed(kv, &key, own).await? {
                Seeded::Wrote(_) => {
                    log::info!(
                        "stickiness keys: {} now holds this node's keys ({}); every node signs and verifies cookies with them",
                        key,
                        key_file.display()
                    );
                    return Ok(());
                }
                Seeded::Found(entry) => entry.value,
            }
        }
    };
    write_key_file(kv, key_file, &text)?;
    Ok(())
}

/// Makes `key_file` hold `text`: whether it changed.
fn write_key_file(kv: &dyn Kv, key_file: &Path, text: &[u8]) -> Result<bool, StartError> {
    if files::read_regular(key_file, 1 << 20).is_ok_and(|own| own == text) {
        return Ok(false);
    }
    if let Some(dir) = key_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    files::replace(key_file, text, Some(0o600)).map_err(|source| StartError::KeyFile {
        store: kv.name(),
        file: key_file.display().to_string(),
        source,
    })?;
    log::info!(
        "stickiness keys: {} holds the store's keys",
        key_file.display()
    );
    Ok(true)
}

/// The model in `entry`, validated as a file is.
fn parse(store: &str, entry: &Entry) -> Result<Model, String> {
    let text =
        std::str::from_utf8(&entry.value).map_err(|_| "the value is not UTF-8 text".to_string())?;
    let origin = format!("{store} revision {}", entry.mod_revision);
    Model::parse(text, &origin).map_err(|e| e.to_string())
}

impl<D: Dataplane, S: Store> Daemon<D, S> {
    /// From now on the model is `shared`'s: call once, before [`Daemon::apply_first`].
    pub fn share(&self, shared: Shared) {
        if self.shared.set(shared).is_err() {
            panic!("Daemon::share called twice");
        }
    }

    pub(super) fn store_status(&self) -> Option<StoreStatus> {
        self.shared.get().map(Shared::status)
    }

    pub(super) fn shared(&self) -> Option<&Shared> {
        self.shared.get()
    }

    /// The store's model at `revision`, read by [`start`], applied first (as `--config` is).
    pub fn apply_first(
        &self,
        model: &Model,
        revision: i64,
    ) -> Result<Changes, super::ApplyModelError> {
        let changes = self.apply_model(model, &Origin::Store { revision })?;
        if let Some(shared) = self.shared.get() {
            shared.follow.borrow_mut().offer(revision);
            shared.follow.borrow_mut().applied(revision);
            shared.settle(revision, Ok(Changes::default()));
        }
        Ok(changes)
    }

    /// A revision of the model from the store: applied if newer than the one running (or
    /// last refused), refused with the reason otherwise.
    fn apply_stored(&self, entry: &Entry) {
        let shared = self.shared.get().expect("store mode");
        let revision = entry.mod_revision;
        if !shared.follow.borrow_mut().offer(revision) {
            return;
        }
        let outcome = parse(&shared.name(), entry).and_then(|model| {
            self.apply_model(&model, &Origin::Store { revision })
                .map_err(|e| e.to_string())
        });
        match &outcome {
            Ok(_) => shared.follow.borrow_mut().applied(revision),
            Err(reason) => {
                log::error!(
                    "revision {revision} of the model in {} refused, this node keeps serving revision {}: {reason}",
                    shared.name(),
                    shown(shared.follow.borrow().applied_revision())
                );
                shared.follow.borrow_mut().refused(revision, reason.clone());
            }
        }
        shared.settle(revision, outcome);
    }

    fn stored_change(&self, change: &Change) {
        let shared = self.shared.get().expect("store mode");
        let nodes = shared.keys.nodes();
        match change {
            Change::Put(entry) if entry.key == shared.keys.model() => self.apply_stored(entry),
            Change::Put(entry) if entry.key == shared.keys.stickiness_keys() => {
                match write_key_file(&*shared.kv(), &self.key_file, &entry.value) {
                    Ok(true) => self.take_up_keys(),
                    Ok(false) => {}
                    Err(e) => log::error!("{e}"),
                }
            }
            Change::Put(entry) => {
                if let Some(name) = entry.key.strip_prefix(&nodes) {
                    let report = serde_json::from_slice(&entry.value).ok();
                    shared.follow.borrow_mut().node(name, report);
                }
            }
            Change::Delete { key, .. } if *key == shared.keys.model() => log::warn!(
                "{key} was deleted from the store: this node keeps serving revision {}; put a model there again",
                shown(shared.follow.borrow().applied_revision())
            ),
            Change::Delete { key, .. } => {
                if let Some(name) = key.strip_prefix(&nodes) {
                    shared.follow.borrow_mut().node(name, None);
                }
            }
        }
    }

    /// Everything under the prefix, read anew (start, reconnection, compaction).
    fn stored_listing(&self, entries: &[Entry]) {
        let shared = self.shared.get().expect("store mode");
        let nodes = shared.keys.nodes();
        let reports: BTreeMap<String, NodeReport> = entries
            .iter()
            .filter_map(|e| {
                let name = e.key.strip_prefix(&nodes)?;
                Some((name.to_string(), serde_json::from_slice(&e.value).ok()?))
            })
            .collect();
        shared.follow.borrow_mut().nodes(reports);
        for entry in entries.iter().filter(|e| !e.key.starts_with(&nodes)) {
            self.stored_change(&Change::Put(entry.clone()));
        }
    }

    /// New keys in the key file: the proxy reads them with the running model applied again
    /// (a model whose keys cannot be used is refused, and the keys before stay in use).
    fn take_up_keys(&self) {
        let model = self.controller.borrow().model().clone();
        if let Err(e) = self.apply_model(&model, &Origin::StoreKeys) {
            log::error!("the shared store's new stickiness keys are not used: {e}");
        }
    }

    /// A CLI or API edit in store mode: written with compare-and-swap on the model's revision
    /// (tried again when another node won the race), answered once this node applied it.
    pub async fn submit_to_store(&self, edit: Edit) -> Result<Changes, ControlError> {
        let shared = self.shared.get().expect("store mode");
        let store = shared.name();
        let running = || shown(shared.follow.borrow().applied_revision());
        let written = store::compare_and_swap(&*shared.kv(), &shared.keys.model(), |entry| -> Result<Vec<u8>, ControlError> {
            let model = parse(&store, entry).map_err(|reason| {
                ControlError::conflict(format!(
                    "{edit} refused: the model in the store (revision {}) does not validate: {reason}; fix it there first",
                    entry.mod_revision
                ))
            })?;
            let next = edit.apply_to(&model)?;
            let text = next
                .to_toml()
                .map_err(|e| ControlError::internal(e.to_string()))?;
            Ok(text.into_bytes())
        })
        .await;
        let revision = match written {
            Ok(revision) => revision,
            Err(CasError::Edit(e)) => {
                log::info!("control API: {edit} refused: {}", e.message);
                return Err(e);
            }
            Err(CasError::Store(e)) => {
                shared.lost(&e);
                let message = format!(
                    "{edit} refused: {e}; nothing was changed, this node keeps running revision {} of the model",
                    running()
                );
                log::error!("control API: {message}");
                return Err(ControlError::unavailable(message));
            }
            Err(e) => {
                let message = format!("{edit} refused: {e}");
                log::error!("control API: {message}");
                return Err(ControlError::conflict(message));
            }
        };
        log::info!("control API: {edit}: written to {store} as revision {revision}");
        let mut settled = shared.settled.subscribe();
        let waited =
            tokio::time::timeout(APPLY_PATIENCE, settled.wait_for(|s| *s >= revision)).await;
        if !matches!(waited, Ok(Ok(_))) {
            return Err(ControlError::unavailable(format!(
                "{edit} was written to {store} as revision {revision}, but this node has not applied it within {APPLY_PATIENCE:?} (it runs revision {}); see sluice status",
                running()
            )));
        }
        // Taken: only the edit that wrote a revision waits for it.
        let mut outcomes = shared.outcomes.borrow_mut();
        let outcome = outcomes
            .iter()
            .position(|(r, _)| *r == revision)
            .and_then(|i| outcomes.remove(i))
            .map(|(_, o)| o);
        drop(outcomes);
        match outcome {
            Some(Ok(changes)) => Ok(Changes {
                stored: Some((store, revision)),
                ..changes
            }),
            Some(Err(reason)) => Err(ControlError::conflict(format!(
                "{edit} was written to {store} as revision {revision}, but this node refused it and keeps revision {}: {reason}",
                running()
            ))),
            // A newer revision came first (after a compaction): it includes this edit.
            None => Ok(Changes {
                stored: Some((store, revision)),
                ..Changes::default()
            }),
        }
    }

    /// The refusal of `sluice reload` and SIGHUP in store mode.
    pub(super) fn reload_refused(&self, shared: &Shared) -> ControlError {
        let message = format!(
            "this daemon's model lives in the store {}: reload does not re-read --config (that would replace every node's model with this host's file); change it with the sluice commands, or write a whole model with `etcdctl put {} < FILE` after `sluice check FILE`",
            shared.name(),
            shared.keys.model()
        );
        log::warn!("{message}");
        ControlError::conflict(message)
    }

    /// Renews this node's lease and writes its report when it changed.
    async fn report_node(&self) -> Result<(), StoreError> {
        let shared = self.shared.get().expect("store mode");
        let lease = match shared.lease.get() {
            Some(lease) if shared.kv().keep_alive(lease).await? => lease,
            _ => {
                let lease = shared.kv().grant(NODE_TTL_S).await?;
                shared.lease.set(Some(lease));
                *shared.reported.borrow_mut() = None;
                lease
            }
        };
        let report = shared.follow.borrow().report();
        if shared.reported.borrow().as_ref() != Some(&report) {
            let name = shared.follow.borrow().status().node.clone();
            let value = serde_json::to_vec(&report).expect("a report serializes");
            shared
                .kv()
                .put_leased(shared.keys.node(&name), value, lease)
                .await?;
            *shared.reported.borrow_mut() = Some(report);
        }
        Ok(())
    }
}

/// What ended a watch.
enum Resync {
    Lost(StoreError),
    Compacted,
    /// Renewed credentials work: the client changed.
    Renewed,
}

/// Follows the store until the daemon stops: applies every new revision, keeps this node's
/// report, and when the store goes away keeps the running model, tries again with
/// [`Backoff`], and on return reads everything anew and watches from there.
pub async fn follow<D: Dataplane, S: Store>(daemon: Rc<Daemon<D, S>>, from: i64) {
    let shared = daemon.shared().expect("store mode");
    let mut backoff = Backoff::default();
    let mut from = Some(from);
    loop {
        // A watch from `from` on, or after a listing, from the listing's revision on.
        let start = match from.take() {
            Some(from) => Ok(from),
            None => shared.kv().list(shared.keys.all()).await.map(|listing| {
                daemon.stored_listing(&listing.entries);
                listing.revision + 1
            }),
        };
        let watch = match start {
            Ok(start) => shared.kv().watch(shared.keys.all(), start).await,
            Err(e) => Err(e),
        };
        let ended = match watch {
            Ok(watch) => {
                shared.reached();
                backoff.succeeded();
                watching(&daemon, watch).await
            }
            Err(e) => Resync::Lost(e),
        };
        match ended {
            Resync::Lost(e) => {
                shared.lost(&e);
                // Credentials that expired or were revoked may have been renewed in place.
                if !shared.renew().await {
                    tokio::time::sleep(backoff.failed()).await;
                }
            }
            Resync::Renewed => {}
            Resync::Compacted => log::info!(
                "{}: the revision to watch from was compacted; reading the model anew",
                shared.name()
            ),
        }
    }
}

async fn watching<D: Dataplane, S: Store>(
    daemon: &Daemon<D, S>,
    mut watch: UnboundedReceiver<WatchMessage>,
) -> Resync {
    let shared = daemon.shared().expect("store mode");
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
    loop {
        tokio::select! {
            message = watch.recv() => match message {
                Some(WatchMessage::Changes(changes)) => {
                    for change in &changes {
                        daemon.stored_change(change);
                    }
                    if let Err(e) = daemon.report_node().await {
                        return Resync::Lost(e);
                    }
                }
                Some(WatchMessage::Compacted { .. }) => return Resync::Compacted,
                Some(WatchMessage::Ended(reason)) => return Resync::Lost(StoreError { store: shared.name(), reason, refused: false }),
                None => return Resync::Lost(StoreError { store: shared.name(), reason: "the watch ended".into(), refused: false }),
            },
            _ = keep_alive.tick() => {
                if let Err(e) = daemon.report_node().await {
                    return Resync::Lost(e);
                }
                if shared.renew().await {
                    return Resync::Renewed;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
