//! Addresses as people write them: a listener's IP address (with a hint when a port or a name
//! is given instead), a target's IP address or host name, with the port inline if wanted
//! (`app1:8080`, as in an nginx `upstream` block or a compose file).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer};

use super::Target;

/// A target as the file gives it, before its address is understood (and as the model is
/// written back).
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetSpec {
    address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A target's address: where it is, or the name to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetAddress {
    Ip(IpAddr),
    Host(String),
}

impl From<Target> for TargetSpec {
    fn from(target: Target) -> TargetSpec {
        TargetSpec {
            address: target.host.unwrap_or_else(|| target.address.to_string()),
            port: target.port,
            weight: target.weight,
        }
    }
}

impl TryFrom<TargetSpec> for Target {
    type Error = String;

    fn try_from(spec: TargetSpec) -> Result<Target, String> {
        let (address, inline_port) = parse_target_address(&spec.address)?;
        let port = match (inline_port, spec.port) {
            (Some(inline), Some(port)) if inline != port => {
                return Err(format!(
                    "target address '{}' names port {inline} but port = {port}; give the port once",
                    spec.address
                ))
            }
            (inline, port) => port.or(inline),
        };
        Ok(match address {
            TargetAddress::Ip(ip) => Target::at(ip, port, spec.weight),
            // Unspecified until resolved: `Model::parse_with` resolves every host before it
            // validates, and validation refuses an unspecified address.
            TargetAddress::Host(host) => Target {
                address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                host: Some(host),
                port,
                weight: spec.weight,
            },
        })
    }
}

/// `10.0.0.5`, `fd00::5`, `10.0.0.5:8080`, `[fd00::5]:8080`, `app1`, `app1:8080`.
pub fn parse_target_address(text: &str) -> Result<(TargetAddress, Option<u16>), String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((TargetAddress::Ip(ip), None));
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Ok((TargetAddress::Ip(socket.ip()), Some(socket.port())));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("target address '{text}': '{port}' is not a port (1 to 65535)")
                })?;
            (host, Some(port))
        }
        None => (text, None),
    };
    check_host_name(host).map_err(|why| format!("target address '{text}': {why}"))?;
    Ok((TargetAddress::Host(host.to_ascii_lowercase()), port))
}

/// A name a resolver can be asked for (RFC 1123 labels; `_` allowed, as compose service
/// names may have it).
fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("an IP address or a host name is needed".into());
    }
    if host.len() > 253 {
        return Err("a host name has at most 253 characters".into());
    }
    for label in host.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "'{host}' is neither an IP address nor a host name (labels of 1 to 63 characters between dots)"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "'{host}' is neither an IP address nor a host name ('{c}' is not allowed in a name)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "'{host}' is neither an IP address nor a host name (a label cannot start or end with '-')"
            ));
        }
    }
    if host
        .trim_end_matches('.')
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("'{host}' is not a valid IP address"));
    }
    Ok(())
}

/// A listener's address: an IP address, with a hint for what people write instead.
pub(super) fn listener_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listener_address(&text).map_err(serde::de::Error::custom)
}

pub fn parse_listener_address(text: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Err(format!(
            "listener address '{text}' has a port; write address = \"{}\" and port = {}",
            socket.ip(),
            socket.port()
        ));
    }
    if let Some((ip, port)) = text.rsplit_once(':') {
        if ip.is_empty() || ip == "*" {
            return Err(format!(
                "listener address '{text}' is not an IP address; for every address of the host write address = \"0.0.0.0\" (http/https listeners) and port = {port}"
            ));
        }
    }
    Err(format!(
        "listener address '{text}' is not an IP address; a listener takes the IP address clients connect to (its name is not resolved), and its port goes in port"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn targets_are_addresses_or_names_with_an_optional_port() {
        let host = |h: &str| TargetAddress::Host(h.into());
        for (text, address, port) in [
            ("10.0.0.5", TargetAddress::Ip(ip("10.0.0.5")), None),
            ("fd00::5", TargetAddress::Ip(ip("fd00::5")), None),
            (
                "10.0.0.5:8080",
                TargetAddress::Ip(ip("10.0.0.5")),
                Some(8080),
            ),
            (
                "[fd00::5]:8080",
                TargetAddress::Ip(ip("fd00::5")),
                Some(8080),
            ),
            ("app1", host("app1"), None),
            ("App_1:8080", host("app_1"), Some(8080)),
            ("api.internal.example.", host("api.internal.example."), None),
        ] {
            assert_eq!(parse_target_address(text), Ok((address, port)), "{text}");
        }
    }

    #[test]
    fn what_is_neither_an_address_nor_a_name_is_refused_with_the_reason() {
        for (text, why) in [
            ("", "an IP address or a host name is needed"),
            ("app1:http", "'http' is not a port"),
            ("app1:0", "'0' is not a port"),
            ("app 1", "' ' is not allowed"),
            ("-app", "cannot start or end with '-'"),
            ("a..b", "labels of 1 to 63"),
            ("10.0.0.256", "not a valid IP address"),
            ("http://app1", "'//app1' is not a port"),
        ] {
            let e = parse_target_address(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn a_listener_address_with_a_port_says_where_the_port_goes() {
        assert_eq!(parse_listener_address("0.0.0.0"), Ok(ip("0.0.0.0")));
        assert_eq!(
            parse_listener_address("10.0.0.1:80").unwrap_err(),
            "listener address '10.0.0.1:80' has a port; write address = \"10.0.0.1\" and port = 80"
        );
        assert!(parse_listener_address("[::1]:443")
            .unwrap_err()
            .contains("write address = \"::1\" and port = 443"));
        assert!(parse_listener_address(":80")
            .unwrap_err()
            .contains("address = \"0.0.0.0\""));
        assert!(parse_listener_address("lb.example.com")
            .unwrap_err()
            .contains("its name is not resolved"));
    }
}
