//! Runs the checks of a changing set of targets, one task per target, and reports every
//! change of state on a channel.

use std::{collections::BTreeMap, fmt, net::SocketAddr, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};

use super::{
    probe::{probe, ProbeResult},
    state::{Health, Reason, TargetHealth},
    HealthCheck,
};

/// The longest spread of first checks among targets that start together.
const STAGGER: Duration = Duration::from_secs(1);

/// A target changed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent<K> {
    pub target: K,
    /// The target's traffic address.
    pub addr: SocketAddr,
    pub from: Health,
    pub to: Health,
    pub reason: Reason,
}

/// What is known of a target now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    pub health: TargetHealth,
    /// The latest check's result (latency, status), for metrics and display.
    pub last: Option<ProbeResult>,
}

struct Running {
    addr: SocketAddr,
    check: HealthCheck,
    status: watch::Receiver<TargetStatus>,
    task: JoinHandle<()>,
    /// Distinguishes restarts, for tests.
    #[cfg_attr(not(test), allow(dead_code))]
    generation: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks targets named by `K` (for the daemon, a target group and target address: each
/// group checks its targets with its own settings, as in ELB). Must be used inside a tokio
/// runtime; its tasks are `Send`, so any runtime flavour works. Dropping it stops every check.
pub struct HealthChecker<K> {
    events: mpsc::UnboundedSender<HealthEvent<K>>,
    targets: BTreeMap<K, Running>,
    generation: u64,
    /// States a previous daemon established, taken by targets when they start (hitless
    /// restart).
    adopted: BTreeMap<K, Health>,
}

impl<K> HealthChecker<K>
where
    K: Clone + Ord + fmt::Debug + Send + 'static,
{
    /// The checker and its events. Events are state changes only, so the channel's length is
    /// bounded in practice by the number of targets times the rate of flapping.
    pub fn new() -> (HealthChecker<K>, mpsc::UnboundedReceiver<HealthEvent<K>>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let checker = HealthChecker {
            events,
            targets: BTreeMap::new(),
            generation: 0,
            adopted: BTreeMap::new(),
        };
        (checker, receiver)
    }

    /// Targets that start later (in [`HealthChecker::set_targets`]) start in these states
    /// instead of `Initial`: what a previous daemon had established.
    pub fn adopt(&mut self, states: impl IntoIterator<Item = (K, Health)>) {
        self.adopted.extend(states);
    }

    /// Makes the checked set exactly `targets` (key, traffic address, settings), touching
    /// only what changed:
    /// - a target not checked before starts `Initial`, with its first check right away;
    /// - a removed target's checks stop (an in-flight check is abandoned, unreported);
    /// - a target whose settings changed keeps its state; its runs of passes or failures
    ///   start again under the new settings, with a check right away;
    /// - a target whose address changed is a new target;
    /// - every other target carries on undisturbed.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = (K, SocketAddr, HealthCheck)>) {
        let mut wanted: BTreeMap<K, (SocketAddr, HealthCheck)> = BTreeMap::new();
        for (key, addr, check) in targets {
            wanted.insert(key, (addr, check));
        }
        self.targets.retain(|key, _| wanted.contains_key(key));
        let mut starting = Vec::new();
        for (key, (addr, check)) in wanted {
            let health = match self.targets.get(&key) {
                Some(running) if running.addr == addr && running.check == check => continue,
                Some(running) if running.addr == addr => {
                    let mut health = running.status.borrow().health.clone();
                    health.restart_counting();
                    health
                }
                _ => match self.adopted.remove(&key) {
                    Some(state) => TargetHealth::adopted(state),
                    None => TargetHealth::new(),
                },
            };
            starting.push((key, addr, check, health));
        }
        let count = starting.len() as u32;
        for (i, (key, addr, check, health)) in starting.into_iter().enumerate() {
            // Targets starting together (a daemon's start, a reload adding many) are checked
            // at once, so they leave `initial` together, but then spread their checks over up
            // to a second instead of probing in lockstep forever after.
            let phase = check.interval.min(STAGGER) * i as u32 / count.max(1);
            // Replacing the old entry drops it, which stops its task.
            let running = self.start(key.clone(), addr, check, health, phase);
            self.targets.insert(key, running);
        }
    }

    pub fn status(&self, target: &K) -> Option<TargetStatus> {
        self.targets.get(target).map(|r| r.status.borrow().clone())
    }

    pub fn health(&self, target: &K) -> Option<Health> {
        self.targets
            .get(target)
            .map(|r| r.status.borrow().health.state())
    }

    /// Every checked target's state, in key order (for [`super::routable`]).
    pub fn states(&self) -> Vec<(K, Health)> {
        self.targets
            .iter()
            .map(|(k, r)| (k.clone(), r.status.borrow().health.state()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn start(
        &mut self,
        key: K,
        addr: SocketAddr,
        check: HealthCheck,
        health: TargetHealth,
        phase: Duration,
    ) -> Running {
        self.generation += 1;
        let (status, receiver) = watch::channel(TargetStatus {
            health: health.clone(),
            last: None,
        });
        let task = tokio::spawn(run(
            key,
            addr,
            check.clone(),
            health,
            status,
            self.events.clone(),
            phase,
        ));
        Running {
            addr,
            check,
            status: receiver,
            task,
            generation: self.generation,
        }
    }
}

async fn run<K: Clone>(
    key: K,
    addr: SocketAddr,
    check: HealthCheck,
    mut health: TargetHealth,
    status: watch::Sender<TargetStatus>,
    events: mpsc::UnboundedSender<HealthEvent<K>>,
    phase: Duration,
) {
    // As in ELB, the interval runs from check to check whatever each takes; a timeout
    // shorter than the interval (validated) keeps checks from overlapping. The first check
    // is at once, the next ones shifted by `phase`.
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + check.interval + phase,
        check.interval,
    );
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            ticks.tick().await;
        }
        let result = probe(&check, addr).await;
        let change = health.record(&check, &result.outcome);
        // Status before event, with no await between: whoever reads the event finds the
        // status already agreeing with it.
        status.send_replace(TargetStatus {
            health: health.clone(),
            last: Some(result),
        });
        if let Some(change) = change {
            let event = HealthEvent {
                target: key.clone(),
                addr,
                from: change.from,
                to: change.to,
                reason: change.reason,
            };
            if events.send(event).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use tokio::net::TcpListener;

    use super::*;
    use crate::health::{probe::tests::HttpServer, CheckProtocol, ReasonCode};

    /// Generous: reached only when something is wrong, never on a slow machine.
    const BOUND: Duration = Duration::from_secs(20);

    fn fast(protocol: CheckProtocol) -> HealthCheck {
        HealthCheck {
            protocol,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(90),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            ..HealthCheck::default()
        }
    }

    /// The next event for `target` that reaches `to`, skipping any others.
    async fn next_to(
        events: &mut mpsc::UnboundedReceiver<HealthEvent<&'static str>>,
        target: &str,
        to: Health,
    ) -> HealthEvent<&'static str> {
        tokio::time::timeout(BOUND, async {
            loop {
                let event = events.recv().await.expect("the checker is alive");
                if event.target == target && event.to == to {
                    return event;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{target} did not become {to} within {BOUND:?}"))
    }

    /// A TCP server that accepts and drops connections; dropping it closes its port.
    fn tcp_server(listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let _ = listener.accept().await;
            }
        })
    }

    #[tokio::test]
    async fn a_stopped_target_goes_unhealthy_and_a_restarted_one_healthy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tcp_server(listener);
        let (mut checker, mut events) = HealthChecker::new();
        checker.set_targets([("web", addr, fast(CheckProtocol::Tcp))]);
        assert_eq!(checker.health(&"web"), Some(Health::Initial));

        let event = next_to(&mut events, "web", Health::Healthy).await;
        assert_eq!((event.from, event.addr), (Health::Initial, addr));

        server.abort();
        let _ = server.await;
        let event = next_to(&mut events, "web", Health::Unhealthy).await;
        assert_eq!(
            event.reason.to_string(),
            "Target.FailedHealthChecks: Connection refused"
        );
        assert_eq!(checker.health(&"web"), Some(Health::Unhealthy));

        let server = tcp_server(TcpListener::bind(addr).await.unwrap());
        let event = next_to(&mut events, "web", Health::Healthy).await;
        assert_eq!(event.from, Health::Unhealthy);
        assert_eq!(
            event.reason.description,
            "2 consecutive health checks passed"
        );
        let last = checker.status(&"web").unwrap().last.unwrap();
        assert!(last.latency < Duration::from_millis(90), "{last:?}");
        server.abort();
    }

    #[tokio::test]
    async fn http_targets_report_codes_and_timeouts() {
        let server = HttpServer::start(200).await;
        let (mut checker, mut events) = HealthChecker::new();
        // The test's server shares the runtime, so a little more time than for tcp.
        let check = HealthCheck {
            matcher: "200-299".parse().unwrap(),
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(200),
            ..fast(CheckProtocol::Http)
        };
        checker.set_targets([("api", server.addr, check)]);
        next_to(&mut events, "api", Health::Healthy).await;

        server.status.store(500, Ordering::Relaxed);
        let event = next_to(&mut events, "api", Health::Unhealthy).await;
        assert_eq!(event.reason.code, Some(ReasonCode::ResponseCodeMismatch));
        assert_eq!(
            event.reason.description,
            "Health checks failed with these codes: [500]"
        );

        server.status.store(204, Ordering::Relaxed);
        next_to(&mut events, "api", Health::Healthy).await;
        server.status.store(0, Ordering::Relaxed);
        let event = next_to(&mut events, "api", Health::Unhealthy).await;
        assert_eq!(
            event.reason.to_string(),
            "Target.Timeout: Request timed out"
        );
    }

    #[tokio::test]
    async fn changing_the_set_leaves_other_targets_alone() {
        let a = tcp_server_bound().await;
        let mut b = tcp_server_bound().await;
        let (mut checker, mut events) = HealthChecker::new();
        checker.set_targets([("a", a.0, fast(CheckProtocol::Tcp))]);
        next_to(&mut events, "a", Health::Healthy).await;
        let a_generation = checker.targets[&"a"].generation;

        checker.set_targets([
            ("a", a.0, fast(CheckProtocol::Tcp)),
            ("b", b.0, fast(CheckProtocol::Tcp)),
        ]);
        assert_eq!(checker.targets[&"a"].generation, a_generation);
        assert_eq!(checker.health(&"a"), Some(Health::Healthy));
        next_to(&mut events, "b", Health::Healthy).await;

        // New settings restart the checks but keep the state.
        let slower = HealthCheck {
            interval: Duration::from_millis(150),
            ..fast(CheckProtocol::Tcp)
        };
        checker.set_targets([
            ("a", a.0, slower.clone()),
            ("b", b.0, fast(CheckProtocol::Tcp)),
        ]);
        assert_ne!(checker.targets[&"a"].generation, a_generation);
        assert_eq!(checker.health(&"a"), Some(Health::Healthy));

        // Removed, "a" is no longer checked: stopping its server reports nothing, though
        // "b" meanwhile goes unhealthy and back (at least four intervals).
        checker.set_targets([("b", b.0, fast(CheckProtocol::Tcp))]);
        assert_eq!(checker.status(&"a"), None);
        assert_eq!(checker.len(), 1);
        a.1.abort();
        b.1.abort();
        let _ = (&mut b.1).await;
        for to in [Health::Unhealthy, Health::Healthy] {
            let event = tokio::time::timeout(BOUND, events.recv())
                .await
                .expect("b changes state within the bound")
                .unwrap();
            assert_eq!((event.target, event.to), ("b", to), "{event:?}");
            if to == Health::Unhealthy {
                let server = tcp_server(TcpListener::bind(b.0).await.unwrap());
                b.1 = server;
            }
        }
        b.1.abort();
    }

    async fn tcp_server_bound() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (listener.local_addr().unwrap(), tcp_server(listener))
    }
}
