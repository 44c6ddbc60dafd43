//! Connection limits: how many client connections the proxy holds at once, over all
//! listeners (`sluice run --max-connections`, by default derived from the open-files limit)
//! and per listener (`max_connections`). A connection over either limit is accepted and reset
//! at once, never left in the backlog, and counted (RejectedConnectionCount); what is logged
//! about refusals and failed accepts is throttled to a line per [`LOG_INTERVAL`].
//!
//! The default keeps descriptors for what is not a client connection: each proxied HTTP/1
//! connection also holds one to its target, and health checks, the control API, metrics
//! scrapes, access logs and a reload's new sockets need theirs.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

/// Descriptors kept, beyond those open when the proxy starts, for health checks, the control
/// API, metrics, access logs and new listening sockets.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// At most one log line per this, per listener and kind (refusals, failed accepts).
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The global limit when none is given: half of what the open-files limit leaves after the
/// descriptors open now and [`RESERVED_DESCRIPTORS`] (a client connection and its target
/// connection), at least 1.
pub fn default_max_connections(open_files_limit: u64, open_now: u64) -> usize {
    let spare = open_files_limit.saturating_sub(open_now + RESERVED_DESCRIPTORS);
    (spare / 2).clamp(1, usize::MAX as u64) as usize
}

/// The process's soft limit on open files, and how many it has open now.
pub fn open_files() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok((limit.rlim_cur, open))
}

/// Connections open against one limit.
#[derive(Debug, Default)]
pub struct Gate {
    open: AtomicUsize,
}

/// A place under a [`Gate`]'s limit, given back when dropped.
#[derive(Debug)]
pub struct Ticket(Arc<Gate>);

impl Gate {
    /// A ticket if fewer than `max` are open.
    pub fn enter(self: &Arc<Self>, max: usize) -> Option<Ticket> {
        self.open
            .fetch_update(Relaxed, Relaxed, |open| (open < max).then_some(open + 1))
            .ok()
            .map(|_| Ticket(Arc::clone(self)))
    }

    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// A client connection's places under the global and its listener's limit.
#[derive(Debug)]
pub struct Permit {
    _global: Ticket,
    _listener: Ticket,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's `max_connections`.
    Listener(usize),
    /// The global limit.
    Global(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Listener(max) => write!(f, "the listener's max_connections ({max}) reached"),
            Refusal::Global(max) => write!(
                f,
                "the proxy's limit of {max} connections over all listeners reached (sluice run --max-connections)"
            ),
        }
    }
}

/// Admits a connection under both limits (`listener_max`: None for only the global one).
pub fn admit(
    global: &Arc<Gate>,
    global_max: usize,
    listener: &Arc<Gate>,
    listener_max: Option<usize>,
) -> Result<Permit, Refusal> {
    let listener_ticket = listener
        .enter(listener_max.unwrap_or(usize::MAX))
        .ok_or(Refusal::Listener(listener_max.unwrap_or(usize::MAX)))?;
    let global_ticket = global
        .enter(global_max)
        .ok_or(Refusal::Global(global_max))?;
    Ok(Permit {
        _global: global_ticket,
        _listener: listener_ticket,
    })
}

/// Lets a log line through at most once per interval, counting the events in between.
#[derive(Debug)]
pub struct Throttle {
    epoch: Instant,
    interval: Duration,
    /// Milliseconds since `epoch` from when the next line may go; 0: at once.
    next: AtomicU64,
    /// Events since the last line.
    events: AtomicU64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            epoch: Instant::now(),
            interval,
            next: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    /// Counts an event; Some(events since the last line, this one included) when a line
    /// may be written now.
    pub fn event(&self) -> Option<u64> {
        self.events.fetch_add(1, Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next.load(Relaxed);
        if now < next {
            return None;
        }
        let after = now + self.interval.as_millis() as u64;
        self.next
            .compare_exchange(next, after, Relaxed, Relaxed)
            .ok()?;
        Some(self.events.swap(0, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_a_reserve_and_two_descriptors_per_connection() {
        assert_eq!(default_max_connections(1024, 40), (1024 - 40 - 128) / 2);
        assert_eq!(default_max_connections(1 << 20, 100), ((1 << 20) - 228) / 2);
        assert_eq!(default_max_connections(100, 40), 1, "never 0");
    }

    #[test]
    fn both_limits_hold_and_a_dropped_permit_frees_its_places() {
        let (global, web, api) = (
            Arc::new(Gate::default()),
            Arc::new(Gate::default()),
            Arc::new(Gate::default()),
        );
        let a = admit(&global, 3, &web, Some(2)).unwrap();
        let _b = admit(&global, 3, &web, Some(2)).unwrap();
        assert_eq!(
            admit(&global, 3, &web, Some(2)).unwrap_err(),
            Refusal::Listener(2)
        );
        let _c = admit(&global, 3, &api, None).unwrap();
        assert_eq!(
            admit(&global, 3, &api, None).unwrap_err(),
            Refusal::Global(3)
        );
        assert_eq!(
            (global.open(), web.open(), api.open()),
            (3, 2, 1),
            "refusals hold nothing"
        );
        drop(a);
        assert!(admit(&global, 3, &web, Some(2)).is_ok());
        assert_eq!(
            (global.open(), web.open()),
            (2, 1),
            "the admitted one dropped at once"
        );
    }

    #[test]
    fn a_throttle_lets_one_line_through_per_interval_with_the_count() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.event(), Some(1));
        for _ in 0..1000 {
            assert_eq!(throttle.event(), None);
        }
        let open = Throttle::new(Duration::ZERO);
        assert_eq!(open.event(), Some(1));
        assert_eq!(open.event(), Some(1));
    }

    #[test]
    fn the_open_files_are_read() {
        let (limit, open) = open_files().unwrap();
        assert!(open >= 3 && open <= limit, "{open} of {limit}");
    }
}
