//! Network interfaces by name, and the addresses they hold.

use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("interface '{0}' does not exist in this network namespace (see `ip link`)")]
    NotFound(String),
    #[error("'{0}' is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)")]
    InvalidName(String),
}

/// Resolves an interface name to its index in the current network namespace.
pub fn index(name: &str) -> Result<u32, InterfaceError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ':', '\0'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(InterfaceError::InvalidName(name.to_string()));
    }
    nix::net::if_::if_nametoindex(name).map_err(|_| InterfaceError::NotFound(name.to_string()))
}

/// Every address an interface of this network namespace holds.
pub fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    let addresses = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addresses
        .filter_map(|a| {
            let address = a.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists() {
        assert!(index("lo").unwrap() > 0);
    }

    #[test]
    fn the_host_holds_loopback() {
        let held = host_addresses().unwrap();
        assert!(held.contains(&IpAddr::from([127, 0, 0, 1])), "{held:?}");
    }

    #[test]
    fn missing_interface_is_named() {
        let err = index("nosuchif0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface 'nosuchif0' does not exist in this network namespace (see `ip link`)"
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        for bad in ["", "a/b", "has space", "sixteen-chars-xx"] {
            assert!(
                matches!(index(bad), Err(InterfaceError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }
}
