//! Keeping the next hop of every target resolved. The XDP program takes MAC addresses from the
//! kernel's neighbour table (`bpf_fib_lookup`), but traffic it forwards never refreshes that
//! table, so sluice asks the kernel to manage those entries: a *managed* neighbour entry is
//! resolved and kept reachable by the kernel itself (Linux 5.16+).
//!
//! Implemented with iproute2 (`ip -j route get`, `ip neigh replace ... managed`).

use std::{net::IpAddr, process::Command};

#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    #[error("cannot run `ip`: {0}")]
    Spawn(std::io::Error),
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("unexpected output from `ip -j route get {0}`")]
    Unparsable(IpAddr),
}

/// The interface and next hop (the target itself when on-link) towards `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub dev: String,
    pub addr: IpAddr,
}

/// Looks up the route to `target` and marks its next hop's neighbour entry managed.
pub fn manage(target: IpAddr) -> Result<NextHop, NeighborError> {
    let route = ip(&["-j", "route", "get", &target.to_string()])?;
    let next_hop = parse_route(&route, target).ok_or(NeighborError::Unparsable(target))?;
    ip(&[
        "neigh",
        "replace",
        &next_hop.addr.to_string(),
        "dev",
        &next_hop.dev,
        "managed",
    ])?;
    Ok(next_hop)
}

fn parse_route(json: &str, target: IpAddr) -> Option<NextHop> {
    let routes: serde_json::Value = serde_json::from_str(json).ok()?;
    let route = routes.get(0)?;
    let dev = route.get("dev")?.as_str()?.to_string();
    let addr = match route.get("gateway").and_then(|g| g.as_str()) {
        Some(gateway) => gateway.parse().ok()?,
        None => target,
    };
    Some(NextHop { dev, addr })
}

fn ip(args: &[&str]) -> Result<String, NeighborError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(NeighborError::Spawn)?;
    if !output.status.success() {
        return Err(NeighborError::Failed {
            command: format!("ip {}", args.join(" ")),
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
    fn garbage_is_not_a_route() {
        assert_eq!(parse_route("[]", "10.0.0.1".parse().unwrap()), None);
        assert_eq!(parse_route("not json", "10.0.0.1".parse().unwrap()), None);
    }
}
