//! What a generator run reports: frames sent, frames each sink received, rates and loss.

use std::time::Duration;

use serde::Serialize;

/// One receiving interface's count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SinkReport {
    /// As given to `--sink` (`[NETNS:]IFACE`).
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    /// Packets per watched flow (`--watch`): `(source address, source port, packets)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watched: Vec<(String, u16, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub sent: u64,
    /// From the first frame sent to the last.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
    /// The generator thread's CPU time inside its sending calls; `elapsed` minus this is the
    /// time it sat idle inside them (reported, since it slows every variant alike).
    #[serde(serialize_with = "seconds")]
    pub generator_cpu: Duration,
    pub sinks: Vec<SinkReport>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Millions of packets per second.
pub fn mpps(packets: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    packets as f64 / elapsed.as_secs_f64() / 1e6
}

impl Report {
    pub fn sent_mpps(&self) -> f64 {
        mpps(self.sent, self.elapsed)
    }

    pub fn received(&self) -> u64 {
        self.sinks.iter().map(|s| s.packets).sum()
    }

    pub fn received_mpps(&self) -> f64 {
        mpps(self.received(), self.elapsed)
    }

    /// Frames sent and not received, as a fraction of those sent (negative when sinks saw
    /// more than the generator sent, e.g. other traffic).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        (self.sent as f64 - self.received() as f64) / self.sent as f64
    }

    /// Nanoseconds per frame the generator was idle while sending (wall time minus its CPU
    /// time): dead time in every variant's figure, not the balancer's.
    pub fn generator_idle_ns_per_frame(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.elapsed.saturating_sub(self.generator_cpu).as_nanos() as f64 / self.sent as f64
    }

    /// The JSON form `--json` prints, with the derived figures.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("a report serialises");
        value["sent_mpps"] = self.sent_mpps().into();
        value["generator_idle_ns_per_frame"] = self.generator_idle_ns_per_frame().into();
        if !self.sinks.is_empty() {
            value["received"] = self.received().into();
            value["received_mpps"] = self.received_mpps().into();
            value["loss"] = self.loss().into();
        }
        value
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sent {} packets in {:.3} s: {:.3} Mpps (generator idle {:.0} ns per frame)",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.sent_mpps(),
            self.generator_idle_ns_per_frame()
        )?;
        if self.sinks.is_empty() {
            return Ok(());
        }
        let received = self.received();
        for sink in &self.sinks {
            let share = if received == 0 {
                0.0
            } else {
                100.0 * sink.packets as f64 / received as f64
            };
            writeln!(
                f,
                "  received on {}: {} packets ({share:.1}%), {:.3} Mpps",
                sink.name,
                sink.packets,
                mpps(sink.packets, self.elapsed)
            )?;
        }
        writeln!(
            f,
            "received {received} packets: {:.3} Mpps, loss {:.2}%",
            self.received_mpps(),
            100.0 * self.loss()
        )
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            sent: 1_000_000,
            elapsed: Duration::from_millis(500),
            generator_cpu: Duration::from_millis(400),
            sinks: vec![
                SinkReport {
                    name: "t0:eth0".into(),
                    packets: 600_000,
                    bytes: 36_000_000,
                    watched: vec![],
                },
                SinkReport {
                    name: "t1:eth0".into(),
                    packets: 300_000,
                    bytes: 18_000_000,
                    watched: vec![],
                },
            ],
        }
    }

    #[test]
    fn rates_and_loss() {
        let r = report();
        assert_eq!(r.sent_mpps(), 2.0);
        assert_eq!(r.received(), 900_000);
        assert!((r.received_mpps() - 1.8).abs() < 1e-9);
        assert!((r.loss() - 0.1).abs() < 1e-9);
        assert_eq!(mpps(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn text_and_json_name_every_sink() {
        let r = report();
        let text = r.to_string();
        assert!(
            text.contains(
                "sent 1000000 packets in 0.500 s: 2.000 Mpps (generator idle 100 ns per frame)"
            ),
            "{text}"
        );
        assert!(
            text.contains("received on t0:eth0: 600000 packets (66.7%)"),
            "{text}"
        );
        assert!(text.contains("loss 10.00%"), "{text}");
        let json = r.to_json();
        assert_eq!(json["received"], 900_000);
        assert_eq!(json["generator_idle_ns_per_frame"], 100.0);
        assert_eq!(json["sinks"][1]["name"], "t1:eth0");
        assert_eq!(json["elapsed"], 0.5);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
