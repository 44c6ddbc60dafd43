//! Host-name targets kept resolved while the daemon runs: their names are asked again when
//! their answers' TTLs end (at least every `[resolver] refresh`), and a model with the new
//! addresses goes through [`Daemon::apply_model`] like any other change.

use std::{collections::BTreeSet, rc::Rc, time::Duration};

use super::{Daemon, Origin};
use crate::{
    dataplane::{saved::Store, Dataplane},
    model::resolve::{self, Answers},
};

impl<D: Dataplane, S: Store> Daemon<D, S> {
    /// Applies `answers` to the running model's host-name targets (see
    /// [`resolve::refresh`]); returns when to ask again. `failing` holds the names that did
    /// not resolve last time: a name is warned about when it starts failing, and said to
    /// resolve again when it does.
    pub fn refresh_addresses(&self, answers: &Answers, failing: &mut BTreeSet<String>) -> Duration {
        let refreshed = resolve::refresh(self.controller().model(), answers);
        for note in &refreshed.moved {
            log::info!("{note}");
        }
        for (host, note) in &refreshed.unresolved {
            if failing.insert(host.clone()) {
                log::warn!("{note}");
            } else {
                log::debug!("{note}");
            }
        }
        failing.retain(|host| {
            let still = refreshed.unresolved.contains_key(host);
            if !still && answers.contains_key(host) {
                log::info!("{host} resolves again");
            }
            still
        });
        if let Some(model) = refreshed.model {
            if let Err(e) = self.apply_model(&model, &Origin::Resolve) {
                log::error!(
                    "new addresses of host-name targets refused, running configuration kept: {e}"
                );
            }
        }
        refreshed.next
    }
}

/// Resolves the running model's host names again and again, until dropped (aborted).
pub async fn keep_resolved<D: Dataplane, S: Store>(daemon: Rc<Daemon<D, S>>) {
    let mut next = daemon.controller().model().resolver.refresh();
    let mut failing = BTreeSet::new();
    loop {
        tokio::time::sleep(next).await;
        let names = daemon.controller().model().host_names();
        if names.is_empty() {
            next = daemon.controller().model().resolver.refresh();
            continue;
        }
        let answers = resolve::resolve_system(&names).await;
        next = daemon.refresh_addresses(&answers, &mut failing);
        log::debug!(
            "host names {} asked again; next in {next:?}",
            names.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
}
