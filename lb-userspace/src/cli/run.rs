//! `sluice run`: the daemon. Loads the XDP program, attaches it to the given interfaces,
//! applies the model from `--config`, answers the control API on `--socket` and Prometheus
//! scrapes on `--metrics-address`, and runs until SIGINT/SIGTERM (SIGHUP re-reads the
//! configuration). The program, its maps and the controller's state are pinned in
//! `--pin-dir`: forwarding goes on after the daemon stops, and the next daemon takes it over
//! (hitless restart). `sluice down` detaches and removes the pins.

use std::{
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::PerCpuArray;
use aya_log::EbpfLogger;
use sluice::{
    announce::{Bird, NodeState},
    api::{
        self,
        metrics::{self, MetricsAddress},
    },
    controller::Controller,
    daemon::{
        self,
        handover::{Drained, Successors},
        signals::Signals,
        Daemon, Ending, Origin, Parts,
    },
    dataplane::{
        bpffs,
        counters::STATS_MAP,
        interface,
        load::{self, AttachMode, MapSizes},
        maps::Maps,
        pin_lock::PinDirLock,
        pins, saved,
    },
    health::HealthChecker,
    model::{CertificateFiles, Model},
    proxy::{cookie_keys, handover},
    store::{StoreAccess, StoreUrl},
};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Interface to attach the XDP program to; repeat for several (e.g. the client side and
    /// the target side, so `nat` replies are translated too). Needed for tcp/udp listeners;
    /// a --config with only http/https listeners runs without.
    #[arg(long = "iface", value_name = "IF", required_unless_present_any = ["config", "store"])]
    ifaces: Vec<String>,
    /// The model: listeners, target groups, targets (TOML). Without it nothing is balanced
    /// and all traffic passes to the kernel. With --store, it only seeds a store that holds
    /// no model yet.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Share one model among several nodes through etcd (v3): the model is the store's
    /// (`<prefix>/model`); every node applies each new revision, CLI edits on any node are
    /// written there (compare-and-swap), `sluice reload` and SIGHUP are refused, and the
    /// stickiness keys are the store's too. A node that loses the store keeps forwarding
    /// with its last model. Refuses to start if the store cannot be reached within 10 s, or
    /// holds no model and no --config seeds it. See docs/OPERATING.md, "Several nodes".
    #[arg(long, value_name = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX")]
    store: Option<StoreUrl>,
    /// This node's name in the store (`<prefix>/nodes/<name>`, shown by `sluice status` on
    /// every node). Default: the host name.
    #[arg(long, value_name = "NAME", requires = "store")]
    node_name: Option<String>,
    /// The CA certificates (PEM) that sign the etcd members' certificates: the store is
    /// reached over TLS (etcd's --cert-file) and its members' certificates are verified
    /// against these (an IP address in --store must be in the certificate's names).
    #[arg(long, value_name = "FILE", requires = "store")]
    store_cacert: Option<PathBuf>,
    /// This node's client certificate chain (PEM), for an etcd started with
    /// --client-cert-auth; etcd takes its common name as the user when no --store-user is
    /// given.
    #[arg(long, value_name = "FILE", requires_all = ["store_cacert", "store_key"])]
    store_cert: Option<PathBuf>,
    /// The private key of --store-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "store_cert")]
    store_key: Option<PathBuf>,
    /// The etcd user this node authenticates as (etcd's `auth enable`); its role needs
    /// read and write on the prefix.
    #[arg(long, value_name = "NAME", requires_all = ["store", "store_password_file"])]
    store_user: Option<String>,
    /// The file holding --store-user's password on its first line; root's only (mode 0600),
    /// as systemd's LoadCredential= provides it.
    #[arg(long, value_name = "FILE", requires = "store_user")]
    store_password_file: Option<PathBuf>,
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
    /// If a daemon already runs on --socket, take over from it without a gap instead of
    /// refusing to start: it hands over its http/https listening sockets and its data plane,
    /// then drains. (A daemon that is stopping, after SIGTERM, hands over without this.)
    #[arg(long)]
    take_over: bool,
    /// How long a stopping daemon keeps serving the connections it has (requests in flight,
    /// WebSockets and other upgraded connections) before it closes them and exits: ALB's
    /// default deregistration delay, the time sluice gives a leaving target's connections.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=86400))]
    drain_timeout: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`) and the live status page (`GET /`),
    /// plain HTTP without authentication; `off` for nowhere. Port 0 picks a free port, logged
    /// at start-up.
    #[arg(long, value_name = "ADDR|off", default_value = metrics::DEFAULT_ADDRESS)]
    metrics_address: MetricsAddress,
    /// The L7 proxy's limit on client connections open at once over all http/https
    /// listeners; more are reset at once and counted (RejectedConnectionCount). Default: half
    /// of what the open-files limit leaves after the descriptors open at start and 128 kept
    /// for health checks, the control API, metrics and access logs (each client connection
    /// also holds one to its target).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_connections: Option<u64>,
    /// Announce the listeners' addresses through BIRD 2 (BGP): sluice writes this file of
    /// BIRD configuration (static routes for the addresses this node can serve), which
    /// bird.conf includes, and asks BIRD to reconfigure whenever it changes. See
    /// docs/OPERATING.md, "Several nodes".
    #[arg(long, value_name = "FILE")]
    bird_routes: Option<PathBuf>,
    /// BIRD's control socket, with --bird-routes.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/bird/bird.ctl",
        requires = "bird_routes"
    )]
    bird_socket: PathBuf,
    /// Worker threads of the L7 proxy, each serving its connections start to end. Default:
    /// one per CPU sluice may run on (its CPU affinity, e.g. from `taskset` or systemd's
    /// CPUAffinity=).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    proxy_workers: Option<u64>,
    /// The accept queue of each http/https listening socket: connections the kernel completes
    /// and holds for the proxy to accept. Default: net.core.somaxconn, the kernel's ceiling
    /// (a larger value is capped at it).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    listen_backlog: Option<u32>,
}

/// How long `sluice down` waits for BIRD to withdraw the listener addresses.
const WITHDRAW_PATIENCE: Duration = Duration::from_secs(5);

/// How long a new daemon waits for a running one (told to stop) to begin stopping.
const RUNNING_PATIENCE: Duration = Duration::from_secs(3);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let ifindexes = args
        .ifaces
        .iter()
        .map(|iface| interface::index(iface))
        .collect::<Result<Vec<u32>, _>>()?;
    // Read now, before an upgrade may replace the binary at this path (SIGUSR2 then starts
    // the new one).
    let restart = daemon::restart::Successor::of_this_process()
        .inspect_err(|e| log::warn!("SIGUSR2 cannot restart this daemon: {e}"))
        .ok();
    let bird = args.bird_routes.as_ref().map(|routes_file| Bird {
        socket: args.bird_socket.clone(),
        routes_file: routes_file.clone(),
    });
    if let Some(bird) = &bird {
        bird.check()?;
    }
    // The store's client runs on this runtime; in file mode it starts with the daemon.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The model is read before anything is loaded: a broken file (or store) changes nothing.
    let mut shared = match &args.store {
        Some(url) => {
            let access = store_access(&args);
            let credentials = access.load()?;
            let node = match &args.node_name {
                Some(name) => name.clone(),
                None => host_name()?,
            };
            let started = runtime
                .block_on(daemon::shared::start(
                    url,
                    &access,
                    &credentials,
                    args.config.as_deref(),
                    &node,
                    &args.stickiness_keys,
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(started)
        }
        None => None,
    };
    let model = match (&shared, &args.config) {
        (Some(started), _) => started.model.clone(),
        (None, Some(path)) => Model::load(path)?,
        (None, None) => Model::default(),
    };
    check_interfaces(&model, &args.ifaces)?;
    // A daemon stopping on the same socket (or running, with --take-over) hands over its
    // listening sockets first, and stops writing the data plane, which this one then adopts.
    let handover_path = handover::path_for(&args.socket);
    let request = if args.take_over {
        handover::Request::TakeOver
    } else {
        handover::Request::IfStopping
    };
    // A daemon sent SIGTERM a moment ago may not have begun to stop yet: ask again for a
    // while before refusing (a `kill; sluice run` script, or `systemctl restart`).
    let asked = Instant::now();
    let answer = loop {
        match handover::take_over(&handover_path, request)? {
            handover::TakeOver::Running if asked.elapsed() < RUNNING_PATIENCE => {
                std::thread::sleep(Duration::from_millis(100));
            }
            answer => break answer,
        }
    };
    let inherited = match answer {
        handover::TakeOver::Nobody => Vec::new(),
        handover::TakeOver::Running => anyhow::bail!(
            "a sluice daemon runs on {}: stop it first (SIGTERM; it hands its listeners to the next sluice run), or start this one with --take-over to replace it without a gap",
            args.socket.display()
        ),
        handover::TakeOver::Sockets(sockets) => {
            log::info!(
                "took over from the previous daemon: {} listening socket(s) (this daemon is pid {})",
                sockets.len(),
                std::process::id()
            );
            sockets
        }
    };
    raise_open_file_limit();
    // Signal handlers, health checks and the proxy's tasks belong to this runtime.
    let _runtime = runtime.enter();
    let mut signals = Signals::install()?;

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
    let mut ebpf = load::load_pinned(log::max_level(), sizes, &args.pin_dir)?;
    // Before anything outside this process changes (neighbour entries, links): a second
    // daemon on the same socket, or the same metrics address, stops here.
    let (api_listener, socket_file) = api::server::bind(&args.socket)?;
    let (handover_listener, handover_file) = api::server::bind(&handover_path)?;
    // Held until this daemon steps down (or exits): `sluice down` finds the daemon that owns
    // the pins by it; a stopping daemon releases it before its successor adopts them.
    let mut pin_lock = PinDirLock::try_acquire(&args.pin_dir)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the pin directory {} belongs to another running sluice daemon; stop it (or `sluice down` through its socket) first, or give this one its own --pin-dir",
            args.pin_dir.display()
        )
    })
    .map(Some)?;
    let metrics_listener = match args.metrics_address.0 {
        Some(addr) => {
            let listener = metrics::bind(addr)?;
            let bound = listener.local_addr().unwrap_or(addr);
            log::info!(
                "metrics on http://{bound}{}, status page on http://{bound}{}",
                metrics::PATH,
                api::status_page::PAGE_PATH
            );
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
    let mut node = NodeState::Serving;
    let controller = if adopting {
        match saved::load(&state)? {
            Some(saved) => {
                node = saved.node;
                log::info!(
                    "adopting the data plane pinned in {} ({} listener(s), {} target(s))",
                    args.pin_dir.display(),
                    saved.listeners.len(),
                    saved.targets.len()
                );
                Controller::adopt(maps, &saved, Instant::now())?
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
    let counters = PerCpuArray::try_from(
        ebpf.take_map(STATS_MAP)
            .context("the XDP object has no STATS map")?,
    )
    .context("reading the STATS map")?;
    let (checker, health_events) = HealthChecker::new();
    let daemon = Rc::new(Daemon::new(Parts {
        controller,
        checker,
        config: args.config.clone(),
        counters: Box::new(counters),
        state,
        key_file: args.stickiness_keys.clone(),
        inherited,
        proxy: sluice::proxy::Settings {
            max_connections: args.max_connections.map(|n| n as usize),
            workers: args.proxy_workers.map(|n| n as usize),
            listen_backlog: args.listen_backlog,
        },
        node,
    }));
    // Applied and saved before anything is attached: from the moment the pins forward, a
    // daemon taking over finds the state that goes with them. An http/https listener that
    // cannot be served (its address taken, a file it names unusable) stops sluice here, as a
    // broken model would (a fresh start then removes its pins again: `fresh`).
    if args.ifaces.is_empty() {
        daemon.serve_l7_only();
    }
    let following = match shared.take() {
        Some(started) => {
            daemon.share(started.shared);
            daemon.apply_first(&model, started.revision)?;
            Some(started.revision + 1)
        }
        None => {
            daemon.apply_model(&model, &Origin::Start)?;
            None
        }
    };
    daemon.check_setup(args.ifaces.clone());

    for (iface, &ifindex) in args.ifaces.iter().zip(&ifindexes) {
        match pins::attach(&mut ebpf, &args.pin_dir, iface, ifindex, args.xdp_mode)? {
            pins::Attached::Replaced => log::info!(
                "sluice took over {iface} (ifindex {ifindex}): the previous program was replaced in one step; established flows keep their targets"
            ),
            pins::Attached::New(mode) => log::info!(
                "sluice attached to {iface} (ifindex {ifindex}) in {} mode",
                load::mode_name(mode)
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
        daemon.controller().model().listeners.len(),
        match (&args.store, &args.config) {
            (Some(url), _) => url.to_string(),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => "no configuration".into(),
        },
        socket = args.socket.display()
    );
    fresh.armed = false;
    // A LocalSet, so the API's connection tasks can share the daemon without locks.
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
        // Only now that the program forwards: an address is announced when it can be served.
        if let Some(bird) = bird {
            if node == NodeState::Draining {
                log::warn!("this node is draining (the previous daemon's `sluice node drain`): it announces nothing until `sluice node resume`");
            }
            daemon.start_announcing(bird);
        }
        let resolving =
            tokio::task::spawn_local(daemon::resolve::keep_resolved(Rc::clone(&daemon)));
        let following = following.map(|from| {
            tokio::task::spawn_local(daemon::shared::follow(Rc::clone(&daemon), from))
        });
        let mut successors = Successors::listen(&handover_path, handover_listener, handover_file)
            .context("listening for a successor on the hand-over socket")?;
        // Under systemd (Type=notify): ready, now that the http/https listeners, the control
        // API and metrics accept, and the service's main process (a successor started by
        // SIGUSR2 takes that role from its predecessor).
        daemon::systemd::ready_as_main();
        let served = daemon::serve(
            &daemon,
            &mut signals,
            health_events,
            logger,
            Some(&mut successors),
            restart,
        )
        .await;
        // Awaited, so their sockets are closed before a successor binds the same metrics
        // address (the hand-over below blocks this thread while the successor starts).
        resolving.abort();
        if let Some(following) = following {
            following.abort();
        }
        api.abort();
        let _ = api.await;
        if let Some(metrics) = metrics {
            metrics.abort();
            let _ = metrics.await;
        }
        let successor = match served? {
            Ending::Down => {
                daemon.withdraw_all(WITHDRAW_PATIENCE).await;
                return Ok(None);
            }
            Ending::Interrupt => {
                let proxy = daemon.take_proxy();
                let served = proxy.is_some_and(|p| !p.listening().is_empty());
                return Ok(served.then_some(Drained::Closed));
            }
            Ending::Stop => None,
            Ending::TakenOver(stream) => Some(stream),
        };
        // The successor adopts the data plane from the saved state and binds the control
        // socket: both are released before it may go on.
        daemon.save();
        drop(socket_file);
        drop(pin_lock.take());
        let drain = Duration::from_secs(args.drain_timeout);
        let mut proxy = daemon.take_proxy();
        let drained = daemon::handover::drain(
            proxy.as_mut(),
            &mut successors,
            successor,
            &mut signals,
            drain,
        )
        .await;
        Ok::<_, anyhow::Error>(Some(drained))
    });
    // Saved for the last time before the drain: from then on the state is the successor's.
    let drained = served?;
    if daemon.going_down() {
        // The program holds no link of its own (pins do), but drop it before the pins go.
        drop(ebpf);
        let removed = pins::remove_all(&args.pin_dir)?;
        log::info!("down: {}", removed.describe(&args.pin_dir));
    } else {
        let l7 = match drained {
            Some(Drained::HandedOver) => "; the http/https listeners went to the next daemon",
            Some(Drained::Closed) => {
                "; the http/https listeners are closed (no daemon took them over)"
            }
            Some(Drained::CutShort { open }) => {
                log::warn!("{open} connection(s) were still open at the end of the drain");
                "; the http/https listeners are closed"
            }
            _ => "",
        };
        log::info!(
            "stopped; the XDP program stays attached and forwards with the last state{l7}; the next `sluice run --pin-dir {}` takes over, `sluice down` removes it",
            args.pin_dir.display()
        );
    }
    Ok(())
}

/// The files `--store-*` name.
fn store_access(args: &RunArgs) -> StoreAccess {
    StoreAccess {
        cacert: args.store_cacert.clone(),
        client: args
            .store_cert
            .clone()
            .zip(args.store_key.clone())
            .map(|(cert, key)| CertificateFiles { cert, key }),
        user: args
            .store_user
            .clone()
            .zip(args.store_password_file.clone()),
    }
}

/// The host's name, this node's default name in the store.
fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name (give the node a name with --node-name)")?;
    Ok(name.trim().to_string())
}

/// A model with tcp/udp listeners needs an interface for XDP; an L7-only one runs without.
fn check_interfaces(model: &Model, ifaces: &[String]) -> anyhow::Result<()> {
    if !ifaces.is_empty() {
        return Ok(());
    }
    if let Some(l4) = model.l4_listeners_shown() {
        anyhow::bail!(
            "listener(s) {l4} are served by XDP, which needs the interface(s) their traffic arrives on: add --iface IF (e.g. --iface eth0); only http/https listeners run without --iface"
        );
    }
    log::info!("no --iface: serving http/https listeners only; tcp/udp listeners need --iface");
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: the L7 proxy holds two descriptors
/// per proxied connection, and the usual soft limit of 1024 would cap it near 500.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let before = limit.current;
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => log::debug!(
                "open files limit raised from {} to {}",
                before.map_or("unlimited".into(), |n| n.to_string()),
                limit.maximum.map_or("unlimited".into(), |n| n.to_string())
            ),
            Err(e) => log::debug!("open files limit not raised: {e}"),
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
