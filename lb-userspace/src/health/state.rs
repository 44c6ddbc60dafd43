//! The per-target health state machine and the fail-open rule, as in ELB.

use std::fmt;

use super::HealthCheck;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Registered, not yet passed a check: no traffic unless its group fails open.
    Initial,
    Healthy,
    Unhealthy,
}

impl Health {
    /// ELB's names for the states.
    pub const fn name(self) -> &'static str {
        match self {
            Health::Initial => "initial",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    pub fn from_name(name: &str) -> Option<Health> {
        [Health::Initial, Health::Healthy, Health::Unhealthy]
            .into_iter()
            .find(|h| h.name() == name)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ELB's reason codes (`TargetHealth.Reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    InitialHealthChecking,
    ResponseCodeMismatch,
    Timeout,
    FailedHealthChecks,
}

impl ReasonCode {
    pub const fn name(self) -> &'static str {
        match self {
            ReasonCode::InitialHealthChecking => "Elb.InitialHealthChecking",
            ReasonCode::ResponseCodeMismatch => "Target.ResponseCodeMismatch",
            ReasonCode::Timeout => "Target.Timeout",
            ReasonCode::FailedHealthChecks => "Target.FailedHealthChecks",
        }
    }
}

/// Why a target is in its state. ELB gives a healthy target no reason code; its transitions
/// still carry a description, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub code: Option<ReasonCode>,
    pub description: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "{}: {}", code.name(), self.description),
            None => f.write_str(&self.description),
        }
    }
}

impl Reason {
    fn initial() -> Reason {
        Reason {
            code: Some(ReasonCode::InitialHealthChecking),
            description: "Initial health checking in progress".to_string(),
        }
    }
}

/// A change of state, to be logged and acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    pub reason: Reason,
}

/// Why a check failed, in ELB's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("Request timed out")]
    Timeout,
    #[error("Connection refused")]
    Refused,
    #[error("Health checks failed with these codes: [{0}]")]
    CodeMismatch(u16),
    /// Any other failure to connect (unreachable, reset).
    #[error("Connection failed: {0}")]
    Connection(String),
    /// The target connected but did not send a readable HTTP response.
    #[error("Bad response: {0}")]
    Response(String),
}

impl Failure {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Failure::Timeout => ReasonCode::Timeout,
            Failure::CodeMismatch(_) => ReasonCode::ResponseCodeMismatch,
            Failure::Refused | Failure::Connection(_) | Failure::Response(_) => {
                ReasonCode::FailedHealthChecks
            }
        }
    }
}

/// One check's result as the state machine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(Failure),
}

/// One target's health: its state and the current run of passes or failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetHealth {
    state: Health,
    reason: Option<Reason>,
    passes: u32,
    failures: u32,
    /// Distinct unmatched status codes of the current run of failures, for the reason.
    codes: Vec<u16>,
}

impl Default for TargetHealth {
    fn default() -> Self {
        TargetHealth::new()
    }
}

impl TargetHealth {
    pub fn new() -> TargetHealth {
        TargetHealth {
            state: Health::Initial,
            reason: Some(Reason::initial()),
            passes: 0,
            failures: 0,
            codes: Vec::new(),
        }
    }

    /// A target whose state a previous daemon established (hitless restart): it keeps that
    /// state, and its runs of passes or failures start again.
    pub fn adopted(state: Health) -> TargetHealth {
        match state {
            Health::Initial => TargetHealth::new(),
            Health::Healthy => TargetHealth {
                state,
                reason: None,
                ..TargetHealth::new()
            },
            Health::Unhealthy => TargetHealth {
                state,
                reason: Some(Reason {
                    code: Some(ReasonCode::FailedHealthChecks),
                    description:
                        "Health checks failed (state kept from before the daemon restarted)".into(),
                }),
                ..TargetHealth::new()
            },
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// `None` when healthy, as in ELB.
    pub fn reason(&self) -> Option<&Reason> {
        self.reason.as_ref()
    }

    /// Keeps the state but forgets the current run, for when the check's settings change.
    pub fn restart_counting(&mut self) {
        self.passes = 0;
        self.failures = 0;
        self.codes.clear();
    }

    /// Records one check. A new target becomes healthy on its first pass (as in ELB: "after
    /// your target is registered, it must pass one health check"); otherwise it takes exactly
    /// `healthy_threshold` consecutive passes to become healthy and `unhealthy_threshold`
    /// consecutive failures to become unhealthy.
    pub fn record(&mut self, check: &HealthCheck, outcome: &Outcome) -> Option<Transition> {
        let from = self.state;
        match outcome {
            Outcome::Pass => {
                self.failures = 0;
                self.codes.clear();
                self.passes = self.passes.saturating_add(1);
                let description = match from {
                    Health::Healthy => return None,
                    Health::Initial => "Initial health check passed".to_string(),
                    Health::Unhealthy if self.passes >= check.healthy_threshold => {
                        format!("{} consecutive health checks passed", self.passes)
                    }
                    Health::Unhealthy => return None,
                };
                self.passes = 0;
                self.state = Health::Healthy;
                self.reason = None;
                Some(Transition {
                    from,
                    to: Health::Healthy,
                    reason: Reason {
                        code: None,
                        description,
                    },
                })
            }
            Outcome::Fail(failure) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                if let Failure::CodeMismatch(code) = failure {
                    if !self.codes.contains(code) {
                        self.codes.push(*code);
                    }
                }
                let reason = self.failure_reason(failure);
                match from {
                    Health::Unhealthy => {
                        // Still unhealthy; the reason shown follows the latest failure.
                        self.reason = Some(reason);
                        None
                    }
                    Health::Initial | Health::Healthy
                        if self.failures >= check.unhealthy_threshold =>
                    {
                        self.failures = 0;
                        self.state = Health::Unhealthy;
                        self.reason = Some(reason.clone());
                        Some(Transition {
                            from,
                            to: Health::Unhealthy,
                            reason,
                        })
                    }
                    Health::Initial | Health::Healthy => None,
                }
            }
        }
    }

    fn failure_reason(&self, failure: &Failure) -> Reason {
        let description = match failure {
            Failure::CodeMismatch(_) => {
                let codes: Vec<String> = self.codes.iter().map(u16::to_string).collect();
                format!(
                    "Health checks failed with these codes: [{}]",
                    codes.join(", ")
                )
            }
            other => other.to_string(),
        };
        Reason {
            code: Some(failure.reason_code()),
            description,
        }
    }
}

/// Which of a group's targets should receive traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routable<K> {
    pub targets: Vec<K>,
    /// No target is healthy, so every target gets traffic (ELB's fail open): better a chance
    /// of an answer than certain failure, and the health check may be what is wrong.
    pub failing_open: bool,
}

/// The healthy targets; if none is healthy, all of them, failing open. A group without
/// targets has none to route to and is not failing open.
pub fn routable<K>(targets: impl IntoIterator<Item = (K, Health)>) -> Routable<K> {
    let all: Vec<(K, Health)> = targets.into_iter().collect();
    if all.is_empty() || all.iter().any(|(_, h)| *h == Health::Healthy) {
        return Routable {
            targets: all
                .into_iter()
                .filter(|(_, h)| *h == Health::Healthy)
                .map(|(k, _)| k)
                .collect(),
            failing_open: false,
        };
    }
    Routable {
        targets: all.into_iter().map(|(k, _)| k).collect(),
        failing_open: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            ..HealthCheck::default()
        }
    }

    fn fail(failure: Failure) -> Outcome {
        Outcome::Fail(failure)
    }

    #[test]
    fn a_new_target_is_initial_until_its_first_pass() {
        let check = check(3, 2);
        let mut t = TargetHealth::new();
        assert_eq!(t.state(), Health::Initial);
        assert_eq!(
            t.reason().unwrap().code,
            Some(ReasonCode::InitialHealthChecking)
        );
        let change = t.record(&check, &Outcome::Pass).unwrap();
        assert_eq!((change.from, change.to), (Health::Initial, Health::Healthy));
        assert_eq!(change.reason.to_string(), "Initial health check passed");
        assert_eq!(t.reason(), None);
    }

    #[test]
    fn a_new_target_failing_becomes_unhealthy_at_the_threshold() {
        let check = check(3, 2);
        let mut t = TargetHealth::new();
        assert_eq!(t.record(&check, &fail(Failure::Timeout)), None);
        assert_eq!(t.state(), Health::Initial);
        let change = t.record(&check, &fail(Failure::Timeout)).unwrap();
        assert_eq!(
            (change.from, change.to),
            (Health::Initial, Health::Unhealthy)
        );
        assert_eq!(
            change.reason.to_string(),
            "Target.Timeout: Request timed out"
        );
    }

    #[test]
    fn thresholds_are_exact() {
        let check = check(3, 2);
        let mut t = TargetHealth::new();
        t.record(&check, &Outcome::Pass).unwrap();
        // Unhealthy threshold 2: one failure keeps it healthy, the second does not.
        assert_eq!(t.record(&check, &fail(Failure::Refused)), None);
        assert_eq!(t.state(), Health::Healthy);
        let change = t.record(&check, &fail(Failure::Refused)).unwrap();
        assert_eq!(change.to, Health::Unhealthy);
        assert_eq!(
            change.reason.to_string(),
            "Target.FailedHealthChecks: Connection refused"
        );
        // Healthy threshold 3: two passes keep it unhealthy, the third does not.
        assert_eq!(t.record(&check, &Outcome::Pass), None);
        assert_eq!(t.record(&check, &Outcome::Pass), None);
        assert_eq!(t.state(), Health::Unhealthy);
        let change = t.record(&check, &Outcome::Pass).unwrap();
        assert_eq!(
            (change.from, change.to),
            (Health::Unhealthy, Health::Healthy)
        );
        assert_eq!(
            change.reason.description,
            "3 consecutive health checks passed"
        );
    }

    #[test]
    fn a_run_is_broken_by_the_other_outcome() {
        let check = check(3, 2);
        let mut t = TargetHealth::new();
        t.record(&check, &Outcome::Pass).unwrap();
        for _ in 0..5 {
            assert_eq!(
                t.record(&check, &fail(Failure::Timeout)).map(|c| c.to),
                None
            );
            assert_eq!(t.record(&check, &Outcome::Pass), None);
        }
        assert_eq!(t.state(), Health::Healthy);
        t.record(&check, &fail(Failure::Timeout));
        t.record(&check, &fail(Failure::Timeout)).unwrap();
        for _ in 0..5 {
            t.record(&check, &Outcome::Pass);
            t.record(&check, &Outcome::Pass);
            assert_eq!(t.record(&check, &fail(Failure::Timeout)), None);
        }
        assert_eq!(t.state(), Health::Unhealthy);
    }

    #[test]
    fn code_mismatches_list_the_codes_of_the_run() {
        let check = check(3, 3);
        let mut t = TargetHealth::new();
        t.record(&check, &Outcome::Pass).unwrap();
        t.record(&check, &fail(Failure::CodeMismatch(500)));
        t.record(&check, &fail(Failure::CodeMismatch(503)));
        let change = t.record(&check, &fail(Failure::CodeMismatch(500))).unwrap();
        assert_eq!(
            change.reason.to_string(),
            "Target.ResponseCodeMismatch: Health checks failed with these codes: [500, 503]"
        );
        // While unhealthy, the reason follows the latest failure without a transition.
        assert_eq!(t.record(&check, &fail(Failure::Timeout)), None);
        assert_eq!(t.reason().unwrap().code, Some(ReasonCode::Timeout));
    }

    #[test]
    fn fail_open_routes_to_all_when_none_is_healthy() {
        let r = routable([
            ("a", Health::Healthy),
            ("b", Health::Unhealthy),
            ("c", Health::Initial),
        ]);
        assert_eq!(
            r,
            Routable {
                targets: vec!["a"],
                failing_open: false
            }
        );
        let r = routable([("b", Health::Unhealthy), ("c", Health::Initial)]);
        assert_eq!(
            r,
            Routable {
                targets: vec!["b", "c"],
                failing_open: true
            }
        );
        let r = routable(Vec::<(&str, Health)>::new());
        assert_eq!(
            r,
            Routable {
                targets: vec![],
                failing_open: false
            }
        );
    }
}
