//! Store mode without root and without etcd: daemons on the in-memory data plane following
//! one in-memory store ([`MemoryKv`]), each with its `follow` task on a `LocalSet`.

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use hyper::StatusCode;

use super::*;
use crate::daemon::Parts;
use crate::{
    api::Backend,
    controller::Controller,
    dataplane::{
        counters::Counters,
        memory::{MemoryDataplane, MemoryStore},
    },
    health::HealthChecker,
    model::edit::{Edit, TargetSpec},
    store::memory::MemoryKv,
};

type TestDaemon = Daemon<MemoryDataplane, MemoryStore>;

const PREFIX: &str = "/cluster";

fn model_text(targets: &[&str]) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ address = \"{t}\" }}"))
        .collect();
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n\n[[target_group]]\nname = \"web\"\nport = 1\nderegistration_delay = 0\ntargets = [ {} ]\n",
        targets.join(", ")
    )
}

/// A node following `kv`, started on the model there, its `follow` task spawned.
fn node(kv: &MemoryKv, name: &str) -> Rc<TestDaemon> {
    node_sharing(
        kv,
        Shared::new(Box::new(kv.clone()), Keys::new(PREFIX), name.into()),
    )
}

/// A daemon on the in-memory data plane, not yet sharing a store.
fn in_memory() -> Rc<TestDaemon> {
    let (checker, _events) = HealthChecker::new();
    Rc::new(Daemon::new(Parts {
        controller: Controller::new(MemoryDataplane::new(8, 64)),
        checker,
        config: None,
        counters: Box::new(Counters(Vec::new())),
        state: MemoryStore::new(),
        key_file: std::path::PathBuf::from("/nonexistent/stickiness.keys"),
        inherited: Vec::new(),
        proxy: Default::default(),
        node: Default::default(),
    }))
}

/// A node following the model in `kv` through `shared`.
fn node_sharing(kv: &MemoryKv, shared: Shared) -> Rc<TestDaemon> {
    let daemon = in_memory();
    let entry = kv_entry(kv, &Keys::new(PREFIX).model());
    daemon.share(shared);
    let model = parse("test", &entry).unwrap();
    daemon.apply_first(&model, entry.mod_revision).unwrap();
    tokio::task::spawn_local(follow(Rc::clone(&daemon), entry.mod_revision + 1));
    daemon
}

fn kv_entry(kv: &MemoryKv, key: &str) -> Entry {
    let value = kv.value(key).expect("seeded");
    Entry {
        key: key.into(),
        value,
        mod_revision: kv_revision(kv, key),
    }
}

fn kv_revision(kv: &MemoryKv, key: &str) -> i64 {
    futures_lite(kv.get(key.into()))
        .unwrap()
        .entry
        .unwrap()
        .mod_revision
}

/// The memory store answers without awaiting anything.
fn futures_lite<T>(future: LocalFutureOf<T>) -> T {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut future = future;
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => panic!("the memory store awaited"),
    }
}

type LocalFutureOf<'a, T> = crate::store::LocalFuture<'a, T>;

fn seeded(targets: &[&str]) -> MemoryKv {
    let kv = MemoryKv::default();
    kv.put(&Keys::new(PREFIX).model(), model_text(targets).as_bytes());
    kv
}

fn applied(daemon: &TestDaemon) -> Option<i64> {
    daemon.store_status().unwrap().applied_revision
}

fn targets(daemon: &TestDaemon) -> Vec<String> {
    daemon.controller().model().target_groups[0]
        .targets
        .iter()
        .map(|t| t.address.to_string())
        .collect()
}

/// Polls (yielding to the follow tasks) until `done`, for at most 10 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn add(address: &str) -> Edit {
    Edit::AddTarget(TargetSpec {
        group: "web".into(),
        address: address.parse().unwrap(),
        port: None,
        weight: None,
    })
}

async fn local<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(future).await
}

#[tokio::test]
async fn an_edit_on_one_node_reaches_every_node_and_answers_once_applied_here() {
    local(async {
        let kv = seeded(&["127.0.0.1"]);
        let nodes = [node(&kv, "n1"), node(&kv, "n2"), node(&kv, "n3")];
        let changes = nodes[1].submit(add("127.0.0.2")).await.unwrap();
        assert_eq!(changes.targets_added.len(), 1, "{changes:?}");
        let revision = kv_revision(&kv, &Keys::new(PREFIX).model());
        assert_eq!(
            changes.stored,
            Some(("etcd://memory/test".into(), revision))
        );
        // Answered once applied on the node that was asked.
        assert_eq!(applied(&nodes[1]), Some(revision));
        until("every node applies the edit", || {
            nodes.iter().all(|n| applied(n) == Some(revision))
        })
        .await;
        for n in &nodes {
            assert_eq!(targets(n), ["127.0.0.1", "127.0.0.2"]);
            assert_eq!(n.tables(), nodes[0].tables(), "Maglev tables differ");
        }
        // Every node sees every node's report.
        until("three reports", || {
            let status = nodes[0].store_status().unwrap();
            status.nodes.len() == 3
                && status
                    .nodes
                    .values()
                    .all(|r| r.applied_revision == Some(revision))
        })
        .await;
        // An edit the model refuses writes nothing.
        let refused = nodes[0].submit(add("127.0.0.2")).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.message);
        assert_eq!(kv_revision(&kv, &Keys::new(PREFIX).model()), revision);
    })
    .await;
}

#[tokio::test]
async fn concurrent_edits_on_two_nodes_are_both_kept() {
    local(async {
        let kv = seeded(&["127.0.0.1"]);
        let a = node(&kv, "a");
        let b = node(&kv, "b");
        let (first, second) = tokio::join!(a.submit(add("127.0.0.2")), b.submit(add("127.0.0.3")));
        first.unwrap();
        second.unwrap();
        let revision = kv_revision(&kv, &Keys::new(PREFIX).model());
        until("both on the last revision", || {
            applied(&a) == Some(revision) && applied(&b) == Some(revision)
        })
        .await;
        for n in [&a, &b] {
            let mut t = targets(n);
            t.sort();
            assert_eq!(t, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        }
        // Losing every attempt: refused with a sentence, nothing written.
        kv.race(
            (0..crate::store::CAS_ATTEMPTS)
                .map(|_| model_text(&["127.0.0.9"]).into_bytes())
                .collect(),
        );
        let refused = a.submit(add("127.0.0.4")).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::CONFLICT);
        assert!(refused.message.contains("try again"), "{}", refused.message);
    })
    .await;
}

#[tokio::test]
async fn an_invalid_revision_is_refused_with_its_reason_and_the_next_valid_one_applied() {
    local(async {
        let kv = seeded(&["127.0.0.1"]);
        let nodes = [node(&kv, "n1"), node(&kv, "n2")];
        let before = applied(&nodes[0]).unwrap();
        let keys = Keys::new(PREFIX);
        let bad = kv.put(&keys.model(), b"[[listener]]\nname = \"web\"\n");
        until("both refuse", || {
            nodes.iter().all(|n| {
                n.store_status()
                    .unwrap()
                    .refused
                    .is_some_and(|r| r.revision == bad)
            })
        })
        .await;
        for n in &nodes {
            let status = n.store_status().unwrap();
            assert_eq!(status.applied_revision, Some(before));
            assert_eq!(status.latest_revision, Some(bad));
            let reason = &status.refused.unwrap().reason;
            assert!(reason.contains(&format!("revision {bad}")), "{reason}");
            assert_eq!(targets(n), ["127.0.0.1"], "the running model is kept");
        }
        // An edit needs a valid model in the store to edit.
        let refused = nodes[0].submit(add("127.0.0.2")).await.unwrap_err();
        assert!(
            refused.message.contains("does not validate"),
            "{}",
            refused.message
        );
        let good = kv.put(&keys.model(), model_text(&["127.0.0.5"]).as_bytes());
        until("both apply the next valid revision", || {
            nodes.iter().all(|n| applied(n) == Some(good))
        })
        .await;
        for n in &nodes {
            assert_eq!(n.store_status().unwrap().refused, None);
            assert_eq!(targets(n), ["127.0.0.5"]);
        }
    })
    .await;
}

#[tokio::test]
async fn losing_the_store_keeps_the_model_refuses_edits_and_converges_on_return() {
    local(async {
        let kv = seeded(&["127.0.0.1"]);
        let nodes = [node(&kv, "n1"), node(&kv, "n2")];
        let before = applied(&nodes[0]).unwrap();
        kv.set_down(true);
        until("both notice", || {
            nodes.iter().all(|n| !n.store_status().unwrap().reachable)
        })
        .await;
        let refused = nodes[0].submit(add("127.0.0.2")).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            refused
                .message
                .contains("etcd://memory/test cannot be reached")
                && refused
                    .message
                    .contains(&format!("keeps running revision {before}")),
            "{}",
            refused.message
        );
        let status = nodes[1].store_status().unwrap();
        assert!(status.unreachable_since_ms.is_some());
        assert_eq!(status.applied_revision, Some(before));
        assert_eq!(targets(&nodes[1]), ["127.0.0.1"]);
        // Written while the nodes were cut off (another client), then compacted away.
        let keys = Keys::new(PREFIX);
        let latest = kv.put(&keys.model(), model_text(&["127.0.0.7"]).as_bytes());
        kv.compact();
        kv.set_down(false);
        until("both converge on the latest", || {
            nodes.iter().all(|n| applied(n) == Some(latest))
        })
        .await;
        for n in &nodes {
            assert!(n.store_status().unwrap().reachable);
            assert_eq!(targets(n), ["127.0.0.7"]);
        }
        // And they watch on from there.
        let next = kv.put(&keys.model(), model_text(&["127.0.0.8"]).as_bytes());
        until("both follow on", || {
            nodes.iter().all(|n| applied(n) == Some(next))
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_compacted_watch_reads_the_model_anew() {
    local(async {
        let kv = seeded(&["127.0.0.1"]);
        let keys = Keys::new(PREFIX);
        // Started from a revision that is compacted by the time the watch begins.
        let stale = kv_revision(&kv, &keys.model());
        let latest = kv.put(&keys.model(), model_text(&["127.0.0.6"]).as_bytes());
        kv.compact();
        let daemon = in_memory();
        daemon.share(Shared::new(Box::new(kv.clone()), keys, "n1".into()));
        let model = Model::parse(&model_text(&["127.0.0.1"]), "test").unwrap();
        daemon.apply_first(&model, stale).unwrap();
        tokio::task::spawn_local(follow(Rc::clone(&daemon), stale + 1));
        until("the latest revision", || applied(&daemon) == Some(latest)).await;
        assert_eq!(targets(&daemon), ["127.0.0.6"]);
    })
    .await;
}

#[tokio::test]
async fn reload_and_sighup_are_refused_in_store_mode() {
    local(async {
        let kv = seeded(&["127.0.0.1"]);
        let n = node(&kv, "n1");
        let refused = n.reload(false).unwrap_err();
        assert_eq!(refused.status, StatusCode::CONFLICT);
        assert!(
            refused
                .message
                .contains("lives in the store etcd://memory/test")
                && refused.message.contains("etcdctl put /cluster/model"),
            "{}",
            refused.message
        );
    })
    .await;
}

/// A client of the memory store that authenticated with `password`: every call is refused
/// unless the store takes that password now (`accepted`), as etcd refuses a user whose
/// password was changed.
struct WithPassword {
    kv: MemoryKv,
    password: String,
    accepted: Rc<std::cell::RefCell<String>>,
}

impl WithPassword {
    fn check(&self) -> Result<(), StoreError> {
        if *self.accepted.borrow() == self.password {
            return Ok(());
        }
        Err(StoreError {
            store: self.kv.name(),
            reason: "etcdserver: authentication failed, invalid user ID or password".into(),
            refused: true,
        })
    }
}

impl Kv for WithPassword {
    fn name(&self) -> String {
        self.kv.name()
    }

    fn get(&self, key: String) -> LocalFutureOf<'_, Result<store::Read, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.kv.get(key).await
        })
    }

    fn list(&self, prefix: String) -> LocalFutureOf<'_, Result<store::Listing, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.kv.list(prefix).await
        })
    }

    fn put_if(
        &self,
        key: String,
        value: Vec<u8>,
        expect: store::Expect,
    ) -> LocalFutureOf<'_, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.kv.put_if(key, value, expect).await
        })
    }

    fn watch(
        &self,
        prefix: String,
        from: i64,
    ) -> LocalFutureOf<'_, Result<UnboundedReceiver<WatchMessage>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.kv.watch(prefix, from).await
        })
    }

    fn grant(&self, ttl_s: i64) -> LocalFutureOf<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.kv.grant(ttl_s).await
        })
    }

    fn keep_alive(&self, lease: i64) -> LocalFutureOf<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.kv.keep_alive(lease).await
        })
    }

    fn put_leased(
        &self,
        key: String,
        value: Vec<u8>,
        lease: i64,
    ) -> LocalFutureOf<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.kv.put_leased(key, value, lease).await
        })
    }
}

#[tokio::test]
async fn a_password_renewed_in_its_file_is_used_once_the_store_takes_it() {
    local(async {
        let kv = seeded(&["127.0.0.1"]);
        let accepted = Rc::new(std::cell::RefCell::new("first".to_string()));
        // The password file's content; empty: a file that cannot be used.
        let file = Rc::new(std::cell::RefCell::new("first".to_string()));
        let credentials = |password: &str| Credentials {
            user: Some(("sluice".into(), password.into())),
            ..Credentials::default()
        };
        let client = {
            let (kv, accepted) = (kv.clone(), Rc::clone(&accepted));
            move |c: Credentials| WithPassword {
                kv: kv.clone(),
                password: c.user.unwrap().1,
                accepted: Rc::clone(&accepted),
            }
        };
        let first = client(credentials("first"));
        let renewal = Renewal::new(
            credentials("first"),
            Box::new({
                let file = Rc::clone(&file);
                move || match file.borrow().as_str() {
                    "" => Err(crate::store::AccessError::NoPassword {
                        path: "/run/credentials/etcd-password".into(),
                    }),
                    password => Ok(credentials(password)),
                }
            }),
            Box::new(move |c| {
                let kv: Box<dyn Kv> = Box::new(client(c));
                Box::pin(async move { Ok(kv) })
            }),
        );
        let shared = Shared::new(Box::new(first), Keys::new(PREFIX), "n1".into()).renewing(renewal);
        let n1 = node_sharing(&kv, shared);
        let n2 = node(&kv, "n2");
        n1.submit(add("127.0.0.2")).await.unwrap();

        // The password changes in the store: the node is refused until its file says so.
        *accepted.borrow_mut() = "second".into();
        let refused = n1.submit(add("127.0.0.3")).await.unwrap_err();
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            refused.message
        );
        *file.borrow_mut() = "second".into();
        let written = n2.submit(add("127.0.0.4")).await.unwrap().stored.unwrap().1;
        until("n1 follows the store again, with the new password", || {
            applied(&n1) == Some(written)
        })
        .await;
        n1.submit(add("127.0.0.5")).await.unwrap();

        // A file that cannot be used, then a password the store refuses: the one in use stays.
        let not_used = || n1.store_status().unwrap().credentials_not_used;
        assert_eq!(not_used(), None);
        *file.borrow_mut() = String::new();
        assert!(!n1.shared().unwrap().renew().await);
        assert!(
            not_used().is_some_and(|why| why.contains("holds no password")),
            "{:?}",
            not_used()
        );
        *file.borrow_mut() = "third".into();
        assert!(!n1.shared().unwrap().renew().await);
        assert!(
            not_used().is_some_and(|why| why.contains("authentication failed")),
            "{:?}",
            not_used()
        );
        n1.submit(add("127.0.0.6")).await.unwrap();
        let written = n2.submit(add("127.0.0.7")).await.unwrap().stored.unwrap().1;
        until("n1 keeps following", || applied(&n1) == Some(written)).await;
        // The file back to the password in use: nothing to report.
        *file.borrow_mut() = "second".into();
        assert!(!n1.shared().unwrap().renew().await);
        assert_eq!(not_used(), None);
        assert!(n1.store_status().unwrap().reachable);
        let mut t = targets(&n1);
        t.sort();
        assert_eq!(
            t,
            [
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.4",
                "127.0.0.5",
                "127.0.0.6",
                "127.0.0.7"
            ]
        );
    })
    .await;
}
