//! Host-name targets (`address = "app1:8080"`): resolved when a model is loaded, and again
//! while it runs, as HAProxy's `resolvers` and nginx's `resolve` do. A name is asked again
//! when its answer's TTL ends, and at least every `[resolver] refresh` (default 30 s; answers
//! from `/etc/hosts` have no TTL of their own). An address that changes reaches the data plane
//! through the normal apply path: the old address drains like a removed target. A name that
//! stops resolving keeps its last address, with a warning each time it is asked.
//!
//! One address per target: the current one while the name still gives it, else the lowest
//! IPv4 address, else the lowest IPv6 address (stable when a server rotates its answers).
//! Names are resolved by hickory-resolver with the system's configuration (`/etc/resolv.conf`)
//! and `/etc/hosts`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{Model, Target};

/// The default of `[resolver] refresh`: the longest an answer is used before asking again.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// A shorter TTL is not honoured below this (a TTL of 0 would ask in a loop).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// How long one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// `[resolver]`: how host-name targets are kept up to date.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverSettings {
    /// The longest an answer is used before the name is asked again (a record's shorter TTL
    /// is honoured, down to 1 s). Default 30 s.
    #[serde(
        default,
        deserialize_with = "crate::health::spec::optional_duration",
        serialize_with = "crate::health::spec::serialize_optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh: Option<Duration>,
}

impl ResolverSettings {
    pub fn refresh(&self) -> Duration {
        self.refresh.unwrap_or(DEFAULT_REFRESH)
    }
}

/// What one name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<IpAddr>,
    /// How long the answer may be used (its TTL), when the resolver knows.
    pub valid_for: Option<Duration>,
}

/// Per name: its answer, or why there is none.
pub type Answers = BTreeMap<String, Result<Answer, String>>;

/// Something that resolves names: the system's resolver, or a table in tests.
pub trait Resolve {
    fn resolve(&self, names: &BTreeSet<String>) -> Answers;
}

/// The system's resolver (`/etc/resolv.conf`, `/etc/hosts`), asked from a thread of its own
/// so that it may be used from inside or outside an async runtime.
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, names: &BTreeSet<String>) -> Answers {
        if names.is_empty() {
            return Answers::new();
        }
        let failed = |why: String| {
            names
                .iter()
                .map(|n| (n.clone(), Err(why.clone())))
                .collect()
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => runtime.block_on(resolve_system(names)),
                        Err(e) => failed(format!("cannot start a resolver: {e}")),
                    }
                })
                .join()
                .unwrap_or_else(|_| failed("the resolver panicked".into()))
        })
    }
}

/// Resolves `names` with the system's configuration, read afresh (a changed
/// `/etc/resolv.conf` or `/etc/hosts` is seen at the next refresh).
pub async fn resolve_system(names: &BTreeSet<String>) -> Answers {
    use hickory_resolver::{
        config::{ResolverConfig, ResolverOpts},
        net::runtime::TokioRuntimeProvider,
        TokioResolver,
    };
    let builder = match TokioResolver::builder_tokio() {
        Ok(builder) => builder,
        // No /etc/resolv.conf (a minimal container): /etc/hosts alone.
        Err(e) => {
            log::debug!("no system resolver configuration ({e}); using /etc/hosts only");
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let mut builder = builder;
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = LOOKUP_TIMEOUT;
    options.attempts = 1;
    // Each refresh asks anew: the TTL decides when, not a cache.
    options.cache_size = 0;
    let resolver = match builder.build() {
        Ok(resolver) => resolver,
        Err(e) => {
            return names
                .iter()
                .map(|n| (n.clone(), Err(format!("cannot start a resolver: {e}"))))
                .collect()
        }
    };
    let mut lookups = tokio::task::JoinSet::new();
    for name in names {
        let resolver = resolver.clone();
        let name = name.clone();
        lookups.spawn(async move {
            let answer = resolver.lookup_ip(name.as_str()).await;
            let answer = match answer {
                Ok(lookup) => {
                    let addresses: Vec<IpAddr> = lookup.iter().collect();
                    let valid_for = lookup
                        .valid_until()
                        .saturating_duration_since(Instant::now());
                    if addresses.is_empty() {
                        Err("no address found".to_string())
                    } else {
                        Ok(Answer {
                            addresses,
                            valid_for: Some(valid_for),
                        })
                    }
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    Err("no address found".to_string())
                }
                Err(e) => Err(format!(
                    "not in /etc/hosts, and no DNS server of /etc/resolv.conf answered: {e}"
                )),
            };
            (name, answer)
        });
    }
    let mut answers = Answers::new();
    while let Some(done) = lookups.join_next().await {
        if let Ok((name, answer)) = done {
            answers.insert(name, answer);
        }
    }
    for name in names {
        answers
            .entry(name.clone())
            .or_insert_with(|| Err("the lookup did not finish".into()));
    }
    answers
}

/// A resolver that falls back to the addresses a running model has, for names that no longer
/// resolve (a reload keeps them, as the refresh does).
pub struct KeepingLast<'a> {
    pub resolver: &'a dyn Resolve,
    pub last: BTreeMap<String, IpAddr>,
}

impl Resolve for KeepingLast<'_> {
    fn resolve(&self, names: &BTreeSet<String>) -> Answers {
        let mut answers = self.resolver.resolve(names);
        for (name, answer) in answers.iter_mut() {
            if let (Err(why), Some(&last)) = (&*answer, self.last.get(name)) {
                log::warn!("{name} does not resolve ({why}); keeping its last address {last}");
                *answer = Ok(Answer {
                    addresses: vec![last],
                    valid_for: None,
                });
            }
        }
        answers
    }
}

/// The address a target takes from `addresses`: `current` while it is among them, else the
/// lowest IPv4 address, else the lowest IPv6 address.
pub fn choose(addresses: &[IpAddr], current: Option<IpAddr>) -> Option<IpAddr> {
    if let Some(current) = current.filter(|c| addresses.contains(c)) {
        return Some(current);
    }
    let lowest = |v4: bool| {
        addresses
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .min()
            .copied()
    };
    lowest(true).or_else(|| lowest(false))
}

/// A host-name target that did not resolve while the model was loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub group: usize,
    pub index: usize,
    pub host: String,
    pub why: String,
}

impl Model {
    /// The host names the targets give.
    pub fn host_names(&self) -> BTreeSet<String> {
        self.targets().filter_map(|t| t.host.clone()).collect()
    }

    /// Each host name with the address it has now.
    pub fn resolved_hosts(&self) -> BTreeMap<String, IpAddr> {
        self.targets()
            .filter_map(|t| Some((t.host.clone()?, t.address)))
            .collect()
    }

    fn targets(&self) -> impl Iterator<Item = &Target> {
        self.target_groups.iter().flat_map(|g| g.targets.iter())
    }

    /// Gives every host-name target the address `answers` has for it; the first target whose
    /// name has none is returned.
    pub(super) fn fill_addresses(&mut self, answers: &Answers) -> Result<(), Unresolved> {
        for (gi, group) in self.target_groups.iter_mut().enumerate() {
            for (ti, target) in group.targets.iter_mut().enumerate() {
                let Some(host) = &target.host else { continue };
                let answer = answers
                    .get(host)
                    .cloned()
                    .unwrap_or_else(|| Err("not asked".into()));
                let chosen = answer.and_then(|a| {
                    choose(&a.addresses, None).ok_or_else(|| "no address found".to_string())
                });
                match chosen {
                    Ok(address) => target.address = address,
                    Err(why) => {
                        return Err(Unresolved {
                            group: gi,
                            index: ti,
                            host: host.clone(),
                            why,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a refresh found: the model with new addresses (None: nothing changed) and what to
/// say about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    pub model: Option<Model>,
    /// Sentences for the log: addresses that changed.
    pub moved: Vec<String>,
    /// Names without an answer, each with a sentence saying so.
    pub unresolved: BTreeMap<String, String>,
    /// When to ask again.
    pub next: Duration,
}

/// The running `model` with `answers` applied: a name whose address is gone takes another
/// of its addresses; a name without an answer keeps its address, with a warning.
pub fn refresh(model: &Model, answers: &Answers) -> Refresh {
    let mut next = model.resolver.refresh();
    let mut changed = model.clone();
    let mut moved = Vec::new();
    let mut unresolved = BTreeMap::new();
    for group in &mut changed.target_groups {
        for target in &mut group.targets {
            let Some(host) = target.host.clone() else {
                continue;
            };
            match answers.get(&host) {
                Some(Ok(answer)) => {
                    if let Some(valid_for) = answer.valid_for {
                        next = next.min(valid_for.max(MIN_REFRESH));
                    }
                    let Some(address) = choose(&answer.addresses, Some(target.address)) else {
                        continue;
                    };
                    if address != target.address {
                        moved.push(format!(
                            "target group '{}': {host} now resolves to {address} (was {}); the old address drains",
                            group.name, target.address
                        ));
                        target.address = address;
                    }
                }
                Some(Err(why)) => {
                    unresolved.entry(host.clone()).or_insert_with(|| {
                        format!(
                            "{host} does not resolve ({why}); its targets keep their last address {}",
                            target.address
                        )
                    });
                }
                None => {}
            }
        }
    }
    Refresh {
        model: (changed != *model).then_some(changed),
        moved,
        unresolved,
        next,
    }
}

/// A table of answers, for tests.
#[cfg(test)]
pub struct Table(pub BTreeMap<&'static str, Vec<&'static str>>);

#[cfg(test)]
impl Resolve for Table {
    fn resolve(&self, names: &BTreeSet<String>) -> Answers {
        names
            .iter()
            .map(|name| {
                let answer = match self.0.get(name.as_str()) {
                    Some(addresses) => Ok(Answer {
                        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                        valid_for: None,
                    }),
                    None => Err("no address found".to_string()),
                };
                (name.clone(), answer)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPOSE: &str = r#"
        [[listener]]
        name = "web"
        address = "0.0.0.0"
        port = 80
        protocol = "http"
        default_target_group = "apps"

        [[target_group]]
        name = "apps"
        targets = [ { address = "app1:8080" }, { address = "app2", port = 8080 }, { address = "10.0.0.9:8080" } ]
    "#;

    fn table(entries: &[(&'static str, &[&'static str])]) -> Table {
        Table(entries.iter().map(|(n, a)| (*n, a.to_vec())).collect())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn host_names_are_resolved_when_the_model_is_loaded() {
        let resolver = table(&[
            ("app1", &["10.0.0.1"]),
            ("app2", &["fd00::2", "10.0.0.3", "10.0.0.2"]),
        ]);
        let model = Model::parse_with(COMPOSE, "compose.toml", &resolver).unwrap();
        let targets = &model.target_groups[0].targets;
        assert_eq!(targets[0].address, ip("10.0.0.1"));
        assert_eq!(targets[0].port, Some(8080));
        assert_eq!(targets[0].host.as_deref(), Some("app1"));
        // The lowest IPv4 address of several.
        assert_eq!(targets[1].address, ip("10.0.0.2"));
        assert_eq!(targets[2].host, None);
        assert_eq!(
            model.host_names().into_iter().collect::<Vec<_>>(),
            ["app1", "app2"]
        );
    }

    #[test]
    fn a_name_that_does_not_resolve_at_load_is_refused_with_its_line() {
        let resolver = table(&[("app1", &["10.0.0.1"])]);
        let e = Model::parse_with(COMPOSE, "compose.toml", &resolver)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("compose.toml, line 11: target group 'apps': target app2 does not resolve (no address found)"),
            "{e}"
        );
    }

    #[test]
    fn a_reload_keeps_the_last_address_of_a_name_that_stopped_resolving() {
        let before = table(&[("app1", &["10.0.0.1"]), ("app2", &["10.0.0.2"])]);
        let running = Model::parse_with(COMPOSE, "compose.toml", &before).unwrap();
        let after = table(&[("app1", &["10.0.0.11"])]);
        let keeping = KeepingLast {
            resolver: &after,
            last: running.resolved_hosts(),
        };
        let model = Model::parse_with(COMPOSE, "compose.toml", &keeping).unwrap();
        let targets = &model.target_groups[0].targets;
        assert_eq!(targets[0].address, ip("10.0.0.11"));
        assert_eq!(targets[1].address, ip("10.0.0.2"));
    }

    #[test]
    fn a_refresh_moves_changed_names_and_keeps_those_that_fail() {
        let before = table(&[("app1", &["10.0.0.1"]), ("app2", &["10.0.0.2"])]);
        let running = Model::parse_with(COMPOSE, "compose.toml", &before).unwrap();

        let same = before.resolve(&running.host_names());
        let unchanged = refresh(&running, &same);
        assert_eq!(unchanged.model, None);
        assert!(unchanged.moved.is_empty() && unchanged.unresolved.is_empty());
        assert_eq!(unchanged.next, DEFAULT_REFRESH);

        let mut answers = table(&[("app1", &["10.0.0.7"])]).resolve(&running.host_names());
        answers.get_mut("app1").unwrap().as_mut().unwrap().valid_for = Some(Duration::from_secs(5));
        let refreshed = refresh(&running, &answers);
        let model = refreshed.model.expect("app1 moved");
        assert_eq!(model.target_groups[0].targets[0].address, ip("10.0.0.7"));
        assert_eq!(model.target_groups[0].targets[1].address, ip("10.0.0.2"));
        assert_eq!(
            refreshed.moved,
            ["target group 'apps': app1 now resolves to 10.0.0.7 (was 10.0.0.1); the old address drains"]
        );
        assert_eq!(
            refreshed.unresolved,
            BTreeMap::from([(
                "app2".to_string(),
                "app2 does not resolve (no address found); its targets keep their last address 10.0.0.2".to_string()
            )])
        );
        // A shorter TTL is honoured, down to a second.
        assert_eq!(refreshed.next, Duration::from_secs(5));
        answers.get_mut("app1").unwrap().as_mut().unwrap().valid_for = Some(Duration::ZERO);
        assert_eq!(refresh(&running, &answers).next, MIN_REFRESH);
    }

    #[test]
    fn a_target_keeps_its_address_while_the_name_still_gives_it() {
        let all = [ip("10.0.0.3"), ip("10.0.0.1"), ip("fd00::1")];
        assert_eq!(choose(&all, Some(ip("10.0.0.3"))), Some(ip("10.0.0.3")));
        assert_eq!(choose(&all, Some(ip("10.0.0.9"))), Some(ip("10.0.0.1")));
        assert_eq!(choose(&all[2..], None), Some(ip("fd00::1")));
        assert_eq!(choose(&[], None), None);
    }

    #[test]
    fn refresh_is_bounded() {
        let text = format!("{COMPOSE}\n[resolver]\nrefresh = \"5s\"\n");
        let resolver = table(&[("app1", &["10.0.0.1"]), ("app2", &["10.0.0.2"])]);
        let model = Model::parse_with(&text, "t", &resolver).unwrap();
        assert_eq!(model.resolver.refresh(), Duration::from_secs(5));
        for bad in ["0s", "120m"] {
            let text = format!("{COMPOSE}\n[resolver]\nrefresh = \"{bad}\"\n");
            let e = Model::parse_with(&text, "t", &resolver)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("resolver.refresh") && e.contains("1 s to 3600 s"),
                "{e}"
            );
        }
    }

    /// The system resolver reads /etc/hosts: `localhost` is in every hosts file.
    #[test]
    fn the_system_resolver_reads_the_hosts_file() {
        let names = BTreeSet::from(["localhost".to_string()]);
        let answers = SystemResolver.resolve(&names);
        let answer = answers["localhost"].as_ref().expect("localhost resolves");
        assert!(
            answer.addresses.iter().all(|a| a.is_loopback()),
            "{answer:?}"
        );
    }
}
