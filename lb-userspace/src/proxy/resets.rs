//! HTTP/2 streams a client resets before their response (the slow-reset amplification: each
//! such stream costs a target request, and a client can open them as fast as it resets
//! them). A stream the client resets drops its request's future, which cancels the request
//! to the target (hyper closes that target connection); a connection whose client reset
//! [`MAX_CLIENT_RESETS`] streams, more than half of its streams, is sent GOAWAY. So one
//! connection causes at most [`MAX_CLIENT_RESETS`] + [`MAX_CONCURRENT_STREAMS`] target
//! requests for streams it resets. (Resets faster than hyper accepts the stream are hyper's:
//! `max_pending_accept_reset_streams`.)

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    Arc,
};

/// Client-reset streams after which a connection is sent GOAWAY (if they are more than half
/// of its streams): Envoy's premature-reset rule with a lower count.
pub const MAX_CLIENT_RESETS: u64 = 100;

/// Streams open at once on a client's HTTP/2 connection (ALB's 128).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// One client connection's streams and resets; `abusive` wakes the connection's watchdog.
#[derive(Debug, Default)]
pub struct StreamResets {
    streams: AtomicU64,
    resets: AtomicU64,
    tripped: AtomicBool,
    pub abusive: tokio::sync::Notify,
}

/// One stream; dropped before [`Stream::answered`]: the client reset it.
pub struct Stream {
    resets: Arc<StreamResets>,
    answered: bool,
}

impl StreamResets {
    pub fn stream(self: &Arc<Self>) -> Stream {
        self.streams.fetch_add(1, Relaxed);
        Stream {
            resets: Arc::clone(self),
            answered: false,
        }
    }

    /// How many streams the client reset.
    pub fn resets(&self) -> u64 {
        self.resets.load(Relaxed)
    }

    fn reset(&self) {
        let resets = self.resets.fetch_add(1, Relaxed) + 1;
        if resets >= MAX_CLIENT_RESETS
            && resets * 2 > self.streams.load(Relaxed)
            && !self.tripped.swap(true, Relaxed)
        {
            // notify_one keeps the wake-up for a watchdog not waiting at this moment.
            self.abusive.notify_one();
        }
    }

    /// Whether the connection crossed the bound (it is sent GOAWAY).
    pub fn tripped(&self) -> bool {
        self.tripped.load(Relaxed)
    }
}

impl Stream {
    /// The response head went out (what happens to its body is not a reset of the stream's
    /// request).
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.answered {
            self.resets.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_trips_at_the_bound_only_when_resets_are_most_of_its_streams() {
        let busy = Arc::new(StreamResets::default());
        // A browser that cancels a third of its streams, many times over the bound.
        for i in 0..3 * MAX_CLIENT_RESETS * 2 {
            let stream = busy.stream();
            if i % 3 != 0 {
                stream.answered();
            }
        }
        assert_eq!(busy.resets(), 2 * MAX_CLIENT_RESETS);
        assert!(!busy.tripped());

        let abusive = Arc::new(StreamResets::default());
        for _ in 0..MAX_CLIENT_RESETS - 1 {
            drop(abusive.stream());
        }
        assert!(!abusive.tripped(), "one below the bound");
        abusive.stream().answered();
        drop(abusive.stream());
        assert!(abusive.tripped(), "{} resets", abusive.resets());
    }

    #[tokio::test]
    async fn tripping_wakes_the_watchdog_even_if_it_was_not_waiting() {
        let resets = Arc::new(StreamResets::default());
        for _ in 0..MAX_CLIENT_RESETS {
            drop(resets.stream());
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), resets.abusive.notified())
            .await
            .expect("woken");
    }
}
