//! Network interfaces by name.

use std::ffi::CString;

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
    let c_name = CString::new(name).map_err(|_| InterfaceError::InvalidName(name.to_string()))?;
    // SAFETY: c_name is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(InterfaceError::NotFound(name.to_string()));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists() {
        assert!(index("lo").unwrap() > 0);
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
