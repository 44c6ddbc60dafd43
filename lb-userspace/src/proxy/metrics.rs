//! The proxy's counters: atomics updated on the request path, read by the Prometheus
//! endpoint (`crate::metrics`) as plain numbers ([`ProxyStats`]). Names follow ALB's
//! CloudWatch metrics.

use std::{
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Upper bounds (seconds) of the target response time histogram.
pub const RESPONSE_TIME_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Per listener.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Requests received (RequestCount), whatever their outcome.
    pub requests: AtomicU64,
    /// Responses the proxy made itself with a 4XX / 5XX status (HTTPCode_ELB_4XX_Count...).
    pub elb_4xx: AtomicU64,
    pub elb_5xx: AtomicU64,
    /// Client connections open now (ActiveConnectionCount is per minute in ALB; a gauge
    /// suits Prometheus better).
    pub active_connections: AtomicI64,
    /// Client connections accepted (NewConnectionCount).
    pub new_connections: AtomicU64,
    /// https: connections whose TLS handshake failed or timed out
    /// (ClientTLSNegotiationErrorCount).
    pub tls_negotiation_errors: AtomicU64,
    /// Client connections reset at once because a connection limit was reached
    /// (RejectedConnectionCount).
    pub rejected_connections: AtomicU64,
}

/// Per target group.
#[derive(Debug, Default)]
pub struct GroupCounters {
    /// Target responses by class 2XX..5XX (HTTPCode_Target_2XX_Count...).
    pub target_responses: [AtomicU64; 4],
    /// Requests of a sticky group that could not use an existing sticky session
    /// (NonStickyRequestCount): no cookie, a forged, expired or foreign one, or one naming a
    /// target that no longer takes requests.
    pub non_sticky_requests: AtomicU64,
    /// Requests whose connection to a target failed: refused, unreachable, reset before a
    /// response (TargetConnectionErrorCount). Retried ones count too.
    pub target_connection_errors: AtomicU64,
    /// TargetResponseTime: from sending the request to the target's response head.
    pub response_time_buckets: [AtomicU64; RESPONSE_TIME_BUCKETS.len()],
    pub response_time_count: AtomicU64,
    pub response_time_micros: AtomicU64,
}

/// Per target: what the proxy's requests to it met. Kept across snapshots while the target
/// takes requests; forgotten when it leaves its groups.
#[derive(Debug, Default)]
pub struct TargetCounters {
    /// Requests sent to the target, retries included.
    pub requests: AtomicU64,
    /// Requests that got no response head: the connection failed (refused, reset,
    /// unreachable), the response broke, or the target timed out.
    pub errors: AtomicU64,
    /// Target responses by class 2XX..5XX and their times, as [`GroupCounters`] counts them.
    pub responses: GroupCounters,
}

impl TargetCounters {
    pub fn read(&self) -> TargetNumbers {
        TargetNumbers {
            requests: self.requests.load(Relaxed),
            errors: self.errors.load(Relaxed),
            responses: self.responses.read(),
        }
    }
}

impl ListenerCounters {
    pub fn elb_response(&self, status: u16) {
        match status {
            400..=499 => self.elb_4xx.fetch_add(1, Relaxed),
            500..=599 => self.elb_5xx.fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    pub fn read(&self) -> ListenerNumbers {
        ListenerNumbers {
            requests: self.requests.load(Relaxed),
            elb_4xx: self.elb_4xx.load(Relaxed),
            elb_5xx: self.elb_5xx.load(Relaxed),
            active_connections: self.active_connections.load(Relaxed).max(0) as u64,
            new_connections: self.new_connections.load(Relaxed),
            tls_negotiation_errors: self.tls_negotiation_errors.load(Relaxed),
            rejected_connections: self.rejected_connections.load(Relaxed),
        }
    }
}

impl GroupCounters {
    pub fn target_response(&self, status: u16, time: Duration) {
        if let Some(class) = (status / 100).checked_sub(2).filter(|c| *c < 4) {
            self.target_responses[class as usize].fetch_add(1, Relaxed);
        }
        let secs = time.as_secs_f64();
        for (bucket, le) in self.response_time_buckets.iter().zip(RESPONSE_TIME_BUCKETS) {
            if secs <= le {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.response_time_count.fetch_add(1, Relaxed);
        self.response_time_micros
            .fetch_add(time.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    pub fn read(&self) -> GroupNumbers {
        GroupNumbers {
            target_responses: self.target_responses.each_ref().map(|c| c.load(Relaxed)),
            non_sticky_requests: self.non_sticky_requests.load(Relaxed),
            target_connection_errors: self.target_connection_errors.load(Relaxed),
            response_time_buckets: self
                .response_time_buckets
                .each_ref()
                .map(|c| c.load(Relaxed)),
            response_time_count: self.response_time_count.load(Relaxed),
            response_time_seconds: self.response_time_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListenerNumbers {
    pub requests: u64,
    pub elb_4xx: u64,
    pub elb_5xx: u64,
    pub active_connections: u64,
    pub new_connections: u64,
    pub tls_negotiation_errors: u64,
    pub rejected_connections: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupNumbers {
    pub target_responses: [u64; 4],
    pub non_sticky_requests: u64,
    pub target_connection_errors: u64,
    /// Cumulative: each bucket counts responses at most its bound.
    pub response_time_buckets: [u64; RESPONSE_TIME_BUCKETS.len()],
    pub response_time_count: u64,
    pub response_time_seconds: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetNumbers {
    pub requests: u64,
    pub errors: u64,
    /// Only the classes and response times are counted per target.
    pub responses: GroupNumbers,
}

/// The proxy's numbers for one scrape: listeners and target groups by name, targets by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyStats {
    pub listeners: Vec<(String, ListenerNumbers)>,
    pub groups: Vec<(String, GroupNumbers)>,
    pub targets: Vec<(crate::model::TargetKey, TargetNumbers)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_count_by_class_and_time_cumulatively() {
        let g = GroupCounters::default();
        g.target_response(204, Duration::from_millis(3));
        g.target_response(503, Duration::from_millis(300));
        g.target_response(101, Duration::from_millis(1));
        let n = g.read();
        assert_eq!(n.target_responses, [1, 0, 0, 1]);
        assert_eq!(n.response_time_count, 3);
        assert_eq!(n.response_time_buckets[0], 1, "<= 1 ms");
        assert_eq!(n.response_time_buckets[1], 2, "<= 5 ms");
        assert_eq!(n.response_time_buckets[11], 3, "<= 10 s");
        assert!((n.response_time_seconds - 0.304).abs() < 1e-9);
        let l = ListenerCounters::default();
        l.elb_response(502);
        l.elb_response(408);
        l.elb_response(301);
        assert_eq!((l.read().elb_4xx, l.read().elb_5xx), (1, 1));
    }
}
