//! `sluice run`: the daemon. Loads the XDP program, attaches it to the given interfaces,
//! applies the model from `--config`, answers the control API on `--socket` and Prometheus
//! scrapes on `--metrics-address`, and runs until SIGINT/SIGTERM (SIGHUP re-reads the
//! configuration). The program, its maps and the controller's state are pinned in
//! `--pin-dir`: forwarding goes on after the daemon stops, and the next daemon takes it over
//! (hitless restart). `sluice down` detaches and removes the pins.

use std::{
    cell::RefCell,
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{MapData, PerCpuArray};
use aya_log::EbpfLogger;
use lb_common::stats::CounterValue;
use sluice::{
    api::metrics::{self, MetricsAddress, Scrape},
    api::{self, ActiveFlows, Backend, CollectError, ControlError, StatsReport, ACTIVE_WINDOW},
    controller::{ApplyError, Changes, Controller},
    dataplane::{
        bpffs,
        counters::STATS_MAP,
        interface,
        load::{self as datapath, AttachMode, MapSizes},
        maps::Maps,
        pins,
        saved::{self, SavedState},
    },
    model::{edit::Edit, Model, TargetKey},
    proxy::{cookie_keys, Proxy, ProxyError, Staged},
    rates::Rates,
};
use tokio::io::unix::AsyncFd;

use super::signals::{Request, Signals};
use sluice::health::{HealthChecker, HealthEvent};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Interface to attach the XDP program to; repeat for several (e.g. the client side and
    /// the target side, so `nat` replies are translated too).
    #[arg(long = "iface", value_name = "IF", required = true)]
    ifaces: Vec<String>,
    /// The model: listeners, target groups, targets (TOML). Without it nothing is balanced
    /// and all traffic passes to the kernel.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// XDP attach mode: `auto` tries native and falls back to generic with a warning.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: AttachMode,
    /// bpffs directory where the XDP links, the maps and the saved state are pinned (one
    /// daemon per directory); a daemon finding a data plane there takes it over.
    #[arg(long, value_name = "DIR", default_value = bpffs::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The control API's Unix socket (HTTP/1.1 and JSON; `sluice stats` asks it). Its
    /// directory is created mode 0700 if missing; the socket is mode 0600: root's only.
    #[arg(long, value_name = "PATH", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Flow table size (entries); each costs about 150 bytes of kernel memory, twice in
    /// `nat` mode.
    #[arg(long, value_name = "N", default_value_t = lb_common::flow::DEFAULT_FLOWS,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 27)))]
    flows: u32,
    /// Maximum number of listeners (map sizes are fixed at load time).
    #[arg(long, value_name = "N", default_value_t = lb_common::listener::MAX_LISTENERS,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_listeners: u32,
    /// Maximum number of target ids (targets plus those draining or still named by flows).
    #[arg(long, value_name = "N", default_value_t = lb_common::target::MAX_TARGETS,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    max_targets: u32,
    /// The keys stickiness cookies are signed with (root's only, mode 0600; made with a fresh
    /// key if missing, when a target group first has stickiness). Kept across restarts, so
    /// clients keep their targets; give several nodes a copy to share stickiness. Read again
    /// on reload; `sluice stickiness rotate-key` rotates it.
    #[arg(long, value_name = "FILE", default_value = cookie_keys::DEFAULT_KEY_FILE)]
    stickiness_keys: PathBuf,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP); `off` for nowhere.
    /// Port 0 picks a free port, logged at start-up.
    #[arg(long, value_name = "ADDR|off", default_value = metrics::DEFAULT_ADDRESS)]
    metrics_address: MetricsAddress,
}

/// How often drains are checked for their deregistration delay.
const TICK: Duration = Duration::from_secs(1);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let ifindexes = args
        .ifaces
        .iter()
        .map(|iface| interface::index(iface))
        .collect::<Result<Vec<u32>, _>>()?;
    // The model is read before anything is loaded: a broken file changes nothing.
    let model = match &args.config {
        Some(path) => Model::load(path)?,
        None => Model::default(),
    };
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let signals = {
        let _runtime = runtime.enter();
        Signals::install()?
    };

    let sizes = MapSizes {
        flows: args.flows,
        listeners: args.max_listeners,
        targets: args.max_targets,
    };
    bpffs::prepare_pin_dir(&args.pin_dir)?;
    let adopting = pins::has_data_plane(&args.pin_dir);
    // Pins this start creates are removed again if it fails; adopted ones never are, since
    // they keep forwarding going.
    let mut fresh = FreshPins {
        dir: args.pin_dir.clone(),
        armed: !adopting,
    };
    let mut ebpf = datapath::load_pinned(log::max_level(), sizes, &args.pin_dir)?;
    // Before anything outside this process changes (neighbour entries, links): a second
    // daemon on the same socket, or the same metrics address, stops here.
    let (api_listener, _socket_file) = api::server::bind(&args.socket)?;
    let metrics_listener = match args.metrics_address.0 {
        Some(addr) => {
            let listener = metrics::bind(addr)?;
            let bound = listener.local_addr().unwrap_or(addr);
            log::info!("metrics on http://{bound}{}", metrics::PATH);
            Some(listener)
        }
        None => None,
    };
    // The program logs only rare events (and, in debug builds, per packet); without a log
    // call in the object there is no log map, which is fine.
    let logger = match EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::debug!("no log channel from the XDP program: {e}");
            None
        }
    };
    let maps = Maps::take(&mut ebpf).map_err(|e| incompatible(e, adopting, &args.pin_dir))?;
    let state: saved::StateMap = ebpf
        .take_map("STATE")
        .context("the XDP object has no STATE map")?
        .try_into()
        .map_err(|e| incompatible(e, adopting, &args.pin_dir))?;
    let now = Instant::now();
    let mut controller = if adopting {
        match saved::load(&state)? {
            Some(saved) => {
                log::info!(
                    "adopting the data plane pinned in {} ({} listener(s), {} target(s))",
                    args.pin_dir.display(),
                    saved.listeners.len(),
                    saved.targets.len()
                );
                Controller::adopt(maps, &saved, now)?
            }
            None => {
                log::warn!(
                    "{} holds maps but no saved state (the daemon that made them died while starting); starting afresh with them",
                    args.pin_dir.display()
                );
                Controller::new(maps)
            }
        }
    } else {
        Controller::new(maps)
    };
    // Certificates read, access logs opened and sockets bound before the model is applied:
    // a listener that cannot be served stops sluice here, as a broken model would (a fresh
    // start that fails removes its pins: `fresh`).
    let staged = Proxy::stage(None, &model, true, &args.stickiness_keys)?;
    let proxy = if staged.serves() {
        Some(Proxy::start()?)
    } else {
        None
    };
    let changes = controller.apply(&model, now)?;
    log_changes(&changes);
    // Saved before anything is attached: from the moment the pins forward, a daemon taking
    // over finds the state that goes with them.
    let mut state = state;
    let first_state = controller.saved(now);
    saved::save(&mut state, &first_state).context("saving the state for the next daemon")?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map(STATS_MAP)
            .context("the XDP object has no STATS map")?,
    )
    .context("reading the STATS map")?;

    for (iface, &ifindex) in args.ifaces.iter().zip(&ifindexes) {
        match pins::attach(&mut ebpf, &args.pin_dir, iface, ifindex, args.xdp_mode)? {
            pins::Attached::Replaced => log::info!(
                "sluice took over {iface} (ifindex {ifindex}): the previous program was replaced in one step; established flows keep their targets"
            ),
            pins::Attached::New(mode) => log::info!(
                "sluice attached to {iface} (ifindex {ifindex}) in {} mode",
                datapath::mode_name(mode)
            ),
        }
    }
    for (iface, _) in pins::pinned_links(&args.pin_dir)? {
        if !args.ifaces.contains(&iface) {
            pins::detach(&args.pin_dir, &iface)?;
            log::info!("detached from {iface}: not among this daemon's --iface");
        }
    }
    log::info!(
        "{} listener(s) from {}; control API on {socket} (sluice stats --socket {socket})",
        controller.model().listeners.len(),
        args.config
            .as_ref()
            .map_or("no configuration".into(), |p| p.display().to_string()),
        socket = args.socket.display()
    );

    let (mut checker, health_events) = HealthChecker::new();
    checker.adopt(
        controller
            .known_health()
            .map(|(key, health)| (key.clone(), health)),
    );
    let daemon = Rc::new(Daemon {
        controller: RefCell::new(controller),
        checker: RefCell::new(checker),
        config: args.config.clone(),
        counters,
        state: RefCell::new(state),
        saved: RefCell::new(Some(first_state)),
        down: tokio::sync::Notify::new(),
        going_down: std::cell::Cell::new(false),
        rates: RefCell::new(Rates::new(RATE_WINDOW)),
        proxy: RefCell::new(proxy),
        key_file: args.stickiness_keys.clone(),
    });
    daemon.commit_proxy(staged);
    fresh.armed = false;
    // A LocalSet, so the API's connection tasks can share the controller without locks: each
    // request is answered between two awaits, never in the middle of a reload or a tick.
    let served = tokio::task::LocalSet::new().block_on(&runtime, async {
        let api_listener = tokio::net::UnixListener::from_std(api_listener)
            .context("registering the control socket with the runtime")?;
        let api = tokio::task::spawn_local(api::server::serve(api_listener, Rc::clone(&daemon)));
        let metrics = match metrics_listener {
            Some(listener) => {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .context("registering the metrics socket with the runtime")?;
                Some(tokio::task::spawn_local(metrics::serve(
                    listener,
                    Rc::clone(&daemon),
                )))
            }
            None => None,
        };
        let served = serve(logger, signals, &daemon, health_events).await;
        api.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        served
    });
    daemon.save();
    if daemon.going_down.get() {
        // The program holds no link of its own (pins do), but drop it before the pins go.
        drop(ebpf);
        let removed = pins::remove_all(&args.pin_dir)?;
        log::info!("down: {}", removed.describe(&args.pin_dir));
    } else {
        log::info!(
            "stopped; the XDP program stays attached and forwards with the last state; the next `sluice run --pin-dir {}` takes over, `sluice down` removes it",
            args.pin_dir.display()
        );
    }
    served
}

/// Raises the soft limit on open files to the hard limit: the L7 proxy holds two descriptors
/// per proxied connection, and the usual soft limit of 1024 would cap it near 500.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                log::debug!(
                    "open files limit raised from {before} to {}",
                    limit.rlim_max
                );
            }
        }
    }
}

/// Removes the pins of a start that failed before it attached anything.
struct FreshPins {
    dir: PathBuf,
    armed: bool,
}

impl Drop for FreshPins {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = pins::remove_all(&self.dir) {
                log::warn!("cleaning up after a failed start: {e}");
            }
        }
    }
}

/// Pinned maps this build cannot use (an upgrade changed their layout).
fn incompatible(
    e: impl std::fmt::Display,
    adopting: bool,
    pin_dir: &std::path::Path,
) -> anyhow::Error {
    if adopting {
        anyhow::anyhow!(
            "the maps pinned in {} do not fit this sluice ({e}); run `sluice down --pin-dir {}` (this drops established flows) and start again",
            pin_dir.display(),
            pin_dir.display()
        )
    } else {
        anyhow::anyhow!("{e}")
    }
}

/// Runs until SIGINT/SIGTERM: forwards the program's log records, reloads the model on SIGHUP,
/// and ends drains whose deregistration delay is over.
async fn serve(
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    mut signals: Signals,
    daemon: &Daemon,
    mut health_events: tokio::sync::mpsc::UnboundedReceiver<HealthEvent<TargetKey>>,
) -> anyhow::Result<()> {
    let controller = &daemon.controller;
    let mut logs = match logger {
        // SAFETY: the AsyncFd owns the logger and with it the ring buffer's fd, so the fd stays
        // open for as long as it is registered.
        Some(logger) => Some(
            unsafe { AsyncFd::register(logger) }
                .map_err(|e| anyhow::anyhow!("polling the XDP program's log ring buffer: {e}"))?,
        ),
        None => None,
    };
    let mut tick = tokio::time::interval(TICK);
    daemon.recheck();
    loop {
        tokio::select! {
            _ = daemon.down.notified() => break,
            request = signals.next() => match request {
                Request::Stop => break,
                // Logged either way; the control API's `POST /v1/reload` takes the same path.
                Request::Reload => {
                    let _ = daemon.reload();
                }
            },
            Some(event) = health_events.recv() => {
                log::info!(
                    "target {} of '{}': {} -> {}: {}",
                    event.target.addr, event.target.group, event.from.name(), event.to.name(), event.reason
                );
                let applied = controller.borrow_mut().set_health(&event.target, event.to, Instant::now());
                match applied {
                    Ok(changes) => log_changes(&changes),
                    Err(e) => log::error!("applying the health of {}: {e}", event.target.addr),
                }
                daemon.save();
                daemon.sync_routes();
            }
            _ = tick.tick() => {
                let expired = controller.borrow_mut().tick(Instant::now());
                match expired {
                    Ok(expired) => {
                        for key in &expired {
                            log::info!("target {} of '{}': deregistration delay over; its remaining flows move to other targets", key.addr, key.group);
                        }
                        if !expired.is_empty() {
                            daemon.sync_routes();
                        }
                    }
                    Err(e) => log::error!("ending drains: {e}"),
                }
                daemon.save();
                daemon.sample_rates();
            }
            ready = async { logs.as_mut().unwrap().readable_mut().await }, if logs.is_some() => {
                let mut guard = ready.context("waiting for XDP log records")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
    log::info!("stopping");
    Ok(())
}

/// What the control API asks: the controller, its health checker, the configuration file and
/// the global counters.
struct Daemon {
    controller: RefCell<Controller>,
    checker: RefCell<HealthChecker<TargetKey>>,
    config: Option<PathBuf>,
    counters: PerCpuArray<MapData, CounterValue>,
    /// The pinned `STATE` map, and what was last saved in it.
    state: RefCell<saved::StateMap>,
    saved: RefCell<Option<SavedState>>,
    /// `sluice down` asked: stop, then detach and remove the pins.
    down: tokio::sync::Notify,
    going_down: std::cell::Cell<bool>,
    /// Traffic samples for the rates in status.
    rates: RefCell<Rates<RateKey>>,
    /// Started with the first http/https listener.
    proxy: RefCell<Option<Proxy>>,
    /// The stickiness keys (`--stickiness-keys`).
    key_file: PathBuf,
}

/// Whose traffic a rate is: ids included, so an id given to something new starts over.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RateKey {
    Listener(String, u32),
    Target(TargetKey, u32),
}

/// The window traffic rates are averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Daemon {
    /// Makes ready what the proxy needs to serve `model` (see [`Proxy::stage`]), starting the
    /// proxy if `model` is the first with http/https listeners; before `model` is applied, so
    /// that a listener that cannot be served refuses the whole change.
    fn stage_proxy(&self, model: &Model, reread: bool) -> Result<Staged, ProxyError> {
        let mut proxy = self.proxy.borrow_mut();
        let staged = Proxy::stage(proxy.as_ref(), model, reread, &self.key_file)?;
        if staged.serves() && proxy.is_none() {
            *proxy = Some(Proxy::start()?);
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
    fn save(&self) {
        let state = self.controller.borrow().saved(Instant::now());
        if self.saved.borrow().as_ref() == Some(&state) {
            return;
        }
        match saved::save(&mut *self.state.borrow_mut(), &state) {
            Ok(()) => *self.saved.borrow_mut() = Some(state),
            Err(e) => log::error!("saving the state for the next daemon: {e}"),
        }
    }
}

impl Daemon {
    /// One sample of every listener's and target's traffic, for the rates.
    fn sample_rates(&self) {
        match StatsReport::collect(&self.controller.borrow(), &self.counters) {
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
                    .record(Instant::now(), listeners.chain(targets));
            }
            Err(e) => log::warn!("sampling traffic for rates: {e}"),
        }
    }
}

impl Daemon {
    /// The counters, with health reasons from the checker, rates from the samples and, when
    /// `flows`, the active flows (a walk of the flow table).
    fn report(&self, flows: bool) -> Result<StatsReport, CollectError> {
        let mut report = StatsReport::collect(&self.controller.borrow(), &self.counters)?;
        if flows {
            let controller = self.controller.borrow();
            let entries = controller.maps().flows().map(|(_, flow)| flow);
            ActiveFlows::count(entries, monotonic_ns(), ACTIVE_WINDOW).fill(&mut report);
        }
        let proxy = self
            .proxy
            .borrow()
            .as_ref()
            .map(Proxy::stats)
            .unwrap_or_default();
        report.http_listeners =
            api::HttpListenerStats::collect(self.controller.borrow().model(), &proxy);
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

impl Backend for Daemon {
    fn stats(&self) -> Result<StatsReport, CollectError> {
        self.report(true)
    }

    /// Re-reads the model, dropping changes made through the API; a file that does not
    /// validate changes nothing.
    fn reload(&self) -> Result<Changes, ControlError> {
        let Some(path) = &self.config else {
            let message = "sluice run was started without --config: there is no file to reload";
            log::warn!("{message}");
            return Err(ControlError::conflict(message));
        };
        let refused = |e: &dyn std::fmt::Display| {
            let message = format!(
                "reload of {} refused, running configuration kept: {e}",
                path.display()
            );
            log::error!("{message}");
            message
        };
        let model = Model::load(path).map_err(|e| ControlError::invalid(refused(&e)))?;
        // Every certificate is read again: files renewed in place are taken up.
        let staged = self
            .stage_proxy(&model, true)
            .map_err(|e| proxy_refused(&e, refused(&e)))?;
        let applied = self.controller.borrow_mut().apply(&model, Instant::now());
        let changes = applied.map_err(|e| apply_refused(&e, refused(&e)))?;
        self.commit_proxy(staged);
        self.recheck();
        self.save();
        if changes.is_empty() {
            log::info!("reloaded {}: no changes", path.display());
        } else {
            log::info!("reloaded {}", path.display());
            log_changes(&changes);
        }
        Ok(changes)
    }

    fn change(&self, edit: Edit) -> Result<Changes, ControlError> {
        let model = edit.apply_to(self.controller.borrow().model());
        let model = model.inspect_err(|e| log::info!("control API: {edit} refused: {e}"))?;
        let refused = |e: &dyn std::fmt::Display| {
            let message = format!("{edit} refused, running configuration kept: {e}");
            log::error!("control API: {message}");
            message
        };
        let staged = self
            .stage_proxy(&model, false)
            .map_err(|e| proxy_refused(&e, refused(&e)))?;
        let applied = self.controller.borrow_mut().apply(&model, Instant::now());
        let changes = applied.map_err(|e| apply_refused(&e, refused(&e)))?;
        self.commit_proxy(staged);
        self.recheck();
        self.save();
        log::info!("control API: {edit}, until the next reload");
        log_changes(&changes);
        Ok(changes)
    }

    fn down(&self) -> Result<(), ControlError> {
        self.take_down();
        Ok(())
    }
}

impl Daemon {
    fn take_down(&self) {
        log::info!("control API: down: stopping, detaching and removing the pins");
        self.going_down.set(true);
        self.down.notify_one();
    }
}

impl metrics::Source for Daemon {
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
}

/// A listener that cannot be served: its address is taken (a conflict with the world), or a
/// file it names is wrong (the request's fault), or the proxy cannot start (the daemon's).
fn proxy_refused(e: &ProxyError, message: String) -> ControlError {
    match e {
        ProxyError::Bind { .. } => ControlError::conflict(message),
        ProxyError::Tls { .. } | ProxyError::AccessLog { .. } | ProxyError::Keys(_) => {
            ControlError::invalid(message)
        }
        ProxyError::Runtime(_) => ControlError::internal(message),
    }
}

/// Failing to write the maps is the daemon's fault; everything else is the request's.
fn apply_refused(e: &ApplyError, message: String) -> ControlError {
    match e {
        ApplyError::Maps(_) => ControlError::internal(message),
        _ => ControlError::conflict(message),
    }
}

fn log_changes(changes: &Changes) {
    for name in &changes.listeners_added {
        log::info!("listener '{name}' added");
    }
    for name in &changes.listeners_removed {
        log::info!("listener '{name}' removed");
    }
    for name in &changes.tables_rebuilt {
        log::info!("listener '{name}': Maglev table rebuilt");
    }
    for key in &changes.targets_added {
        log::info!("target {} of '{}' registered", key.addr, key.group);
    }
    for key in &changes.targets_draining {
        log::info!("target {} of '{}' draining", key.addr, key.group);
    }
    for group in &changes.failing_open {
        log::warn!("target group '{group}' has no healthy target: failing open, traffic goes to all its targets");
    }
    for group in &changes.failing_closed {
        log::info!("target group '{group}' has a healthy target again: no longer failing open");
    }
    for setting in &changes.settings {
        log::info!("{setting}");
    }
}
