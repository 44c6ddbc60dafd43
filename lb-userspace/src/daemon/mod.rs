//! `sluice run`'s daemon, once started: the controller, its health checker, the L7 proxy and
//! the saved state, and the one path by which a model takes effect ([`Daemon::apply_model`]:
//! start-up and takeover, SIGHUP, `sluice reload`, CLI edits). It answers the control API
//! ([`Backend`]) and Prometheus scrapes ([`metrics::Source`]); [`serve`] is its event loop.
//!
//! Everything here runs on one thread (a tokio `LocalSet`), so the API's requests, health
//! events and ticks share the controller without locks: each is handled between two awaits,
//! never in the middle of another.
//!
//! The daemon is generic over the data plane ([`Dataplane`]) and the saved state's store
//! ([`Store`]), so its logic is unit-tested without root (`tests.rs`).

pub mod check;
pub mod handover;
pub mod preflight;
mod report;
pub mod resolve;
pub mod restart;
mod serve;
pub mod shared;
pub mod signals;
pub mod systemd;
#[cfg(test)]
mod tests;

use std::{
    cell::{Cell, RefCell},
    fmt,
    path::PathBuf,
    time::{Duration, Instant},
};

pub use report::{fill_requests, http_listeners, stats_report, ActiveFlows, ACTIVE_WINDOW};
pub use serve::{serve, Ending};

use crate::{
    announce::{self, AnnounceStatus, Announcer, Bird, NodeState},
    api::{
        metrics::{self, Scrape},
        Backend, CollectError, ControlError, HealthTransition, StatsReport,
        HEALTH_TRANSITIONS_KEPT,
    },
    controller::{ApplyError, Changes, Controller},
    dataplane::{
        counters::ReadCounters,
        saved::{self, SavedState, StateMap, Store},
        Dataplane, Maps,
    },
    health::{Health, HealthChecker, HealthEvent},
    model::{
        edit::Edit,
        resolve::{KeepingLast, SystemResolver},
        Model, TargetKey,
    },
    proxy::{Proxy, ProxyError, Staged},
    rates::Rates,
};

/// How often drains are checked for their deregistration delay.
pub const TICK: Duration = Duration::from_secs(1);

/// The window traffic rates are averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What the daemon is made of; see [`Daemon::new`].
pub struct Parts<D: Dataplane, S: Store> {
    pub controller: Controller<D>,
    pub checker: HealthChecker<TargetKey>,
    /// The configuration file that `sluice reload` and SIGHUP re-read.
    pub config: Option<PathBuf>,
    pub counters: Box<dyn ReadCounters>,
    /// Where the controller's state is saved for the next daemon (the pinned `STATE` map).
    pub state: S,
    /// The stickiness key file (`sluice run --stickiness-keys`).
    pub key_file: PathBuf,
    /// Listening sockets a predecessor handed over, for the first model's listeners.
    pub inherited: Vec<std::net::TcpListener>,
    /// The proxy's connection limit, workers and listen backlog (`sluice run
    /// --max-connections`, `--proxy-workers`, `--listen-backlog`).
    pub proxy: crate::proxy::Settings,
    /// Serving or draining (`sluice node drain`), as the previous daemon left it.
    pub node: NodeState,
}

pub struct Daemon<D: Dataplane = Maps, S: Store = StateMap> {
    controller: RefCell<Controller<D>>,
    checker: RefCell<HealthChecker<TargetKey>>,
    config: Option<PathBuf>,
    counters: Box<dyn ReadCounters>,
    state: RefCell<S>,
    /// What was last saved in `state`.
    saved: RefCell<Option<SavedState>>,
    /// `sluice down` asked: stop, then detach and remove the pins.
    down: tokio::sync::Notify,
    going_down: Cell<bool>,
    /// Traffic samples for the rates in status.
    rates: RefCell<Rates<RateKey>>,
    /// Started with the first http/https listener.
    proxy: RefCell<Option<Proxy>>,
    /// The stickiness key file.
    key_file: PathBuf,
    /// Handed over by a predecessor; taken by the first model's listeners.
    inherited: RefCell<Vec<std::net::TcpListener>>,
    /// The connection-state tables as the last complete sweep counted them.
    tables: RefCell<Option<crate::api::ConnectionTables>>,
    proxy_settings: crate::proxy::Settings,
    /// Keeps BIRD announcing the listener addresses this node serves (`--bird-routes`).
    announcer: RefCell<Option<Announcer>>,
    node: Cell<NodeState>,
    /// The latest health transitions, oldest first.
    transitions: RefCell<std::collections::VecDeque<HealthTransition>>,
    /// What the set-up checks found (see [`preflight`]), for status.
    warnings: RefCell<Vec<String>>,
    /// The interfaces the set-up checks look at; none until [`Daemon::check_setup`].
    checked_ifaces: RefCell<Option<Vec<String>>>,
    /// XDP is attached to no interface: models with tcp/udp listeners are refused.
    l7_only: Cell<bool>,
    /// The shared store the model comes from (`sluice run --store`), if any.
    shared: std::cell::OnceCell<shared::Shared>,
}

/// Whose traffic a rate is: ids included, so an id given to something new starts over.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RateKey {
    Listener(String, u32),
    Target(TargetKey, u32),
}

/// Where a new model comes from, for the log and for what a refusal says.
#[derive(Clone, Debug)]
pub enum Origin {
    /// `sluice run`'s `--config` (or none), on a fresh or adopted data plane.
    Start,
    /// The configuration file again: SIGHUP or `sluice reload`.
    Reload(PathBuf),
    /// A change through the control API (`sluice target|listener ...`).
    Edit(Edit),
    /// Host-name targets resolved again to other addresses.
    Resolve,
    /// A revision of the model in the shared store (`sluice run --store`).
    Store { revision: i64 },
    /// The running model again, for new stickiness keys from the shared store.
    StoreKeys,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Start => write!(f, "the configuration"),
            Origin::Reload(path) => write!(f, "reload of {}", path.display()),
            Origin::Edit(edit) => write!(f, "{edit}"),
            Origin::Resolve => write!(f, "new addresses of host-name targets"),
            Origin::Store { revision } => write!(f, "revision {revision} of the shared model"),
            Origin::StoreKeys => write!(f, "the shared store's new stickiness keys"),
        }
    }
}

/// Why a model did not take effect; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyModelError {
    /// An http/https listener that cannot be served: its address is taken, or a file it names
    /// (certificate, access log, stickiness keys) cannot be used.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A tcp/udp listener, while XDP is attached to no interface (`sluice run` without
    /// `--iface`).
    #[error("listener(s) {0} are served by XDP, which this daemon attached to no interface (it runs without --iface); restart it with --iface IF to serve tcp/udp listeners")]
    NoInterface(String),
}

impl<D: Dataplane, S: Store> Daemon<D, S> {
    /// The daemon, with `controller` as it stands (fresh, or adopted from a previous daemon);
    /// a model takes effect with [`Daemon::apply_model`]. The checker starts from the
    /// controller's known health.
    pub fn new(parts: Parts<D, S>) -> Daemon<D, S> {
        let Parts {
            controller,
            mut checker,
            config,
            counters,
            state,
            key_file,
            inherited,
            proxy: proxy_settings,
            node,
        } = parts;
        checker.adopt(
            controller
                .known_health()
                .map(|(key, health)| (key.clone(), health)),
        );
        Daemon {
            controller: RefCell::new(controller),
            checker: RefCell::new(checker),
            config,
            counters,
            state: RefCell::new(state),
            saved: RefCell::new(None),
            down: tokio::sync::Notify::new(),
            going_down: Cell::new(false),
            rates: RefCell::new(Rates::new(RATE_WINDOW)),
            proxy: RefCell::new(None),
            key_file,
            inherited: RefCell::new(inherited),
            tables: RefCell::new(None),
            proxy_settings,
            announcer: RefCell::new(None),
            node: Cell::new(node),
            transitions: RefCell::default(),
            warnings: RefCell::default(),
            checked_ifaces: RefCell::default(),
            l7_only: Cell::new(false),
            shared: std::cell::OnceCell::new(),
        }
    }

    /// From now on, BIRD announces the listener addresses this node can serve (call it once
    /// the data plane forwards, on the daemon's `LocalSet`).
    pub fn start_announcing(&self, bird: Bird) {
        let first = self.announcement();
        *self.announcer.borrow_mut() = Some(Announcer::start(bird, first));
    }

    /// What this node should announce now.
    fn announcement(&self) -> announce::Announcement {
        let controller = self.controller.borrow();
        announce::plan(
            controller.model(),
            &controller.target_views(),
            self.node.get(),
        )
    }

    /// After anything that may change what can be served: BIRD is told (by its task).
    fn announce(&self) {
        if let Some(announcer) = self.announcer.borrow().as_ref() {
            announcer.want(self.announcement());
        }
    }

    /// `sluice down`: withdraws every address, waiting at most `patience` for BIRD.
    pub async fn withdraw_all(&self, patience: Duration) {
        let announcer = self.announcer.borrow_mut().take();
        if let Some(announcer) = announcer {
            announcer.want(announce::Announcement::default());
            match announcer.settled(patience).await {
                Ok(()) => log::info!("down: every listener address withdrawn from BGP"),
                Err(e) => log::error!(
                    "down: the listener addresses may still be announced: {e}; remove them from BIRD's routes file by hand"
                ),
            }
        }
    }

    /// The node's state and announcements, if this daemon announces.
    pub fn announce_status(&self) -> Option<AnnounceStatus> {
        let announcer = self.announcer.borrow();
        announcer.as_ref().map(|a| a.status(self.node.get()))
    }

    /// Makes `model` the running one, all or nothing: first everything its http/https
    /// listeners need is made ready (certificates read, all again except for an edit; access
    /// logs opened; stickiness keys read; sockets bound for new addresses), then the data plane
    /// applied, the proxy switched to the new listeners (those whose address stays keep their
    /// sockets), the health checker told which targets to check, and the state saved. Refused
    /// with nothing changed when a listener cannot be served or the data plane cannot take the
    /// model.
    pub fn apply_model(&self, model: &Model, origin: &Origin) -> Result<Changes, ApplyModelError> {
        if self.l7_only.get() {
            if let Some(l4) = model.l4_listeners_shown() {
                return Err(ApplyModelError::NoInterface(l4));
            }
        }
        let reread = !matches!(origin, Origin::Edit(_));
        let staged = self.stage_proxy(model, reread)?;
        let changes = self.controller.borrow_mut().apply(model, Instant::now())?;
        self.commit_proxy(staged);
        self.recheck();
        self.save();
        self.announce();
        self.recheck_setup(model);
        warn_unheld_addresses(model);
        match origin {
            Origin::Start => {}
            Origin::Reload(path) if changes.is_empty() => {
                log::info!("reloaded {}: no changes", path.display());
            }
            Origin::Reload(path) => log::info!("reloaded {}", path.display()),
            Origin::Edit(edit) => log::info!("control API: {edit}, until the next reload"),
            Origin::Resolve => {}
            Origin::Store { revision } => {
                log::info!("applied revision {revision} of the shared model")
            }
            Origin::StoreKeys => log::info!("stickiness keys from the shared store taken up"),
        }
        log_changes(&changes);
        Ok(changes)
    }

    /// A target's health changed: tables and target states follow.
    pub fn health_changed(&self, event: &HealthEvent<TargetKey>) {
        let mut transitions = self.transitions.borrow_mut();
        if transitions.len() == HEALTH_TRANSITIONS_KEPT {
            transitions.pop_front();
        }
        transitions.push_back(HealthTransition {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            group: event.target.group.clone(),
            target: event.target.addr,
            from: event.from.name().to_string(),
            to: event.to.name().to_string(),
            reason: event.reason.to_string(),
        });
        drop(transitions);
        let applied =
            self.controller
                .borrow_mut()
                .set_health(&event.target, event.to, Instant::now());
        // Every transition is news an operator wants to see (ELB emits an event for each);
        // a target that becomes healthy is good news (INFO), any other change a warning.
        // Logged once the tables follow it: from this line on, traffic does too.
        let level = if event.to == Health::Healthy {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "target {} of '{}': {} -> {}: {}",
            event.target.addr,
            event.target.group,
            event.from.name(),
            event.to.name(),
            event.reason
        );
        match applied {
            Ok(changes) => log_changes(&changes),
            Err(e) => log::error!("applying the health of {}: {e}", event.target.addr),
        }
        self.save();
        self.sync_routes();
        self.announce();
    }

    /// Once a [`TICK`]: ends drains whose deregistration delay is over, saves, samples rates,
    /// sweeps the connection-state tables.
    pub fn tick(&self, now: Instant) {
        let expired = self.controller.borrow_mut().tick(now);
        match expired {
            Ok(expired) => {
                for key in &expired {
                    log::info!(
                        "target {} of '{}': deregistration delay over; its remaining flows move to other targets",
                        key.addr,
                        key.group
                    );
                }
                if !expired.is_empty() {
                    self.sync_routes();
                    self.announce();
                }
            }
            Err(e) => log::error!("ending drains: {e}"),
        }
        self.save();
        self.sample_rates(now);
        self.sweep();
    }

    /// Expires idle and closed connection state (ports go back), a bounded share per tick.
    fn sweep(&self) {
        match self.controller.borrow_mut().sweep(monotonic_ns()) {
            Ok(Some(counts)) => *self.tables.borrow_mut() = Some((&counts).into()),
            Ok(None) => {}
            Err(e) => log::warn!("{e}"),
        }
    }

    /// Runs the set-up checks for sluice attached to `ifaces` now and after every change of
    /// the model; warnings are logged when they first appear and shown by `status` and the
    /// status page while they hold.
    pub fn check_setup(&self, ifaces: Vec<String>) {
        *self.checked_ifaces.borrow_mut() = Some(ifaces);
        let model = self.controller.borrow().model().clone();
        self.recheck_setup(&model);
    }

    fn recheck_setup(&self, model: &Model) {
        let Some(ifaces) = self.checked_ifaces.borrow().clone() else {
            return;
        };
        let warnings = preflight::check(&ifaces, model);
        let mut shown = self.warnings.borrow_mut();
        for warning in warnings.iter().filter(|w| !shown.contains(w)) {
            log::warn!("{warning}");
        }
        *shown = warnings;
    }

    /// `sluice down` asked for this daemon to stop, detach and remove its pins.
    /// This daemon serves http/https listeners only (no `--iface`): from now on a model with
    /// a tcp/udp listener is refused.
    pub fn serve_l7_only(&self) {
        self.l7_only.set(true);
    }

    pub fn going_down(&self) -> bool {
        self.going_down.get()
    }

    /// Resolves when `sluice down` asks the daemon to stop.
    pub async fn down_requested(&self) {
        self.down.notified().await
    }

    /// The L7 proxy, if it runs, for a stopping daemon's drain (after the control loop).
    pub fn take_proxy(&self) -> Option<Proxy> {
        self.proxy.borrow_mut().take()
    }

    pub fn controller(&self) -> std::cell::Ref<'_, Controller<D>> {
        self.controller.borrow()
    }

    /// Makes ready what the proxy needs to serve `model` (see [`Proxy::stage`]), starting the
    /// proxy if `model` is the first with http/https listeners.
    fn stage_proxy(&self, model: &Model, reread: bool) -> Result<Staged, ProxyError> {
        let mut proxy = self.proxy.borrow_mut();
        let inherited = self.inherited.take();
        let staged = Proxy::stage_inheriting(
            proxy.as_ref(),
            model,
            reread,
            &self.key_file,
            inherited,
            &self.proxy_settings,
        )?;
        if staged.serves() && proxy.is_none() {
            *proxy = Some(Proxy::start(&self.proxy_settings)?);
        }
        Ok(staged)
    }

    /// After the controller applied the model `staged` was made for: the proxy serves it.
    fn commit_proxy(&self, staged: Staged) {
        let controller = self.controller.borrow();
        if let Some(proxy) = self.proxy.borrow_mut().as_mut() {
            proxy.commit(controller.model(), &controller.target_views(), staged);
        }
    }

    /// Gives the L7 proxy the controller's targets after a health change or a drain's end.
    fn sync_routes(&self) {
        let controller = self.controller.borrow();
        if let Some(proxy) = self.proxy.borrow_mut().as_mut() {
            proxy.update_routes(controller.model(), &controller.target_views());
        }
    }

    /// After every change of the model: the checker checks exactly the registered targets.
    fn recheck(&self) {
        let checks = self.controller.borrow().health_checks();
        self.checker.borrow_mut().set_targets(checks);
    }

    /// Saves the controller's state for a daemon that takes over later, when it changed.
    pub fn save(&self) {
        let mut state = self.controller.borrow().saved(Instant::now());
        state.node = self.node.get();
        if self.saved.borrow().as_ref() == Some(&state) {
            return;
        }
        match saved::save(&mut *self.state.borrow_mut(), &state) {
            Ok(()) => *self.saved.borrow_mut() = Some(state),
            Err(e) => log::error!("saving the state for the next daemon: {e}"),
        }
    }

    /// One sample of every listener's and target's traffic, for the rates.
    fn sample_rates(&self, now: Instant) {
        match stats_report(&self.controller.borrow(), &*self.counters) {
            Ok(report) => {
                let listeners = report
                    .listeners
                    .iter()
                    .map(|l| (RateKey::Listener(l.name.clone(), l.id), l.packets, l.bytes));
                let targets = report.targets.iter().map(|t| {
                    let key = TargetKey {
                        group: t.group.clone(),
                        addr: t.address,
                    };
                    (RateKey::Target(key, t.id), t.packets, t.bytes)
                });
                self.rates
                    .borrow_mut()
                    .record(now, listeners.chain(targets));
            }
            Err(e) => log::warn!("sampling traffic for rates: {e}"),
        }
    }

    /// The counters, with health reasons from the checker, rates from the samples and, when
    /// `flows`, the active flows (a walk of the flow table).
    fn report(&self, flows: bool) -> Result<StatsReport, CollectError> {
        let controller = self.controller.borrow();
        let mut report = stats_report(&controller, &*self.counters)?;
        report.connection_tables = self.tables.borrow().clone();
        if flows {
            let entries = controller.dataplane().flows().into_iter().map(|(_, f)| f);
            ActiveFlows::count(entries, monotonic_ns(), ACTIVE_WINDOW).fill(&mut report);
        }
        let proxy = self
            .proxy
            .borrow()
            .as_ref()
            .map(Proxy::stats)
            .unwrap_or_default();
        report.http_listeners = http_listeners(controller.model(), &proxy);
        report.announcement = self.announce_status();
        fill_requests(&mut report, &proxy);
        report.warnings = self.warnings.borrow().clone();
        report.store = self.store_status();
        report.health_transitions = self.transitions.borrow().iter().cloned().collect();
        let checker = self.checker.borrow();
        let rates = self.rates.borrow();
        for listener in &mut report.listeners {
            let key = RateKey::Listener(listener.name.clone(), listener.id);
            listener.rate = rates.rate(&key).unwrap_or_default();
        }
        for target in &mut report.targets {
            let key = TargetKey {
                group: target.group.clone(),
                addr: target.address,
            };
            target.reason = checker
                .status(&key)
                .and_then(|s| s.health.reason().map(ToString::to_string));
            target.rate = rates
                .rate(&RateKey::Target(key, target.id))
                .unwrap_or_default();
        }
        Ok(report)
    }
}

/// A refused reload or change, answered with `message`.
fn refused(e: &ApplyModelError, message: String) -> ControlError {
    match e {
        // Failing to write the maps is the daemon's fault; everything else the request's.
        ApplyModelError::Apply(ApplyError::Maps(_)) => ControlError::internal(message),
        ApplyModelError::Apply(_) => ControlError::conflict(message),
        // An address in use is a conflict with the world; a file the model names, its fault.
        ApplyModelError::Proxy(ProxyError::Bind { .. }) => ControlError::conflict(message),
        ApplyModelError::Proxy(ProxyError::Runtime(_)) => ControlError::internal(message),
        ApplyModelError::Proxy(_) => ControlError::invalid(message),
        ApplyModelError::NoInterface(_) => ControlError::conflict(message),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the XDP program's clock (`bpf_ktime_get_coarse_ns`, the
/// same clock at tick precision).
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

impl<D: Dataplane, S: Store> Backend for Daemon<D, S> {
    fn stats(&self) -> Result<StatsReport, CollectError> {
        self.report(true)
    }

    /// Re-reads the model, dropping changes made through the API; a file that does not
    /// validate changes nothing, and neither does one without listeners (an empty or
    /// comments-only file, a file truncated by a careless edit) while listeners run, unless
    /// `allow_empty`.
    fn reload(&self, allow_empty: bool) -> Result<Changes, ControlError> {
        let _reloading = systemd::Reloading::begin();
        if let Some(shared) = self.shared() {
            return Err(self.reload_refused(shared));
        }
        let Some(path) = &self.config else {
            let message = "sluice run was started without --config: there is no file to reload";
            log::warn!("{message}");
            return Err(ControlError::conflict(message));
        };
        let refused = |e: &dyn fmt::Display| {
            format!(
                "reload of {} refused, running configuration kept: {e}",
                path.display()
            )
        };
        // A name that stopped resolving keeps the address it has now (as the refresh does).
        let keeping = KeepingLast {
            resolver: &SystemResolver,
            last: self.controller.borrow().model().resolved_hosts(),
        };
        let model = Model::load_with(path, &keeping).map_err(|e| {
            let message = refused(&e);
            log::error!("{message}");
            ControlError::invalid(message)
        })?;
        let running = self.controller.borrow().model().listeners.len();
        if model.listeners.is_empty() && running > 0 && !allow_empty {
            let message = refused(&format!(
                "the file has no listeners, and applying it would remove all {running}; to do that on purpose run `sluice reload --allow-empty` (SIGHUP never does)"
            ));
            log::error!("{message}");
            return Err(ControlError::conflict(message));
        }
        self.apply_model(&model, &Origin::Reload(path.clone()))
            .map_err(|e| {
                let message = refused(&e);
                log::error!("{message}");
                self::refused(&e, message)
            })
    }

    fn change(&self, edit: Edit) -> Result<Changes, ControlError> {
        let model = edit.apply_to(self.controller.borrow().model());
        let model = model.inspect_err(|e| log::info!("control API: {edit} refused: {e}"))?;
        let origin = Origin::Edit(edit);
        self.apply_model(&model, &origin).map_err(|e| {
            let message = format!("{origin} refused, running configuration kept: {e}");
            log::error!("control API: {message}");
            refused(&e, message)
        })
    }

    /// In store mode, through the store ([`Daemon::submit_to_store`]).
    fn submit(&self, edit: Edit) -> crate::store::LocalFuture<'_, Result<Changes, ControlError>> {
        if self.shared().is_some() {
            return Box::pin(self.submit_to_store(edit));
        }
        let changed = self.change(edit);
        Box::pin(async move { changed })
    }

    fn tables(&self) -> std::collections::BTreeMap<String, crate::api::MaglevTable> {
        self.controller
            .borrow()
            .maglev_tables()
            .into_iter()
            .map(|(name, slots)| (name, crate::api::MaglevTable::new(slots)))
            .collect()
    }

    fn node(&self, state: Option<NodeState>) -> Result<AnnounceStatus, ControlError> {
        if self.announcer.borrow().is_none() {
            return Err(ControlError::conflict(
                "this daemon announces nothing: start it with --bird-routes (and --bird-socket) for BIRD to announce its listener addresses",
            ));
        }
        if let Some(state) = state.filter(|s| *s != self.node.get()) {
            self.node.set(state);
            match state {
                NodeState::Draining => log::warn!(
                    "control API: node drain: withdrawing every listener address; established flows go on here"
                ),
                NodeState::Serving => log::info!(
                    "control API: node resume: announcing the listener addresses again"
                ),
            }
            self.save();
            self.announce();
        }
        Ok(self
            .announce_status()
            .expect("checked above; the announcer stays until down"))
    }

    fn config(&self) -> Result<crate::api::RunningConfig, ControlError> {
        let toml = self
            .controller
            .borrow()
            .model()
            .to_toml()
            .map_err(|e| ControlError::internal(e.to_string()))?;
        Ok(crate::api::RunningConfig {
            file: self.config.clone(),
            toml,
        })
    }

    fn down(&self) -> Result<(), ControlError> {
        log::info!("control API: down: stopping, detaching and removing the pins");
        self.going_down.set(true);
        self.down.notify_one();
        Ok(())
    }
}

impl<D: Dataplane, S: Store> metrics::Source for Daemon<D, S> {
    fn scrape(&self) -> Result<Scrape, CollectError> {
        // Without active flows: a scrape must stay cheap whatever the flow table holds.
        let report = self.report(false)?;
        let checker = self.checker.borrow();
        let latencies = report
            .targets
            .iter()
            .filter_map(|t| {
                let key = TargetKey {
                    group: t.group.clone(),
                    addr: t.address,
                };
                let latency = checker.status(&key)?.last?.latency;
                Some(((key.group, key.addr), latency))
            })
            .collect();
        let proxy = self
            .proxy
            .borrow()
            .as_ref()
            .map(Proxy::stats)
            .unwrap_or_default();
        Ok(Scrape {
            report,
            latencies,
            proxy,
        })
    }

    fn status(&self) -> Result<StatsReport, CollectError> {
        self.report(false)
    }
}

/// Warns of http/https listeners on addresses this host does not hold (they bind, but get
/// no traffic).
fn warn_unheld_addresses(model: &Model) {
    if !model.listeners.iter().any(|l| l.protocol.is_l7()) {
        return;
    }
    match crate::dataplane::interface::host_addresses() {
        Ok(held) => {
            for warning in model.l7_listeners_not_held(&held) {
                log::warn!("{warning}");
            }
        }
        Err(e) => log::debug!("cannot list the host's addresses: {e}"),
    }
}

/// Logs what a change did, one line each (warnings for groups failing open).
pub fn log_changes(changes: &Changes) {
    for line in changes.lines() {
        if line.warning {
            log::warn!("{}", line.text);
        } else {
            log::info!("{}", line.text);
        }
    }
}
