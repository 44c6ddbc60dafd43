//! Run-time changes to the model (`sluice target add`, `sluice listener remove`, ...): each
//! turns one model into another, which is then validated as a whole exactly like a file, so a
//! change the file could not express is refused the same way. Nothing here touches the
//! kernel; the daemon applies the result with `Controller::apply`.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::{CertificateFiles, Listener, Mode, Model, Protocol, Target, TargetGroup};

/// One change to the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    AddTarget(TargetSpec),
    RemoveTarget(TargetRef),
    SetWeight(TargetRef, u32),
    AddListener(Listener),
    RemoveListener(String),
}

/// A target to register: its group, address, and optionally port and weight (default 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub group: String,
    pub address: IpAddr,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A registered target: without a port, the one target of the group at that address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    pub group: String,
    pub address: IpAddr,
    #[serde(default)]
    pub port: Option<u16>,
}

/// A listener to add, as `POST /v1/listeners` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// tcp/udp only (default nat).
    #[serde(default)]
    pub mode: Option<Mode>,
    pub target_group: String,
    #[serde(default)]
    pub maglev_table_size: Option<u32>,
    /// https only: at least one; the first is the default when SNI matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateFiles>,
}

impl From<ListenerSpec> for Listener {
    fn from(spec: ListenerSpec) -> Listener {
        Listener {
            mode: spec.mode,
            maglev_table_size: spec.maglev_table_size,
            certificates: spec.certificates,
            ..Listener::l4(
                &spec.name,
                spec.address,
                spec.port,
                spec.protocol,
                Mode::Nat,
                &spec.target_group,
            )
        }
    }
}

/// Why a change was refused; the model is unchanged.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// A name or target that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something that exists already.
    #[error("{0}")]
    Conflict(String),
    /// The changed model does not validate, or the request is ambiguous.
    #[error("{0}")]
    Invalid(String),
}

impl Edit {
    /// The model with this change made, validated as a whole.
    pub fn apply_to(&self, model: &Model) -> Result<Model, EditError> {
        let mut next = model.clone();
        match self {
            Edit::AddTarget(spec) => {
                let group = group_mut(&mut next, &spec.group)?;
                let wanted = spec.port.or(group.port);
                if let Some(existing) = group
                    .targets
                    .iter()
                    .find(|t| t.address == spec.address && t.port.or(group.port) == wanted)
                {
                    return Err(EditError::Conflict(format!(
                        "target {} is already in target group '{}'",
                        show(existing, group),
                        group.name
                    )));
                }
                group.targets.push(Target::at(
                    spec.address,
                    spec.port,
                    spec.weight.unwrap_or(1),
                ));
            }
            Edit::RemoveTarget(target) => {
                let group = group_mut(&mut next, &target.group)?;
                let index = find_target(group, target)?;
                group.targets.remove(index);
            }
            Edit::SetWeight(target, weight) => {
                let group = group_mut(&mut next, &target.group)?;
                let index = find_target(group, target)?;
                group.targets[index].weight = *weight;
            }
            Edit::AddListener(listener) => {
                if next.listeners.iter().any(|l| l.name == listener.name) {
                    return Err(EditError::Conflict(format!(
                        "listener '{}' already exists; listeners: {}",
                        listener.name,
                        listener_names(&next)
                    )));
                }
                if next.target_group(&listener.default_target_group).is_none() {
                    return Err(unknown_group(&next, &listener.default_target_group));
                }
                next.listeners.push(listener.clone());
            }
            Edit::RemoveListener(name) => {
                let Some(index) = next.listeners.iter().position(|l| &l.name == name) else {
                    return Err(EditError::NotFound(format!(
                        "listener '{name}' does not exist; listeners: {}",
                        listener_names(&next)
                    )));
                };
                next.listeners.remove(index);
            }
        }
        next.validate().map_err(|e| EditError::Invalid(e.message))?;
        Ok(next)
    }
}

impl std::fmt::Display for Edit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |address: IpAddr, port: Option<u16>| match port {
            Some(port) => SocketAddr::new(address, port).to_string(),
            None => address.to_string(),
        };
        match self {
            Edit::AddTarget(t) => write!(
                f,
                "add target {} (weight {}) to target group '{}'",
                at(t.address, t.port),
                t.weight.unwrap_or(1),
                t.group
            ),
            Edit::RemoveTarget(t) => write!(
                f,
                "remove target {} from target group '{}'",
                at(t.address, t.port),
                t.group
            ),
            Edit::SetWeight(t, weight) => write!(
                f,
                "set the weight of target {} of target group '{}' to {weight}",
                at(t.address, t.port),
                t.group
            ),
            Edit::AddListener(l) => write!(
                f,
                "add listener '{}' on {} {} ({}) to target group '{}'",
                l.name,
                SocketAddr::new(l.address, l.port),
                l.protocol.name(),
                if l.protocol.is_l7() {
                    "proxied"
                } else {
                    l.mode().name()
                },
                l.default_target_group
            ),
            Edit::RemoveListener(name) => write!(f, "remove listener '{name}'"),
        }
    }
}

fn group_mut<'a>(model: &'a mut Model, name: &str) -> Result<&'a mut TargetGroup, EditError> {
    if model.target_group(name).is_none() {
        return Err(unknown_group(model, name));
    }
    Ok(model
        .target_groups
        .iter_mut()
        .find(|g| g.name == name)
        .expect("looked up above"))
}

fn unknown_group(model: &Model, name: &str) -> EditError {
    let known: Vec<&str> = model
        .target_groups
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    EditError::NotFound(format!(
        "target group '{name}' does not exist; target groups: {}",
        list(&known)
    ))
}

fn listener_names(model: &Model) -> String {
    let names: Vec<&str> = model.listeners.iter().map(|l| l.name.as_str()).collect();
    list(&names)
}

fn list(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The index of the one target `target` names.
fn find_target(group: &TargetGroup, target: &TargetRef) -> Result<usize, EditError> {
    let matches: Vec<usize> = group
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.address == target.address
                && target.port.is_none_or(|p| t.port.or(group.port) == Some(p))
        })
        .map(|(i, _)| i)
        .collect();
    let asked = match target.port {
        Some(port) => SocketAddr::new(target.address, port).to_string(),
        None => target.address.to_string(),
    };
    match matches[..] {
        [index] => Ok(index),
        [] => {
            let known: Vec<String> = group.targets.iter().map(|t| show(t, group)).collect();
            Err(EditError::NotFound(format!(
                "target {asked} is not in target group '{}'; its targets: {}",
                group.name,
                list(&known)
            )))
        }
        _ => {
            let known: Vec<String> = matches
                .iter()
                .map(|&i| show(&group.targets[i], group))
                .collect();
            Err(EditError::Invalid(format!(
                "target group '{}' has {} targets at {asked} ({}); give the port",
                group.name,
                matches.len(),
                known.join(", ")
            )))
        }
    }
}

fn show(target: &Target, group: &TargetGroup) -> String {
    match target.port.or(group.port) {
        Some(port) => SocketAddr::new(target.address, port).to_string(),
        None => target.address.to_string(),
    }
}

/// Parses `ADDRESS[:PORT]`: `10.0.1.10`, `10.0.1.10:3000`, `2001:db8::5`, `[2001:db8::5]:3000`.
pub fn parse_target_address(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok((address, None));
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        if socket.port() == 0 {
            return Err(format!(
                "{text}: port 0 is not a target port; use 1 to 65535"
            ));
        }
        return Ok((socket.ip(), Some(socket.port())));
    }
    Err(format!(
        "'{text}' is not ADDRESS or ADDRESS:PORT (e.g. 10.0.1.10, 10.0.1.10:3000, [2001:db8::5]:3000)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"
[[listener]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"
default_target_group = "web"
maglev_table_size = 251

[[target_group]]
name = "web"
port = 3000
targets = [{ address = "10.0.1.10" }, { address = "10.0.1.11", weight = 2 }]

[[target_group]]
name = "ports"
targets = [{ address = "10.0.2.10", port = 1 }, { address = "10.0.2.10", port = 2 }]
"#;

    fn model() -> Model {
        Model::parse(MODEL, "test").unwrap()
    }

    fn target(group: &str, address: &str, port: Option<u16>) -> TargetRef {
        TargetRef {
            group: group.into(),
            address: address.parse().unwrap(),
            port,
        }
    }

    fn listener(name: &str, group: &str) -> Listener {
        Listener {
            maglev_table_size: Some(251),
            ..Listener::l4(
                name,
                "192.0.2.11".parse().unwrap(),
                80,
                Protocol::Tcp,
                Mode::Nat,
                group,
            )
        }
    }

    #[test]
    fn adds_and_refuses_duplicates_and_unknown_groups() {
        let add = |group: &str, address: &str, port, weight| {
            Edit::AddTarget(TargetSpec {
                group: group.into(),
                address: address.parse().unwrap(),
                port,
                weight,
            })
            .apply_to(&model())
        };
        let next = add("web", "10.0.1.12", None, Some(3)).unwrap();
        let added = next.target_group("web").unwrap().targets.last().unwrap();
        assert_eq!(
            (added.address.to_string(), added.port, added.weight),
            ("10.0.1.12".into(), None, 3)
        );
        // The group's port makes 10.0.1.10 and 10.0.1.10:3000 the same target.
        for port in [None, Some(3000)] {
            assert_eq!(
                add("web", "10.0.1.10", port, None).unwrap_err(),
                EditError::Conflict(
                    "target 10.0.1.10:3000 is already in target group 'web'".into()
                )
            );
        }
        assert!(add("web", "10.0.1.10", Some(3001), None).is_ok());
        assert_eq!(
            add("nope", "10.0.1.10", None, None).unwrap_err(),
            EditError::NotFound(
                "target group 'nope' does not exist; target groups: web, ports".into()
            )
        );
        // Validated like the file.
        for (weight, address) in [(0, "10.0.1.12"), (1000, "10.0.1.12"), (1, "224.0.0.1")] {
            let refused = add("web", address, None, Some(weight)).unwrap_err();
            assert!(matches!(refused, EditError::Invalid(_)), "{refused:?}");
        }
    }

    #[test]
    fn removes_and_reweights_named_targets_only() {
        let next = Edit::RemoveTarget(target("web", "10.0.1.10", None))
            .apply_to(&model())
            .unwrap();
        assert_eq!(next.target_group("web").unwrap().targets.len(), 1);
        let next = Edit::SetWeight(target("web", "10.0.1.11", Some(3000)), 7)
            .apply_to(&model())
            .unwrap();
        assert_eq!(next.target_group("web").unwrap().targets[1].weight, 7);
        assert_eq!(
            Edit::RemoveTarget(target("web", "10.0.0.5", Some(80))).apply_to(&model()).unwrap_err(),
            EditError::NotFound(
                "target 10.0.0.5:80 is not in target group 'web'; its targets: 10.0.1.10:3000, 10.0.1.11:3000".into()
            )
        );
        assert!(matches!(
            Edit::RemoveTarget(target("web", "10.0.1.10", Some(80))).apply_to(&model()),
            Err(EditError::NotFound(_))
        ));
        let ambiguous = Edit::RemoveTarget(target("ports", "10.0.2.10", None))
            .apply_to(&model())
            .unwrap_err();
        assert_eq!(
            ambiguous,
            EditError::Invalid(
                "target group 'ports' has 2 targets at 10.0.2.10 (10.0.2.10:1, 10.0.2.10:2); give the port".into()
            )
        );
        assert!(Edit::RemoveTarget(target("ports", "10.0.2.10", Some(2)))
            .apply_to(&model())
            .is_ok());
        assert!(matches!(
            Edit::SetWeight(target("web", "10.0.1.10", None), 0).apply_to(&model()),
            Err(EditError::Invalid(_))
        ));
    }

    #[test]
    fn adds_and_removes_listeners() {
        let next = Edit::AddListener(listener("api", "ports"))
            .apply_to(&model())
            .unwrap();
        assert_eq!(next.listeners.len(), 2);
        assert_eq!(
            Edit::AddListener(listener("web", "web"))
                .apply_to(&model())
                .unwrap_err(),
            EditError::Conflict("listener 'web' already exists; listeners: web".into())
        );
        assert!(matches!(
            Edit::AddListener(listener("api", "nope")).apply_to(&model()),
            Err(EditError::NotFound(m)) if m.contains("'nope'") && m.contains("web, ports")
        ));
        // Same address, port and protocol as `web`: the file's rule refuses it.
        let clash = Listener {
            address: "192.0.2.10".parse().unwrap(),
            ..listener("api", "web")
        };
        assert!(matches!(
            Edit::AddListener(clash).apply_to(&model()),
            Err(EditError::Invalid(m)) if m.contains("'web' and 'api'")
        ));
        let next = Edit::RemoveListener("web".into())
            .apply_to(&model())
            .unwrap();
        assert!(next.listeners.is_empty());
        assert_eq!(
            Edit::RemoveListener("nope".into())
                .apply_to(&model())
                .unwrap_err(),
            EditError::NotFound("listener 'nope' does not exist; listeners: web".into())
        );
    }

    #[test]
    fn parses_addresses_with_and_without_ports() {
        let ok = |text: &str| parse_target_address(text).unwrap();
        assert_eq!(ok("10.0.1.10"), ("10.0.1.10".parse().unwrap(), None));
        assert_eq!(
            ok("10.0.1.10:3000"),
            ("10.0.1.10".parse().unwrap(), Some(3000))
        );
        assert_eq!(ok("2001:db8::5"), ("2001:db8::5".parse().unwrap(), None));
        assert_eq!(
            ok("[2001:db8::5]:80"),
            ("2001:db8::5".parse().unwrap(), Some(80))
        );
        for bad in [
            "10.0.1",
            "10.0.1.10:",
            "10.0.1.10:70000",
            "web",
            "[2001:db8::5]",
            "",
        ] {
            let e = parse_target_address(bad).unwrap_err();
            assert!(e.contains("is not ADDRESS"), "{bad}: {e}");
        }
        assert!(parse_target_address("10.0.1.10:0")
            .unwrap_err()
            .contains("port 0"));
    }
}
