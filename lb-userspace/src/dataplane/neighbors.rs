//! Keeping the next hop of every target resolved. The XDP program takes MAC addresses from the
//! kernel's neighbour table (`bpf_fib_lookup`), but traffic it forwards never refreshes that
//! table, so sluice asks the kernel to manage those entries: a *managed* neighbour entry is
//! resolved and kept reachable by the kernel itself (Linux 5.16+).
//!
//! Implemented with iproute2 (`ip -j route get`, `ip neigh replace ... managed`), in two
//! `ip -batch` runs for any number of targets: a reload that adds a thousand targets starts
//! two processes, not two thousand.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    process::{Command, Stdio},
};

#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    #[error("cannot run `ip`: {0}")]
    Spawn(std::io::Error),
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("unexpected output from `ip -j route get {0}`")]
    Unparsable(IpAddr),
    #[error("no route to {0}")]
    NoRoute(IpAddr),
}

/// The interface and next hop (the target itself when on-link) towards `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub dev: String,
    pub addr: IpAddr,
}

/// Looks up the routes to `targets` and marks their next hops' neighbour entries managed:
/// each target's next hop, or why it has none. A next
/// hop that `ip neigh replace` refuses is logged; the entry then stays unmanaged.
pub fn manage_all(targets: &[IpAddr]) -> Vec<(IpAddr, Result<NextHop, NeighborError>)> {
    if targets.is_empty() {
        return Vec::new();
    }
    let script: String = targets.iter().map(|t| format!("route get {t}\n")).collect();
    // -force: one target without a route must not hide the others' routes.
    let routes = match ip_batch(&["-j", "-force"], &script) {
        Ok(out) => parse_routes(&out),
        Err(e) => {
            let e = e.to_string();
            return targets
                .iter()
                .map(|&t| {
                    let failed = NeighborError::Failed {
                        command: "ip -j -batch (route get)".into(),
                        stderr: e.clone(),
                    };
                    (t, Err(failed))
                })
                .collect();
        }
    };
    let hops: BTreeSet<(String, IpAddr)> = routes
        .values()
        .map(|hop| (hop.dev.clone(), hop.addr))
        .collect();
    let script: String = hops
        .iter()
        .map(|(dev, addr)| format!("neigh replace {addr} dev {dev} managed\n"))
        .collect();
    if let Err(e) = ip_batch(&["-force"], &script) {
        log::warn!("keeping targets' next hops resolved: {e}");
    }
    targets
        .iter()
        .map(|&t| (t, routes.get(&t).cloned().ok_or(NeighborError::NoRoute(t))))
        .collect()
}

/// The routes in the output of `ip -j -batch` with `route get` lines: one JSON array per
/// command, each route naming its destination.
fn parse_routes(out: &str) -> BTreeMap<IpAddr, NextHop> {
    let mut routes = BTreeMap::new();
    for value in serde_json::Deserializer::from_str(out).into_iter::<serde_json::Value>() {
        let Ok(value) = value else { break };
        for route in value.as_array().into_iter().flatten() {
            let Some(dst) = route.get("dst").and_then(|d| d.as_str()) else {
                continue;
            };
            let Ok(target) = dst.parse::<IpAddr>() else {
                continue;
            };
            if let Some(hop) = next_hop(route, target) {
                routes.insert(target, hop);
            }
        }
    }
    routes
}

#[cfg(test)]
fn parse_route(json: &str, target: IpAddr) -> Option<NextHop> {
    let routes: serde_json::Value = serde_json::from_str(json).ok()?;
    next_hop(routes.get(0)?, target)
}

fn next_hop(route: &serde_json::Value, target: IpAddr) -> Option<NextHop> {
    let dev = route.get("dev")?.as_str()?.to_string();
    let addr = match route.get("gateway").and_then(|g| g.as_str()) {
        Some(gateway) => gateway.parse().ok()?,
        None => target,
    };
    Some(NextHop { dev, addr })
}

/// `ip FLAGS -batch -` with `script` on its stdin.
fn ip_batch(flags: &[&str], script: &str) -> Result<String, NeighborError> {
    let mut child = Command::new("ip")
        .args(flags)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NeighborError::Spawn)?;
    let mut stdin = child.stdin.take().expect("piped");
    // A script larger than the pipe would block a writer that does not read stdout at the
    // same time: write from a thread.
    let script = script.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let output = child.wait_with_output().map_err(NeighborError::Spawn)?;
    let _ = writer.join();
    if !output.status.success() {
        return Err(NeighborError::Failed {
            command: format!("ip {} -batch -", flags.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_targets_are_their_own_next_hop() {
        let target: IpAddr = "10.9.0.7".parse().unwrap();
        let json =
            r#"[{"dst":"10.9.0.7","dev":"a0","prefsrc":"10.9.0.1","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(
            parse_route(json, target),
            Some(NextHop {
                dev: "a0".into(),
                addr: target
            })
        );
    }

    #[test]
    fn routed_targets_go_via_their_gateway() {
        let json =
            r#"[{"dst":"192.0.2.9","gateway":"10.9.0.254","dev":"eth1","prefsrc":"10.9.0.1"}]"#;
        let hop = parse_route(json, "192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(
            hop,
            NextHop {
                dev: "eth1".into(),
                addr: "10.9.0.254".parse().unwrap()
            }
        );
    }

    #[test]
    fn batch_output_is_one_array_per_route() {
        let out = "[{\"dst\":\"10.9.0.7\",\"dev\":\"a0\"}]\n[{\"dst\":\"192.0.2.9\",\"gateway\":\"10.9.0.254\",\"dev\":\"eth1\"}]\n";
        let routes = parse_routes(out);
        assert_eq!(routes.len(), 2);
        assert_eq!(
            routes[&"192.0.2.9".parse::<IpAddr>().unwrap()].addr,
            "10.9.0.254".parse::<IpAddr>().unwrap()
        );
        assert_eq!(parse_routes("not json"), BTreeMap::new());
    }

    #[test]
    fn garbage_is_not_a_route() {
        assert_eq!(parse_route("[]", "10.0.0.1".parse().unwrap()), None);
        assert_eq!(parse_route("not json", "10.0.0.1".parse().unwrap()), None);
    }
}
