//! Announcing the listeners' addresses to the network's routers through a BGP daemon (BIRD 2),
//! so that several sluice nodes can serve one VIP behind ECMP.
//!
//! [`plan`] decides what to announce (pure); [`Announcer`] keeps BIRD in step with the latest
//! decision from a task of its own, retrying while BIRD cannot be reached, so that the daemon
//! never waits on BIRD. What BIRD was last told stays announced when sluice stops (a restart
//! is hitless, as forwarding is); `sluice down` and `sluice node drain` withdraw.

pub mod bird;
pub mod plan;

use std::{
    cell::RefCell,
    collections::BTreeSet,
    net::IpAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use bird::{Bird, BirdError};
pub use plan::{plan, Announcement, NodeState, Withheld};

/// How soon BIRD is asked again after it could not be reached or refused.
const RETRY: Duration = Duration::from_secs(2);

/// What `sluice status` and `sluice node` show about this node's announcements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub node: NodeState,
    /// The routes file sluice writes for BIRD (`--bird-routes`).
    pub routes_file: String,
    /// What BIRD announces: what it was last told successfully.
    pub announced: Vec<IpAddr>,
    /// What it should announce now (differs from `announced` while BIRD is being told, or
    /// cannot be).
    pub wanted: Vec<IpAddr>,
    pub withheld: Vec<WithheldAddress>,
    /// Why BIRD does not announce what it should, if it does not.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithheldAddress {
    pub address: IpAddr,
    #[serde(flatten)]
    pub why: Withheld,
}

/// What the task achieved, shared with the daemon's thread.
#[derive(Debug, Default)]
struct Progress {
    /// None until BIRD was told once.
    announced: Option<BTreeSet<IpAddr>>,
    error: Option<String>,
}

/// Keeps BIRD announcing the latest [`Announcement`] (see the module's documentation).
pub struct Announcer {
    wanted: watch::Sender<Announcement>,
    progress: Rc<RefCell<Progress>>,
    routes_file: String,
}

impl Announcer {
    /// Starts telling `bird` to announce `first`, on the current `LocalSet`.
    pub fn start(bird: Bird, first: Announcement) -> Announcer {
        let routes_file = bird.routes_file.display().to_string();
        let (wanted, receiver) = watch::channel(first);
        let progress = Rc::new(RefCell::new(Progress::default()));
        tokio::task::spawn_local(keep_in_step(bird, receiver, Rc::clone(&progress)));
        Announcer {
            wanted,
            progress,
            routes_file,
        }
    }

    /// From now on BIRD should announce `announcement` (nothing happens if it already does).
    pub fn want(&self, announcement: Announcement) {
        self.wanted.send_if_modified(|current| {
            let changed = *current != announcement;
            *current = announcement;
            changed
        });
    }

    pub fn status(&self, node: NodeState) -> AnnounceStatus {
        let wanted = self.wanted.borrow();
        let progress = self.progress.borrow();
        AnnounceStatus {
            node,
            routes_file: self.routes_file.clone(),
            announced: progress.announced.iter().flatten().copied().collect(),
            wanted: wanted.routes.iter().copied().collect(),
            withheld: wanted
                .withheld
                .iter()
                .map(|(address, why)| WithheldAddress {
                    address: *address,
                    why: why.clone(),
                })
                .collect(),
            error: progress.error.clone(),
        }
    }

    /// Waits, at most `patience`, until BIRD announces what is wanted; else why not.
    pub async fn settled(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            let done = {
                let progress = self.progress.borrow();
                let wanted = self.wanted.borrow();
                match (&progress.announced, &progress.error) {
                    (Some(announced), None) if *announced == wanted.routes => Ok(true),
                    (_, Some(error)) if Instant::now() >= deadline => Err(error.clone()),
                    _ if Instant::now() >= deadline => {
                        Err("BIRD did not answer in time".to_string())
                    }
                    _ => Ok(false),
                }
            };
            if done? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The task: tells BIRD each new wanted set, retrying every [`RETRY`] while it fails; ends
/// when the [`Announcer`] is dropped (what BIRD announces stays).
async fn keep_in_step(
    bird: Bird,
    mut wanted: watch::Receiver<Announcement>,
    progress: Rc<RefCell<Progress>>,
) {
    loop {
        let routes = wanted.borrow_and_update().routes.clone();
        match bird.announce(&routes).await {
            Ok(()) => {
                {
                    let mut progress = progress.borrow_mut();
                    if progress.announced.as_ref() != Some(&routes) || progress.error.is_some() {
                        log::info!("BGP: BIRD announces {}", describe(&routes));
                    }
                    progress.announced = Some(routes);
                    progress.error = None;
                }
                if wanted.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let message = e.to_string();
                {
                    let mut progress = progress.borrow_mut();
                    if progress.error.as_ref() != Some(&message) {
                        log::error!("BGP: {message}; asking again every {} s", RETRY.as_secs());
                    }
                    progress.error = Some(message);
                }
                tokio::select! {
                    changed = wanted.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

fn describe(routes: &BTreeSet<IpAddr>) -> String {
    if routes.is_empty() {
        "nothing (every listener address withdrawn)".to_string()
    } else {
        routes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
