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
        max_connections: None,
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
        max_connections: None,
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
