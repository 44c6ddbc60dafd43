//! The daemon's logic without root: reloads, edits, health events, ticks and `sluice down`,
//! against the in-memory data plane and state store. Targets are on loopback ports where
//! nothing listens, so the health checker's probes (refused at once) stay on this host.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use hyper::StatusCode;
use lb_common::stats::{Counter, CounterValue};

use super::{Daemon, Origin, Parts};
use crate::{
    api::Backend,
    controller::Controller,
    dataplane::{
        counters::Counters,
        memory::{MemoryDataplane, MemoryStore},
        saved,
    },
    health::{Health, HealthChecker, HealthEvent, Reason},
    model::{
        edit::{Edit, TargetSpec},
        Model, TargetKey,
    },
};

/// A configuration file that is removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "sluice-daemon-test-{}-{name}.toml",
            std::process::id()
        ));
        ConfigFile(path)
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn text(targets: &[&str], delay: u64) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ address = \"{t}\" }}"))
        .collect();
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\n\n[[target_group]]\nname = \"web\"\nport = 1\nderegistration_delay = {delay}\ntargets = [ {} ]\n",
        targets.join(", ")
    )
}

fn key(addr: &str) -> TargetKey {
    TargetKey {
        group: "web".into(),
        addr: format!("{addr}:1").parse().unwrap(),
    }
}

/// A daemon started on `config`'s current text.
fn started(config: &ConfigFile) -> Daemon<MemoryDataplane, MemoryStore> {
    started_with(config, &crate::model::resolve::SystemResolver)
}

/// [`started`] with host names resolved by `resolver`.
fn started_with(
    config: &ConfigFile,
    resolver: &dyn crate::model::resolve::Resolve,
) -> Daemon<MemoryDataplane, MemoryStore> {
    let counters = Counters(
        Counter::ALL
            .iter()
            .map(|&c| (c, CounterValue::default()))
            .collect(),
    );
    let (checker, _events) = HealthChecker::new();
    let daemon = Daemon::new(Parts {
        controller: Controller::new(MemoryDataplane::new(8, 64)),
        checker,
        config: Some(config.0.clone()),
        counters: Box::new(counters),
        state: MemoryStore::new(),
        key_file: std::path::PathBuf::from("/nonexistent/stickiness.keys"),
        inherited: Vec::new(),
        proxy: Default::default(),
        node: Default::default(),
    });
    let model = Model::load_with(&config.0, resolver).unwrap();
    daemon.apply_model(&model, &Origin::Start).unwrap();
    daemon
}

fn saved_targets(daemon: &Daemon<MemoryDataplane, MemoryStore>) -> Vec<(String, String)> {
    let state = saved::load(&*daemon.state.borrow()).unwrap().unwrap();
    state
        .targets
        .iter()
        .map(|t| (t.addr.to_string(), t.health.clone()))
        .collect()
}

#[tokio::test]
async fn a_reload_that_does_not_validate_changes_nothing() {
    let config = ConfigFile::new("invalid");
    config.write(&text(&["127.0.0.1"], 0));
    let daemon = started(&config);
    let before = daemon.controller().model().clone();
    let saved_before = saved_targets(&daemon);
    config.write(&format!(
        "{}\n[[listener]]\nname = \"web\"\n",
        text(&["127.0.0.2"], 0)
    ));
    let refused = daemon.reload(false).unwrap_err();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let expected = format!(
        "reload of {} refused, running configuration kept: ",
        config.0.display()
    );
    assert!(
        refused.message.starts_with(&expected),
        "{}",
        refused.message
    );
    assert_eq!(daemon.controller().model(), &before);
    assert_eq!(saved_targets(&daemon), saved_before);
}

#[tokio::test]
async fn a_reload_to_no_listeners_is_refused_unless_allowed() {
    let config = ConfigFile::new("empty");
    config.write(&text(&["127.0.0.1"], 0));
    let daemon = started(&config);
    let before = daemon.controller().model().clone();
    for empty in ["", "# everything commented out\n# [[listener]]\n"] {
        config.write(empty);
        let refused = daemon.reload(false).unwrap_err();
        assert_eq!(refused.status, StatusCode::CONFLICT);
        assert!(
            refused.message.contains("has no listeners")
                && refused.message.contains("sluice reload --allow-empty"),
            "{}",
            refused.message
        );
        assert_eq!(daemon.controller().model(), &before);
    }
    daemon.reload(true).unwrap();
    assert!(daemon.controller().model().listeners.is_empty());
    // Nothing runs now: an empty file again is no loss.
    daemon.reload(false).unwrap();
}

#[tokio::test]
async fn a_reload_applies_the_file_saves_the_state_and_rechecks() {
    let config = ConfigFile::new("reload");
    config.write(&text(&["127.0.0.1"], 0));
    let daemon = started(&config);
    assert_eq!(daemon.checker.borrow().len(), 1);
    config.write(&text(&["127.0.0.1", "127.0.0.2"], 0));
    let changes = daemon.reload(false).unwrap();
    assert_eq!(changes.targets_added, [key("127.0.0.2")]);
    assert_eq!(
        saved_targets(&daemon),
        [
            ("127.0.0.1:1".to_string(), "initial".to_string()),
            ("127.0.0.2:1".to_string(), "initial".to_string())
        ]
    );
    assert_eq!(
        daemon.checker.borrow().len(),
        2,
        "the new target is checked"
    );
}

#[tokio::test]
async fn an_edit_lasts_until_the_next_reload() {
    let config = ConfigFile::new("edit");
    config.write(&text(&["127.0.0.1"], 0));
    let daemon = started(&config);
    let edit = Edit::AddTarget(TargetSpec {
        group: "web".into(),
        address: "127.0.0.3".parse().unwrap(),
        port: None,
        weight: None,
    });
    let changes = daemon.change(edit.clone()).unwrap();
    assert_eq!(changes.targets_added, [key("127.0.0.3")]);
    // The same edit again is refused by the model, with nothing changed.
    let refused = daemon.change(edit).unwrap_err();
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.message);
    assert_eq!(
        daemon.controller().model().target_groups[0].targets.len(),
        2
    );
    // A reload drops it: the target drains.
    let changes = daemon.reload(false).unwrap();
    assert_eq!(changes.targets_draining, [key("127.0.0.3")]);
}

#[tokio::test]
async fn a_reload_without_a_file_is_refused() {
    let (checker, _events) = HealthChecker::new();
    let daemon = Daemon::new(Parts {
        controller: Controller::new(MemoryDataplane::new(8, 8)),
        checker,
        config: None,
        counters: Box::new(Counters(Vec::new())),
        state: MemoryStore::new(),
        key_file: std::path::PathBuf::from("/nonexistent/stickiness.keys"),
        inherited: Vec::new(),
        proxy: Default::default(),
        node: Default::default(),
    });
    let refused = daemon.reload(false).unwrap_err();
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.message.contains("without --config"),
        "{}",
        refused.message
    );
}

#[tokio::test]
async fn health_events_reach_the_tables_and_the_saved_state() {
    let config = ConfigFile::new("health");
    config.write(&text(&["127.0.0.1", "127.0.0.2"], 0));
    let daemon = started(&config);
    let event = |addr: &str, to| HealthEvent {
        target: key(addr),
        addr: key(addr).addr,
        from: Health::Initial,
        to,
        reason: Reason {
            code: None,
            description: "test".into(),
        },
    };
    daemon.health_changed(&event("127.0.0.1", Health::Healthy));
    daemon.health_changed(&event("127.0.0.2", Health::Unhealthy));
    assert_eq!(
        daemon.controller().health(&key("127.0.0.2")),
        Health::Unhealthy
    );
    let table = daemon.controller().dataplane().tables[&0].clone();
    let healthy = daemon
        .controller()
        .targets()
        .find(|(k, _, _)| **k == key("127.0.0.1"))
        .map(|(_, id, _)| id)
        .unwrap();
    assert!(
        table.iter().all(|&id| id == healthy),
        "only the healthy target"
    );
    assert_eq!(
        saved_targets(&daemon),
        [
            ("127.0.0.1:1".to_string(), "healthy".to_string()),
            ("127.0.0.2:1".to_string(), "unhealthy".to_string())
        ]
    );
}

#[tokio::test]
async fn ticks_end_drains_and_save_it() {
    let config = ConfigFile::new("tick");
    config.write(&text(&["127.0.0.1", "127.0.0.2"], 5));
    let daemon = started(&config);
    config.write(&text(&["127.0.0.1"], 5));
    let start = Instant::now();
    daemon.reload(false).unwrap();
    daemon.tick(start);
    assert_eq!(saved_targets(&daemon).len(), 2, "still draining");
    daemon.tick(start + Duration::from_secs(6));
    assert_eq!(
        saved_targets(&daemon),
        [("127.0.0.1:1".to_string(), "initial".to_string())]
    );
}

#[tokio::test]
async fn down_stops_the_event_loop_and_says_to_remove_the_pins() {
    let config = ConfigFile::new("down");
    config.write(&text(&["127.0.0.1"], 0));
    let daemon = started(&config);
    assert!(!daemon.going_down());
    daemon.down().unwrap();
    assert!(daemon.going_down());
    // The event loop's wait returns at once: the request was not lost.
    tokio::time::timeout(Duration::from_secs(5), daemon.down_requested())
        .await
        .expect("down wakes the event loop");
}

/// `text(targets, 0)` plus an http listener on 127.0.0.1:`port` with `extra` settings, over a
/// group of its own.
fn with_http(targets: &[&str], port: u16, extra: &str) -> String {
    format!(
        "{}\n[[listener]]\nname = \"site\"\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"http\"\ndefault_target_group = \"www\"\n{extra}\n[[target_group]]\nname = \"www\"\nport = 1\ntargets = [ {{ address = \"127.0.0.1\" }} ]\n",
        text(targets, 0)
    )
}

#[tokio::test]
async fn a_reload_whose_http_listener_cannot_be_served_writes_nothing_to_the_data_plane() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let config = ConfigFile::new("unservable");
    config.write(&with_http(&["127.0.0.1"], port, ""));
    let daemon = started(&config);
    let before = daemon.controller().model().clone();
    let writes = daemon.controller().dataplane().ops.len();
    let dir = std::env::temp_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let refusals = [
        (
            // A new target, and an access log that is a directory.
            with_http(
                &["127.0.0.1", "127.0.0.2"],
                port,
                &format!("access_log = \"{}\"\n", dir.display()),
            ),
            StatusCode::BAD_REQUEST,
            format!(
                "listener 'site': cannot open access_log {}: ",
                dir.display()
            ),
        ),
        (
            // A new target, and the http listener moved to a port another program holds.
            with_http(&["127.0.0.1", "127.0.0.2"], taken_port, ""),
            StatusCode::CONFLICT,
            format!("listener 'site': cannot listen on 127.0.0.1:{taken_port}: "),
        ),
    ];
    for (text, status, reason) in refusals {
        config.write(&text);
        let refused = daemon.reload(false).unwrap_err();
        assert_eq!(refused.status, status, "{}", refused.message);
        assert!(refused.message.contains(&reason), "{}", refused.message);
        // Not the model, not one write to the data plane: the new target is not registered.
        assert_eq!(daemon.controller().model(), &before);
        assert_eq!(daemon.controller().dataplane().ops.len(), writes);
    }
    // The listener still serves on its socket.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(taken);
}

/// With `--bird-routes`: health and `sluice node drain` decide what is announced; BIRD being
/// unreachable is reported, with the routes file written; the node's state is saved.
#[tokio::test]
async fn announcements_follow_health_and_node_drain() {
    use crate::announce::{Bird, NodeState, Withheld};
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let config = ConfigFile::new("announce");
            let withdraw = text(&["127.0.0.1", "127.0.0.2"], 0).replace(
                "default_target_group = \"web\"\n",
                "default_target_group = \"web\"\nwhen_unhealthy = \"withdraw\"\n",
            );
            config.write(&withdraw);
            let daemon = started(&config);
            assert!(
                daemon.node(None).is_err(),
                "without an announcer there is nothing to drain"
            );
            let dir = std::env::temp_dir().join(format!("sluice-announce-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let routes_file = dir.join("sluice.conf");
            daemon.start_announcing(Bird {
                socket: dir.join("no-bird.ctl"),
                routes_file: routes_file.clone(),
            });
            let vip: std::net::IpAddr = "192.0.2.10".parse().unwrap();
            // Every target still `initial`: a `withdraw` listener is not announced yet.
            let status = daemon.node(None).unwrap();
            assert!(status.wanted.is_empty(), "{status:?}");
            assert!(matches!(
                status.withheld[0].why,
                Withheld::NoHealthyTarget { .. }
            ));
            let event = |addr: &str, to| HealthEvent {
                target: key(addr),
                addr: key(addr).addr,
                from: Health::Initial,
                to,
                reason: Reason {
                    code: None,
                    description: "test".into(),
                },
            };
            daemon.health_changed(&event("127.0.0.1", Health::Healthy));
            assert_eq!(daemon.node(None).unwrap().wanted, [vip]);

            let status = daemon.node(Some(NodeState::Draining)).unwrap();
            assert_eq!(status.node, NodeState::Draining);
            assert!(status.wanted.is_empty());
            assert_eq!(status.withheld[0].why, Withheld::NodeDraining);
            let state = saved::load(&*daemon.state.borrow()).unwrap().unwrap();
            assert_eq!(state.node, NodeState::Draining, "a restart stays drained");

            // No BIRD on the socket: the file is written, the error shown, nothing claimed.
            let status = daemon.node(Some(NodeState::Serving)).unwrap();
            assert_eq!(status.wanted, [vip]);
            let announcer = daemon.announcer.borrow_mut().take().unwrap();
            let err = announcer
                .settled(Duration::from_millis(500))
                .await
                .unwrap_err();
            *daemon.announcer.borrow_mut() = Some(announcer);
            assert!(err.contains("no-bird.ctl"), "{err}");
            let status = daemon.node(None).unwrap();
            assert!(status.announced.is_empty(), "{status:?}");
            assert!(status.error.unwrap().contains("is bird running"));
            let file = std::fs::read_to_string(&routes_file).unwrap();
            assert!(file.contains("route 192.0.2.10/32 blackhole;"), "{file}");
            std::fs::remove_dir_all(&dir).unwrap();
        })
        .await;
}

/// `status` and the status page: the latest health transitions, oldest first and at most
/// `HEALTH_TRANSITIONS_KEPT`; a deregistered target's health is `draining`, whatever its
/// last check said.
#[tokio::test]
async fn status_keeps_the_latest_transitions_and_shows_draining() {
    use crate::api::HEALTH_TRANSITIONS_KEPT;
    let config = ConfigFile::new("transitions");
    config.write(&text(&["127.0.0.1", "127.0.0.2"], 300));
    let daemon = started(&config);
    let event = |from, to| HealthEvent {
        target: key("127.0.0.1"),
        addr: key("127.0.0.1").addr,
        from,
        to,
        reason: Reason {
            code: None,
            description: "test".into(),
        },
    };
    assert!(daemon.stats().unwrap().health_transitions.is_empty());
    for i in 0..HEALTH_TRANSITIONS_KEPT + 3 {
        let (from, to) = if i % 2 == 0 {
            (Health::Initial, Health::Healthy)
        } else {
            (Health::Healthy, Health::Unhealthy)
        };
        daemon.health_changed(&event(from, to));
    }
    let report = daemon.stats().unwrap();
    assert_eq!(report.health_transitions.len(), HEALTH_TRANSITIONS_KEPT);
    // The three oldest are gone: the first kept is the fourth (index 3, an odd one).
    let first = &report.health_transitions[0];
    assert_eq!(
        (first.from.as_str(), first.to.as_str()),
        ("healthy", "unhealthy")
    );
    assert_eq!(first.target, key("127.0.0.1").addr);
    assert!(report
        .health_transitions
        .windows(2)
        .all(|w| w[0].at_ms <= w[1].at_ms));

    // Deregistered, 127.0.0.1 drains for 300 s: health `draining`, state `draining`.
    config.write(&text(&["127.0.0.2"], 300));
    daemon.reload(false).unwrap();
    let report = daemon.stats().unwrap();
    let drained = report
        .targets
        .iter()
        .find(|t| t.address == key("127.0.0.1").addr)
        .unwrap();
    assert_eq!(
        (drained.state.name(), drained.health.as_str()),
        ("draining", "draining")
    );
    let kept = report
        .targets
        .iter()
        .find(|t| t.address == key("127.0.0.2").addr)
        .unwrap();
    assert_eq!(kept.health, "initial");
}

#[tokio::test]
async fn host_names_that_move_are_applied_and_those_that_fail_keep_their_address() {
    use crate::model::resolve::{Resolve, Table};
    use std::collections::{BTreeMap, BTreeSet};
    let config = ConfigFile::new("host-names");
    config.write(&text(&["app1"], 60));
    let daemon = started_with(
        &config,
        &Table(BTreeMap::from([("app1", vec!["127.0.0.1"])])),
    );
    assert_eq!(
        daemon.controller().model().target_groups[0].targets[0].address,
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    let names = daemon.controller().model().host_names();
    let mut failing = BTreeSet::new();

    let moved = Table(BTreeMap::from([("app1", vec!["127.0.0.2"])])).resolve(&names);
    daemon.refresh_addresses(&moved, &mut failing);
    let targets = daemon.controller().model().target_groups[0].targets.clone();
    assert_eq!(targets[0].address.to_string(), "127.0.0.2");
    assert_eq!(targets[0].host.as_deref(), Some("app1"));
    // Applied like any change: the new address saved for the next daemon, the old one
    // draining for its deregistration delay.
    let saved: Vec<String> = saved_targets(&daemon).into_iter().map(|t| t.0).collect();
    assert!(saved.contains(&"127.0.0.2:1".to_string()), "{saved:?}");
    let views = daemon.controller().target_views();
    assert!(views[&key("127.0.0.1")].draining, "the old address drains");
    assert!(!views[&key("127.0.0.2")].draining);

    let gone = Table(BTreeMap::new()).resolve(&names);
    daemon.refresh_addresses(&gone, &mut failing);
    assert_eq!(failing, BTreeSet::from(["app1".to_string()]));
    let targets = daemon.controller().model().target_groups[0].targets.clone();
    assert_eq!(targets[0].address.to_string(), "127.0.0.2");

    daemon.refresh_addresses(&moved, &mut failing);
    assert!(failing.is_empty());
}

#[tokio::test]
async fn a_daemon_without_interfaces_refuses_tcp_listeners_and_keeps_its_model() {
    let config = ConfigFile::new("l7-only");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    config.write(&text(&["127.0.0.1"], 0).replace(
        "192.0.2.10\"\nport = 80\nprotocol = \"tcp\"",
        &format!("127.0.0.1\"\nport = {port}\nprotocol = \"http\""),
    ));
    let daemon = started(&config);
    daemon.serve_l7_only();
    let before = daemon.controller().model().clone();
    config.write(&text(&["127.0.0.1"], 0));
    let refused = daemon.reload(false).unwrap_err();
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.message.contains("listener(s) 'web' (tcp) are served by XDP, which this daemon attached to no interface (it runs without --iface); restart it with --iface IF"),
        "{}",
        refused.message
    );
    assert_eq!(daemon.controller().model(), &before);
}
