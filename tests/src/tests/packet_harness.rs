//! Runs sluice's real XDP program on single frames through `BPF_PROG_TEST_RUN`, with the
//! counters each frame moved.
//!
//! Each [`XdpHarness`] loads its own copy of the program, with its own `STATS` map, so tests
//! running in parallel threads never see each other's packets in their counter deltas.
//!
//! The kernel refuses XDP test runs on input shorter than an Ethernet header (14 bytes) with
//! `EINVAL` before the program runs, so frames shorter than that cannot reach the program
//! this way (nor from a real NIC); [`XdpHarness::try_run`] exposes that error.

use std::io;

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunOptions},
    Ebpf,
};
use lb_common::stats::{Counter, CounterKind, CounterValue};
use sluice::dataplane::counters::Counters;

/// XDP actions (`enum xdp_action` in the kernel's UAPI), as [`RunResult::action`] holds them.
pub const XDP_PASS: u32 = 2;
pub const XDP_DROP: u32 = 1;
pub const XDP_TX: u32 = 3;

/// Room for a program to grow the frame (`bpf_xdp_adjust_head`/`_tail`, encapsulation);
/// a smaller output buffer makes the test run fail with `ENOSPC`.
const OUTPUT_HEADROOM: usize = 4096;

pub struct XdpHarness {
    ebpf: Ebpf,
    /// The object's XDP program that runs (`sluice`, or `sluice_decap`).
    program: &'static str,
    stats: PerCpuArray<MapData, CounterValue>,
    /// The interface the frame seems to arrive on (`xdp_md.ingress_ifindex`); `None` = the
    /// kernel's default for test runs, the loopback device of the caller's namespace.
    ingress_ifindex: Option<u32>,
}

/// What one run of the program did to one frame.
#[derive(Debug)]
pub struct RunResult {
    /// XDP action (`XDP_PASS`, ...).
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    /// Counters moved by this frame, summed over CPUs.
    pub deltas: Counters,
}

impl XdpHarness {
    /// Loads sluice's XDP program; panics with the reason if that is impossible (not root,
    /// program not built, rejected by the verifier).
    pub fn new() -> XdpHarness {
        Self::with_program(sluice::dataplane::load::PROGRAM_NAME)
    }

    /// Like [`new`](Self::new), for another XDP program of the same object (its maps, `STATS`
    /// among them, are the object's; the program may count elsewhere).
    pub fn with_program(program: &'static str) -> XdpHarness {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("XdpHarness loads an XDP program and needs root: run the integration tests as root (e.g. `sudo -E cargo test -p sluice-tests`)");
        }
        let mut ebpf = sluice::dataplane::load::load_program(
            log::LevelFilter::Off,
            sluice::dataplane::load::MapSizes::default(),
            program,
        )
        .unwrap_or_else(|e| panic!("cannot load sluice's XDP program {program}: {e}"));
        let map = ebpf
            .take_map(sluice::dataplane::counters::STATS_MAP)
            .expect("the XDP object has a STATS map");
        let stats = PerCpuArray::try_from(map).expect("STATS is a per-CPU array of CounterValue");
        XdpHarness {
            ebpf,
            program,
            stats,
            ingress_ifindex: None,
        }
    }

    /// The loaded object, to program its maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Makes later runs look as if frames arrived on `ifindex` (in the namespace of the thread
    /// that runs them): the FIB lookup then happens there, and XDP_TX means "out of it".
    pub fn set_ingress(&mut self, ifindex: u32) {
        self.ingress_ifindex = Some(ifindex);
    }

    /// Runs the program once on `frame`; panics if the kernel refuses the run.
    pub fn run(&mut self, frame: &[u8]) -> RunResult {
        self.try_run(frame).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN on a {}-byte frame failed: {}",
                frame.len(),
                chain(&e)
            )
        })
    }

    /// Runs the program once on `frame`, returning the kernel's refusal as an error.
    pub fn try_run(&mut self, frame: &[u8]) -> Result<RunResult, ProgramError> {
        let before = self.counters();
        let mut output = vec![0; frame.len() + OUTPUT_HEADROOM];
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: the kernel wants data = 0 and data_end = the frame's length.
        let ctx: Vec<u8> = self
            .ingress_ifindex
            .map(|ifindex| {
                [0, frame.len() as u32, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|w| w.to_ne_bytes())
                    .collect()
            })
            .unwrap_or_default();
        let program = sluice::dataplane::load::program_mut_named(&mut self.ebpf, self.program);
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            ctx_in: self.ingress_ifindex.map(|_| &ctx[..]),
            repeat: 1,
            ..TestRunOptions::default()
        })?;
        output.truncate(result.data_size_out as usize);
        Ok(RunResult {
            action: result.return_value,
            output,
            deltas: self.counters().since(&before),
        })
    }

    fn counters(&self) -> Counters {
        sluice::dataplane::counters::read(&self.stats).expect("STATS is readable")
    }
}

impl RunResult {
    /// The counters that moved, with how much.
    pub fn moved(&self) -> Vec<(Counter, CounterValue)> {
        self.deltas
            .0
            .iter()
            .filter(|(_, v)| *v != CounterValue::default())
            .copied()
            .collect()
    }

    /// The outcome counter this frame moved; panics unless exactly one outcome counter moved,
    /// by exactly one packet.
    pub fn outcome(&self) -> Counter {
        let outcomes: Vec<_> = self
            .moved()
            .into_iter()
            .filter(|(c, _)| c.kind() == CounterKind::Outcome)
            .collect();
        match outcomes[..] {
            [(counter, CounterValue { packets: 1, .. })] => counter,
            _ => {
                panic!("expected exactly one outcome counter moved by one packet, got {outcomes:?}")
            }
        }
    }

    /// Asserts that `input` was passed to the kernel unchanged and moved exactly `counters`,
    /// each by one packet of the frame's length, and nothing else.
    pub fn assert_passed_unchanged(&self, input: &[u8], counters: &[Counter]) {
        assert_eq!(self.action, XDP_PASS, "action for {}", hex(input));
        assert!(
            self.output == input,
            "the frame was changed:\n in:  {}\n out: {}",
            hex(input),
            hex(&self.output)
        );
        let one = CounterValue {
            packets: 1,
            bytes: input.len() as u64,
        };
        let mut expected: Vec<_> = counters.iter().map(|&c| (c, one)).collect();
        expected.sort_by_key(|(c, _)| *c);
        assert_eq!(self.moved(), expected, "counters moved by {}", hex(input));
    }
}

/// A frame as hex, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The error and its sources on one line (aya's errors keep the errno in a source).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The errno behind a failed test run, if any.
pub fn errno(e: &ProgramError) -> Option<i32> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's XDP test run needs at least an Ethernet header (`ETH_HLEN`); shorter input
    /// is refused with EINVAL before the program runs and counts nothing.
    #[test]
    fn frames_shorter_than_ethernet_are_refused_by_the_kernel() {
        let mut harness = XdpHarness::new();
        for len in 0..14 {
            let before = harness.counters();
            let err = harness
                .try_run(&vec![0xAB; len])
                .expect_err(&format!("a {len}-byte frame was accepted"));
            assert_eq!(
                errno(&err),
                Some(libc::EINVAL),
                "{len} bytes: {}",
                chain(&err)
            );
            assert_eq!(harness.counters(), before, "{len} bytes moved counters");
        }
        let run = harness.run(&[0xAB; 14]);
        assert_eq!(run.outcome(), Counter::PassNotIp);
    }

    #[test]
    fn each_harness_counts_only_its_own_frames() {
        let mut a = XdpHarness::new();
        let mut b = XdpHarness::new();
        let frame = [0u8; 60];
        for _ in 0..3 {
            a.run(&frame);
        }
        assert_eq!(a.counters().get(Counter::PassNotIp).packets, 3);
        assert_eq!(b.counters().get(Counter::PassNotIp).packets, 0);
        let run = b.run(&frame);
        run.assert_passed_unchanged(&frame, &[Counter::PassNotIp]);
        assert_eq!(run.deltas.get(Counter::PassNotIp).bytes, 60);
    }
}
