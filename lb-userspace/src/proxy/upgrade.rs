//! Upgraded connections (WebSocket and any other `Upgrade`): after the target's `101`, bytes
//! are copied both ways between client and target. The tunnel stays on its target; it ends
//! when either side closes, when no data moved for the listener's idle timeout (heartbeats
//! keep it open), or when its target is no longer registered: a deregistered target keeps
//! its tunnels through its deregistration delay, then they are closed.

use std::{sync::Arc, time::Duration};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::{context::ConnCtx, Shared};
use crate::model::TargetKey;

pub async fn tunnel(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    target: TargetKey,
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle_timeout: Duration,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            log::debug!(
                "upgrade to target {} of '{}' failed: {e}",
                target.addr,
                target.group
            );
            return;
        }
    };
    // The client side still runs over the connection's TrackedIo, which sees data in both
    // directions (reads from the client, writes of what the target sent).
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let mut changed = shared.changed.subscribe();
    let check = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            done = &mut copy => {
                if let Err(e) = done {
                    log::debug!("upgraded connection to {} ended: {e}", target.addr);
                }
                break;
            }
            _ = changed.changed() => {
                if !shared.snapshot.load().reachable.contains(&target) {
                    log::info!(
                        "closing an upgraded connection from {} to target {} of '{}': the target is deregistered and its deregistration delay is over",
                        conn.peer, target.addr, target.group
                    );
                    break;
                }
            }
            _ = tokio::time::sleep(check) => {
                if conn.state.idle_for() >= idle_timeout {
                    log::debug!("closing an idle upgraded connection from {} to {}", conn.peer, target.addr);
                    break;
                }
            }
        }
    }
}
