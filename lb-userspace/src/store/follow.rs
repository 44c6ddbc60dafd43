//! Following the store's model, as pure state: which revision to apply, what was refused,
//! whether the store can be reached, how long to wait before trying again. The daemon feeds
//! it what the store and the data plane said; status shows it.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// A revision this node did not apply, and why (it keeps the one before).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub revision: i64,
    pub reason: String,
}

/// What each node writes under `<prefix>/nodes/<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The model revision the node runs.
    pub applied_revision: Option<i64>,
    /// The newest revision it refused, if newer than the one it runs.
    #[serde(default)]
    pub refused: Option<Refusal>,
}

/// The store as one node sees it: `sluice status`, `GET /v1/status`, the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `etcd://host:port/prefix`.
    pub store: String,
    /// This node's name under `<prefix>/nodes/`.
    pub node: String,
    /// The revision of the model this node runs.
    pub applied_revision: Option<i64>,
    /// The newest revision of the model this node has seen in the store.
    pub latest_revision: Option<i64>,
    pub reachable: bool,
    /// Milliseconds since the Unix epoch, while the store cannot be reached.
    #[serde(default)]
    pub unreachable_since_ms: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The newest revision this node refused, while it is newer than the one it runs.
    #[serde(default)]
    pub refused: Option<Refusal>,
    /// Credential files renewed in place that this node cannot use yet, and why (it keeps
    /// the credentials it has); none once it uses the files as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_not_used: Option<String>,
    /// Every live node's report, by name (this one included), as last seen in the store.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeReport>,
}

/// The state of one node following the store's model.
#[derive(Clone, Debug)]
pub struct Follow {
    status: StoreStatus,
}

impl Follow {
    pub fn new(store: String, node: String) -> Follow {
        Follow {
            status: StoreStatus {
                store,
                node,
                reachable: true,
                ..StoreStatus::default()
            },
        }
    }

    pub fn status(&self) -> &StoreStatus {
        &self.status
    }

    pub fn applied_revision(&self) -> Option<i64> {
        self.status.applied_revision
    }

    /// The model at `revision` is in the store: whether to apply it. Only revisions newer than
    /// the one running or last refused are (a watch resumed after a read delivers some twice).
    pub fn offer(&mut self, revision: i64) -> bool {
        let latest = self.status.latest_revision.get_or_insert(revision);
        *latest = (*latest).max(revision);
        let newest_seen = self
            .status
            .applied_revision
            .max(self.status.refused.as_ref().map(|r| r.revision));
        newest_seen.is_none_or(|seen| revision > seen)
    }

    pub fn applied(&mut self, revision: i64) {
        self.status.applied_revision = Some(revision);
        if self
            .status
            .refused
            .as_ref()
            .is_some_and(|r| r.revision <= revision)
        {
            self.status.refused = None;
        }
    }

    pub fn refused(&mut self, revision: i64, reason: String) {
        self.status.refused = Some(Refusal { revision, reason });
    }

    /// The store failed an operation: true the first time (since it was last reached), for
    /// one warning per outage.
    pub fn lost(&mut self, now_ms: u64, reason: String) -> bool {
        self.status.last_error = Some(reason);
        let first = self.status.reachable;
        if first {
            self.status.reachable = false;
            self.status.unreachable_since_ms = Some(now_ms);
        }
        first
    }

    /// The store answered: the start of the outage it ends, if there was one.
    pub fn reached(&mut self) -> Option<u64> {
        self.status.reachable = true;
        self.status.last_error = None;
        self.status.unreachable_since_ms.take()
    }

    /// What keeps renewed credential files from use (`None`: the files are in use).
    pub fn credentials(&mut self, not_used: Option<String>) {
        self.status.credentials_not_used = not_used;
    }

    pub fn reachable(&self) -> bool {
        self.status.reachable
    }

    /// A node's report appeared or changed (`None`: it is gone).
    pub fn node(&mut self, name: &str, report: Option<NodeReport>) {
        match report {
            Some(report) => self.status.nodes.insert(name.to_string(), report),
            None => self.status.nodes.remove(name),
        };
    }

    /// Every node's report, read anew.
    pub fn nodes(&mut self, nodes: BTreeMap<String, NodeReport>) {
        self.status.nodes = nodes;
    }

    /// What this node reports of itself.
    pub fn report(&self) -> NodeReport {
        NodeReport {
            applied_revision: self.status.applied_revision,
            refused: self.status.refused.clone(),
        }
    }
}

/// Waits between attempts to reach the store: doubling from [`Backoff::FIRST`] up to
/// [`Backoff::MAX`], back to the first after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(5);

    /// How long to wait after a failure.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        wait
    }

    pub fn succeeded(&mut self) {
        self.next = Backoff::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_revisions_are_applied_and_a_refusal_is_not_offered_again() {
        let mut follow = Follow::new("etcd://e:2379/s".into(), "n1".into());
        assert!(follow.offer(5));
        follow.applied(5);
        // Seen again after a resumed watch, or older: not applied again.
        assert!(!follow.offer(5));
        assert!(!follow.offer(3));
        assert!(follow.offer(7));
        follow.refused(7, "listener 'web': port 0".into());
        assert_eq!(follow.status().applied_revision, Some(5));
        assert_eq!(follow.status().refused.as_ref().unwrap().revision, 7);
        assert!(!follow.offer(7), "a refused revision is not tried again");
        assert_eq!(follow.status().latest_revision, Some(7));
        assert!(follow.offer(9));
        follow.applied(9);
        assert_eq!(
            follow.status().refused,
            None,
            "a newer applied revision ends the refusal"
        );
        assert_eq!(follow.report().applied_revision, Some(9));
        // The latest seen never goes back.
        follow.offer(2);
        assert_eq!(follow.status().latest_revision, Some(9));
    }

    #[test]
    fn an_outage_is_reported_once_from_its_start_until_the_store_answers() {
        let mut follow = Follow::new("etcd://e:2379/s".into(), "n1".into());
        assert!(follow.reachable());
        assert!(follow.lost(1_000, "connection refused".into()));
        assert!(
            !follow.lost(2_000, "timed out".into()),
            "one warning per outage"
        );
        let status = follow.status();
        assert!(!status.reachable);
        assert_eq!(status.unreachable_since_ms, Some(1_000));
        assert_eq!(status.last_error.as_deref(), Some("timed out"));
        assert_eq!(follow.reached(), Some(1_000));
        assert!(follow.reachable());
        assert_eq!(follow.status().last_error, None);
        assert_eq!(follow.reached(), None);
    }

    #[test]
    fn nodes_come_and_go() {
        let mut follow = Follow::new("etcd://e:2379/s".into(), "n1".into());
        let report = |r| NodeReport {
            applied_revision: Some(r),
            refused: None,
        };
        follow.node("n2", Some(report(4)));
        follow.node("n3", Some(report(4)));
        follow.node("n2", None);
        assert_eq!(follow.status().nodes.keys().collect::<Vec<_>>(), ["n3"]);
        follow.nodes(BTreeMap::from([("n1".to_string(), report(5))]));
        assert_eq!(follow.status().nodes.keys().collect::<Vec<_>>(), ["n1"]);
    }

    #[test]
    fn backoff_doubles_to_a_bound_and_starts_over() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..7).map(|_| backoff.failed()).collect();
        assert_eq!(waits[0], Backoff::FIRST);
        assert_eq!(waits[1], Backoff::FIRST * 2);
        assert_eq!(*waits.last().unwrap(), Backoff::MAX);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        backoff.succeeded();
        assert_eq!(backoff.failed(), Backoff::FIRST);
    }
}
