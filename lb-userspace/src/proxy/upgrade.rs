//! Upgraded connections (WebSocket and any other `Upgrade`): after the target's `101`, bytes
//! are copied both ways between client and target. The tunnel stays on its target; it ends
//! when either side closes, when no data moved for the listener's idle timeout (heartbeats
//! keep it open), or when its target is no longer registered: a deregistered target keeps
//! its tunnels through its deregistration delay, then they are closed.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc},
    task::{ready, Context, Poll},
    time::Duration,
};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{context::ConnCtx, Shared};
use crate::model::TargetKey;

pub async fn tunnel(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    target: TargetKey,
    client: OnUpgrade,
    upstream: super::upstream::Upgraded,
    idle_timeout: Duration,
) {
    let client = match client.await {
        Ok(client) => client,
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
    let mut upstream = upstream;
    let mut changed = shared.changed.subscribe();
    // A deadline, not a period: an idle tunnel wakes nobody until its idle timeout can have
    // passed.
    let idle_due = |state: &super::conn::ConnState| {
        let left = idle_timeout.saturating_sub(state.idle_for());
        super::conn::on_grid(std::time::Instant::now() + left.max(Duration::from_millis(1)))
    };
    let mut due = idle_due(&conn.state);
    let closing = {
        let copy = copy_both_ways(&mut client, &mut upstream);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                done = &mut copy => {
                    if let Err(e) = done {
                        log::debug!("upgraded connection to {} ended: {e}", target.addr);
                    }
                    break false;
                }
                _ = changed.changed() => {
                    if shared.closing.load(Relaxed) {
                        log::info!(
                            "closing an upgraded connection from {} to target {} of '{}': the daemon's drain is over",
                            conn.peer, target.addr, target.group
                        );
                        break true;
                    }
                    if !shared.snapshot.load().reachable.contains(&target) {
                        log::info!(
                            "closing an upgraded connection from {} to target {} of '{}': the target is deregistered and its deregistration delay is over",
                            conn.peer, target.addr, target.group
                        );
                        break false;
                    }
                }
                _ = tokio::time::sleep_until(due.into()) => {
                    if conn.state.idle_for() >= idle_timeout {
                        log::debug!("closing an idle upgraded connection from {} to {}", conn.peer, target.addr);
                        break false;
                    }
                    due = idle_due(&conn.state);
                }
            }
        }
    };
    if closing {
        // A FIN to both sides (not a reset): each sees the stream end cleanly.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        })
        .await;
    }
}

/// How long a clean close of both sides of a tunnel may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes read at once on a tunnel, into a buffer on the stack: an idle tunnel holds none.
const CHUNK: usize = 16 * 1024;
/// Chunks copied in one direction before yielding to other tasks.
const CHUNKS_PER_POLL: usize = 16;

/// One direction of a tunnel: bytes read that the other side has not taken yet (only while
/// it is slower than this side), and whether this side has ended.
#[derive(Default)]
struct Direction {
    unwritten: Vec<u8>,
    written: usize,
    ended: bool,
    unflushed: bool,
    done: bool,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut from: Pin<&mut R>,
        mut to: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        for _ in 0..CHUNKS_PER_POLL {
            while self.written < self.unwritten.len() {
                let n = ready!(to.as_mut().poll_write(cx, &self.unwritten[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.unflushed = true;
            }
            // Released as soon as it is written: a quiet tunnel keeps no buffer.
            self.unwritten = Vec::new();
            self.written = 0;
            if self.ended {
                ready!(to.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match from.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => {
                    if self.unflushed {
                        ready!(to.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => self.ended = true,
                Poll::Ready(Ok(())) => {
                    let data = read.filled();
                    let mut at = 0;
                    while at < data.len() {
                        match to.as_mut().poll_write(cx, &data[at..]) {
                            Poll::Ready(Ok(0)) => {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                            }
                            Poll::Ready(Ok(n)) => {
                                at += n;
                                self.unflushed = true;
                            }
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => {
                                self.unwritten = data[at..].to_vec();
                                return Poll::Pending;
                            }
                        }
                    }
                }
            }
        }
        // Much data: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Copies both ways between `a` and `b` until both sides have ended (each end passed on as a
/// shutdown of the other side's writing) or either fails, as `tokio::io::copy_bidirectional`
/// does, but reading into a buffer on the stack: bytes are kept on the heap only while a side
/// does not take them, so an idle tunnel holds no buffer (two 8 KiB buffers each otherwise).
async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    poll_fn(|cx| {
        if !a_to_b.done {
            if let Poll::Ready(Err(e)) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))
            {
                return Poll::Ready(Err(e));
            }
        }
        if !b_to_a.done {
            if let Poll::Ready(Err(e)) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))
            {
                return Poll::Ready(Err(e));
            }
        }
        if a_to_b.done && b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn both_ways_are_copied_whole_and_each_end_is_passed_on() {
        // Small pipes, so that writes block and bytes wait on the heap.
        let (client, mut a) = tokio::io::duplex(1000);
        let (mut b, target) = tokio::io::duplex(1000);
        let tunnel = tokio::spawn(async move { copy_both_ways(&mut a, &mut b).await });
        let upload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let download: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
        let (up, down) = (upload.clone(), download.clone());
        let client_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(client);
            let writer = async {
                w.write_all(&up).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let reader = r.read_to_end(&mut got);
            let ((), read) = tokio::join!(writer, reader);
            read.unwrap();
            got
        });
        let (mut r, mut w) = tokio::io::split(target);
        let writer = async {
            w.write_all(&down).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let ((), read) = tokio::join!(writer, r.read_to_end(&mut got));
        read.unwrap();
        assert_eq!(got, upload);
        assert_eq!(client_side.await.unwrap(), download);
        tunnel.await.unwrap().unwrap();
    }
}
