//! The README's quick start is a promise: its model parses and validates as written (with its
//! host names resolved by a table), its faster health check does too, and the timings the
//! README states are what the defaults and that profile give.

use std::{collections::BTreeMap, time::Duration};

use super::{resolve::Table, Model, Protocol};
use crate::health::HealthCheck;

const README: &str = include_str!("../../../README.md");

/// The ```toml block after the quick-start marker.
fn quick_start_model() -> &'static str {
    let marker = "<!-- quick-start: checked by lb-userspace/src/model/quick_start.rs -->";
    let after = &README[README
        .find(marker)
        .expect("the README has the quick-start marker")..];
    let start = after
        .find("```toml\n")
        .expect("a toml block follows the marker")
        + 8;
    let end = after[start..].find("```").expect("the toml block ends") + start;
    &after[start..end]
}

/// Whether the README says `sentence`, however its lines are wrapped.
fn says(sentence: &str) -> bool {
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    words(README).contains(&words(sentence))
}

fn apps() -> Table {
    Table(BTreeMap::from([
        ("app1", vec!["10.0.0.1"]),
        ("app2", vec!["10.0.0.2"]),
        ("app3", vec!["10.0.0.3"]),
    ]))
}

/// How long after a target dies it is unhealthy, and after it recovers healthy again (as
/// whole checks: a threshold of N is N intervals).
fn timings(check: &HealthCheck) -> (Duration, Duration) {
    (
        check.interval * check.unhealthy_threshold,
        check.interval * check.healthy_threshold,
    )
}

#[test]
fn the_readme_quick_start_model_is_valid_and_means_what_it_says() {
    let model = Model::parse_with(quick_start_model(), "README.md", &apps()).unwrap();
    let listener = &model.listeners[0];
    assert_eq!(listener.protocol, Protocol::Http);
    assert!(listener.address.is_unspecified());
    assert_eq!(listener.port, 80);
    assert!(
        !model.has_l4_listeners(),
        "the README runs it without --iface"
    );
    let group = &model.target_groups[0];
    let targets: Vec<(Option<&str>, String, u16)> = group
        .targets
        .iter()
        .map(|t| {
            (
                t.host.as_deref(),
                t.address.to_string(),
                t.port_for(group, listener),
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            (Some("app1"), "10.0.0.1".to_string(), 8080),
            (Some("app2"), "10.0.0.2".to_string(), 8080),
            (Some("app3"), "10.0.0.3".to_string(), 8080),
        ]
    );
    assert_eq!(model.resolver.refresh(), Duration::from_secs(30));
    assert!(says("at least every 30 s (`[resolver] refresh = \"30s\"`)"));

    // The defaults: "noticed after about 1 minute and taken back about 2.5 minutes after".
    let check = group.health_check();
    assert_eq!(check.interval, Duration::from_secs(30));
    assert_eq!(
        timings(&check),
        (Duration::from_secs(60), Duration::from_secs(150))
    );
    assert!(says(
        "a dead app is noticed after about 1 minute and taken back about 2.5 minutes after it recovers"
    ));
}

#[test]
fn the_readme_faster_health_check_is_valid_and_as_fast_as_it_says() {
    let faster = quick_start_model()
        .lines()
        .find_map(|l| l.strip_prefix("# health_check = "))
        .expect("the commented faster profile");
    let text = quick_start_model().replace("# health_check = ", "health_check = ");
    let model = Model::parse_with(&text, "README.md", &apps()).unwrap();
    let check = model.target_groups[0].health_check();
    assert!(faster.contains("protocol = \"http\", path = \"/health\""));
    assert_eq!(
        timings(&check),
        (Duration::from_secs(10), Duration::from_secs(10))
    );
    assert!(says(
        "notices a dead app within about 10 s and takes it back about 10 s after it recovers"
    ));
}
