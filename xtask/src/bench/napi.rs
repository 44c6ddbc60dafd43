//! lb's CPU per forwarded frame, apart from the harness: lb's receive queue (`eth0`'s NAPI) is
//! switched to its own kernel thread (threaded NAPI) and pinned on CPU 0, the sinks' queues
//! and the generator run on CPU 1, and the thread's run time (`/proc/PID/schedstat`) over a
//! run is divided by the frames the sinks received. What that thread does is lb's whole job
//! for a frame: for sluice and the floor, the XDP program and the redirect to a target's link;
//! for nftables, GRO, conntrack, DNAT, routing and the transmit. The sinks' work and the
//! generator's are on other threads. The rate scenario leaves NAPI as it was (everything in
//! softirq on the sender's CPU), so its figures keep their meaning.

use std::{
    collections::BTreeSet,
    fs,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use sluice_tests::netns::Namespace;

use super::topology::Topology;

/// lb's CPU; the generator and the sinks' threads go to [`HARNESS_CPU`].
pub const LB_CPU: usize = 0;
pub const HARNESS_CPU: usize = 1;

/// Threaded NAPI on lb's `eth0` and the sinks' `eth0` while it lives; switched back on drop
/// (the kernel stops the threads then).
pub struct ThreadedNapi<'a> {
    topology: &'a Topology,
    lb_thread: u32,
}

impl<'a> ThreadedNapi<'a> {
    /// Needs two CPUs and a NAPI instance on each `eth0` (GRO on, or an XDP program).
    pub fn start(topology: &'a Topology) -> anyhow::Result<ThreadedNapi<'a>> {
        let mut napi = ThreadedNapi {
            topology,
            lb_thread: 0,
        };
        let before = napi_threads();
        for sink in &topology.sinks {
            set_threaded(sink, true)?;
        }
        let sinks = new_threads(&before, topology.sinks.len())?;
        let before = napi_threads();
        set_threaded(&topology.lb, true)?;
        let lb = new_threads(&before, 1)?;
        napi.lb_thread = lb[0];
        pin(napi.lb_thread, LB_CPU)?;
        for thread in sinks {
            pin(thread, HARNESS_CPU)?;
        }
        Ok(napi)
    }

    /// Nanoseconds lb's receive thread has run so far, and how many times it was switched in
    /// (once per wake-up, when it had gone to sleep with an empty queue).
    pub fn lb_runtime(&self) -> anyhow::Result<(u64, u64)> {
        let path = format!("/proc/{}/schedstat", self.lb_thread);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(ns)), Some(Ok(_)), Some(Ok(runs))) => Ok((ns, runs)),
            _ => bail!("{path}: not a schedstat line: {text:?}"),
        }
    }
}

impl Drop for ThreadedNapi<'_> {
    fn drop(&mut self) {
        let _ = set_threaded(&self.topology.lb, false);
        for sink in &self.topology.sinks {
            let _ = set_threaded(sink, false);
        }
    }
}

/// Writes `eth0`'s `threaded` in `ns`'s own sysfs (`ip netns exec` mounts it).
fn set_threaded(ns: &Namespace, on: bool) -> anyhow::Result<()> {
    let value = if on { "1" } else { "0" };
    crate::cmd::output(std::process::Command::new("ip").args([
        "netns",
        "exec",
        ns.name(),
        "sh",
        "-c",
        &format!("echo {value} > /sys/class/net/eth0/threaded"),
    ]))
    .with_context(|| format!("threaded NAPI {value} on eth0 in {}", ns.name()))?;
    Ok(())
}

/// The pids of the kernel's NAPI threads of every `eth0` (`napi/eth0-ID`).
fn napi_threads() -> BTreeSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("napi/eth0-"))
        })
        .collect()
}

/// The `n` NAPI threads that appeared since `before` (the kernel starts them when `threaded`
/// is written; polled for a bounded time all the same).
fn new_threads(before: &BTreeSet<u32>, n: usize) -> anyhow::Result<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<u32> = napi_threads().difference(before).copied().collect();
        if found.len() == n {
            return Ok(found);
        }
        if found.len() > n || Instant::now() >= deadline {
            bail!(
                "expected {n} new NAPI thread(s) named napi/eth0-*, found {}",
                found.len()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let rc =
        unsafe { libc::sched_setaffinity(pid as libc::pid_t, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        bail!(
            "pinning NAPI thread {pid} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
