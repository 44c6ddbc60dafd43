//! `sluice run`: the daemon. Loads the XDP program, attaches it to the given interfaces,
//! applies the model from `--config`, answers the control API on `--socket` and Prometheus
//! scrapes on `--metrics-address`, and runs until SIGINT/SIGTERM (SIGHUP re-reads the
//! configuration); then detaches.

use std::{
    cell::RefCell,
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::{
    maps::{MapData, PerCpuArray},
    programs::xdp::XdpLinkId,
    Ebpf,
};
use aya_log::EbpfLogger;
use lb_common::stats::CounterValue;
use sluice::{
    api::{self, Backend, CollectError, ControlError, StatsReport},
    bpffs,
    controller::{ApplyError, Changes, Controller, TargetKey},
    datapath::{self, AttachMode, MapSizes},
    edit::Edit,
    interface,
    maps::Maps,
    metrics::{self, MetricsAddress, Scrape},
    model::Model,
    proxy::Proxy,
    stats::STATS_MAP,
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
    /// bpffs directory where the counters are pinned (one daemon per directory).
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
    let mut ebpf = datapath::load_with(log::max_level(), sizes)?;
    // Before anything outside this process changes (neighbour entries, pins, attachments): a
    // second daemon on the same socket, or the same metrics address, stops here.
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
    let mut controller = Controller::new(Maps::take(&mut ebpf)?);
    let changes = controller.apply(&model, Instant::now())?;
    log_changes(&changes);

    bpffs::prepare_pin_dir(&args.pin_dir)?;
    let stats_pin = args.pin_dir.join(STATS_MAP);
    if stats_pin.exists() {
        log::warn!(
            "replacing a stale pin at {} left by an earlier sluice that did not stop cleanly",
            stats_pin.display()
        );
        bpffs::unpin(&stats_pin).with_context(|| format!("removing {}", stats_pin.display()))?;
    }
    let stats = ebpf
        .take_map(STATS_MAP)
        .context("the XDP object has no STATS map")?;
    stats
        .pin(&stats_pin)
        .with_context(|| format!("pinning counters at {}", stats_pin.display()))?;
    let counters = PerCpuArray::try_from(stats).context("reading the STATS map")?;

    let mut links: Vec<(String, XdpLinkId)> = Vec::new();
    for (iface, &ifindex) in args.ifaces.iter().zip(&ifindexes) {
        match datapath::attach(&mut ebpf, iface, ifindex, args.xdp_mode) {
            Ok((link, mode)) => {
                log::info!(
                    "sluice attached to {iface} (ifindex {ifindex}) in {} mode",
                    datapath::mode_name(mode)
                );
                links.push((iface.clone(), link));
            }
            Err(e) => {
                detach(&mut ebpf, links);
                let _ = bpffs::unpin(&stats_pin);
                return Err(e.into());
            }
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

    let (checker, health_events) = HealthChecker::new();
    let daemon = Rc::new(Daemon {
        controller: RefCell::new(controller),
        checker: RefCell::new(checker),
        config: args.config.clone(),
        counters,
        proxy: RefCell::new(None),
    });
    // The L7 proxy, when the model has http/https listeners: a listener that cannot be
    // served stops sluice here, as a broken model would.
    if let Err(e) = daemon.sync_proxy(true) {
        detach(&mut ebpf, links);
        let _ = bpffs::unpin(&stats_pin);
        return Err(e);
    }
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
    detach(&mut ebpf, links);
    bpffs::unpin(&stats_pin).with_context(|| format!("removing {}", stats_pin.display()))?;
    served
}

fn detach(ebpf: &mut Ebpf, links: Vec<(String, XdpLinkId)>) {
    for (iface, link) in links {
        match datapath::program_mut(ebpf).detach(link) {
            Ok(()) => log::info!("detached from {iface}"),
            Err(e) => log::error!("detaching from {iface}: {e}"),
        }
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
                let _ = daemon.sync_proxy(false);
            }
            _ = tick.tick() => {
                let expired = controller.borrow_mut().tick(Instant::now());
                match expired {
                    Ok(expired) => {
                        for key in &expired {
                            log::info!("target {} of '{}': deregistration delay over; its remaining flows move to other targets", key.addr, key.group);
                        }
                        if !expired.is_empty() {
                            let _ = daemon.sync_proxy(false);
                        }
                    }
                    Err(e) => log::error!("ending drains: {e}"),
                }
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
    /// Started with the first http/https listener.
    proxy: RefCell<Option<Proxy>>,
}

impl Daemon {
    /// Gives the L7 proxy the controller's current model and targets; with `listeners`,
    /// also (re)binds its listeners. Errors are logged and returned (only start-up treats
    /// them as fatal: after a reload, the other listeners keep serving).
    fn sync_proxy(&self, listeners: bool) -> anyhow::Result<()> {
        let controller = self.controller.borrow();
        let model = controller.model();
        let mut proxy = self.proxy.borrow_mut();
        if proxy.is_none() {
            if !model.listeners.iter().any(|l| l.protocol.is_l7()) {
                return Ok(());
            }
            *proxy = Some(Proxy::start()?);
        }
        let proxy = proxy.as_mut().expect("started above");
        let views = controller.target_views();
        if !listeners {
            proxy.update_routes(model, &views);
            return Ok(());
        }
        let errors = proxy.update(model, &views);
        for e in &errors {
            log::error!("{e}");
        }
        match errors.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// After every change of the model: the checker checks exactly the registered targets.
    fn recheck(&self) {
        let checks = self.controller.borrow().health_checks();
        self.checker.borrow_mut().set_targets(checks);
    }
}

impl Backend for Daemon {
    fn stats(&self) -> Result<StatsReport, CollectError> {
        StatsReport::collect(&self.controller.borrow(), &self.counters)
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
        let applied = self.controller.borrow_mut().apply(&model, Instant::now());
        let changes = applied.map_err(|e| apply_refused(&e, refused(&e)))?;
        self.recheck();
        let _ = self.sync_proxy(true);
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
        let applied = self.controller.borrow_mut().apply(&model, Instant::now());
        let changes = applied.map_err(|e| {
            let message = format!("{edit} refused, running configuration kept: {e}");
            log::error!("control API: {message}");
            apply_refused(&e, message)
        })?;
        self.recheck();
        let _ = self.sync_proxy(true);
        log::info!("control API: {edit}, until the next reload");
        log_changes(&changes);
        Ok(changes)
    }
}

impl metrics::Source for Daemon {
    fn scrape(&self) -> Result<Scrape, CollectError> {
        let report = self.stats()?;
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
}
