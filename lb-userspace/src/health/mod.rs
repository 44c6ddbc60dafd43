//! Health checks, as in ELB: each target group checks its targets (TCP connect or HTTP GET)
//! on an interval; a target is healthy after passing, unhealthy after `unhealthy_threshold`
//! consecutive failures, healthy again after `healthy_threshold` consecutive passes; a group
//! with no healthy target fails open.
//!
//! - [`spec`]: settings as configured ([`HealthCheckSpec`]) and resolved ([`HealthCheck`]);
//! - [`state`]: the pure per-target state machine and the fail-open rule;
//! - [`probe`]: one check against one target;
//! - [`checker`]: the tasks that check a changing set of targets and report state changes.

pub(crate) mod checker;
pub(crate) mod probe;
pub(crate) mod spec;
pub(crate) mod state;

pub use checker::{HealthChecker, HealthEvent, TargetStatus};
pub use probe::{probe, ProbeResult};
pub use spec::{
    parse_duration, CheckProtocol, HealthCheck, HealthCheckError, HealthCheckSpec, Matcher,
    MatcherError,
};
pub use state::{
    routable, Failure, Health, Outcome, Reason, ReasonCode, Routable, TargetHealth, Transition,
};
