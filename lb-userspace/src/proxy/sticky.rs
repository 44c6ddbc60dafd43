//! Stickiness cookies. A cookie names a target of a target group and an expiry, and is
//! authenticated with HMAC-SHA256 under a key kept in a key file ([`super::cookie_keys`]), so
//! a restart keeps clients on their targets. So a client cannot forge a cookie that pins it to a
//! target of its choosing, and a stale one is refused; the caller then picks afresh and sets
//! a new cookie. A cookie naming a target that is no longer routable is the caller's check.

use std::{net::SocketAddr, time::Duration};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The lb_cookie cookie, as ALB's `AWSALB`.
pub const LB_COOKIE: &str = "SLUICE";
/// The same value with `SameSite=None; Secure`, set on https only, as ALB's `AWSALBCORS`:
/// browsers send it on cross-site requests (socket.io with `withCredentials`), which the
/// plain cookie, with browsers' default `SameSite=Lax`, would not be.
pub const LB_COOKIE_CORS: &str = "SLUICECORS";
/// The app_cookie tracking cookie, as ALB's `AWSALBAPP-0`.
pub const APP_COOKIE: &str = "SLUICEAPP";

const MAC_LEN: usize = 32;
const VERSION: &str = "1";

/// The key cookies are signed with.
#[derive(Clone)]
pub struct StickyKey([u8; 32]);

impl std::fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StickyKey(..)")
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StickyError {
    #[error("not a sluice stickiness cookie")]
    Malformed,
    #[error("signature does not match")]
    Forged,
    #[error("issued for another target group")]
    OtherGroup,
    #[error("expired")]
    Expired,
}

impl StickyKey {
    pub fn from_bytes(bytes: [u8; 32]) -> StickyKey {
        StickyKey(bytes)
    }

    /// The key itself, for the key file ([`super::cookie_keys`]).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A fresh key from the kernel's random source.
    pub fn random() -> std::io::Result<StickyKey> {
        let mut key = [0u8; 32];
        let mut filled = 0;
        while filled < key.len() {
            // SAFETY: the pointer and length describe the unfilled rest of `key`.
            let n = unsafe {
                libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else {
                filled += n as usize;
            }
        }
        Ok(StickyKey(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// A cookie value pinning to `target` of `group` until `expires` (seconds since the
    /// epoch): hex of `1|group|target|expires` followed by its MAC.
    pub fn sign(&self, group: &str, target: SocketAddr, expires: u64) -> String {
        let payload = format!("{VERSION}|{group}|{target}|{expires}");
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = String::with_capacity((payload.len() + MAC_LEN) * 2);
        for b in payload.as_bytes().iter().chain(tag.iter()) {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The target a cookie value pins to, if it is authentic, for `group`, and not expired
    /// at `now` (seconds since the epoch). The MAC is checked in constant time.
    pub fn verify(&self, value: &str, group: &str, now: u64) -> Result<SocketAddr, StickyError> {
        let bytes = hex_decode(value).ok_or(StickyError::Malformed)?;
        if bytes.len() <= MAC_LEN {
            return Err(StickyError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_slice(tag).map_err(|_| StickyError::Forged)?;
        let payload = std::str::from_utf8(payload).map_err(|_| StickyError::Malformed)?;
        // The group name may hold '|'; the version, target and expiry cannot.
        let (version, rest) = payload.split_once('|').ok_or(StickyError::Malformed)?;
        let (rest, expires) = rest.rsplit_once('|').ok_or(StickyError::Malformed)?;
        let (signed_group, target) = rest.rsplit_once('|').ok_or(StickyError::Malformed)?;
        if version != VERSION {
            return Err(StickyError::Malformed);
        }
        if signed_group != group {
            return Err(StickyError::OtherGroup);
        }
        let expires: u64 = expires.parse().map_err(|_| StickyError::Malformed)?;
        if expires <= now {
            return Err(StickyError::Expired);
        }
        target.parse().map_err(|_| StickyError::Malformed)
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

/// A `Set-Cookie` value. `cors` adds `SameSite=None; Secure` (https only: browsers refuse
/// `SameSite=None` without `Secure`, and `Secure` cookies over plain http).
pub fn set_cookie(name: &str, value: &str, max_age: Duration, cors: bool) -> String {
    let mut cookie = format!("{name}={value}; Max-Age={}; Path=/", max_age.as_secs());
    if cors {
        cookie.push_str("; SameSite=None; Secure");
    }
    cookie
}

/// The value of cookie `name` in a request's `Cookie` headers (the first, if repeated).
pub fn find_cookie<'a>(
    cookie_headers: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> Option<&'a str> {
    cookie_headers
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Whether a response's `Set-Cookie` sets cookie `name`.
pub fn sets_cookie<'a>(set_cookie_headers: impl IntoIterator<Item = &'a str>, name: &str) -> bool {
    set_cookie_headers.into_iter().any(|h| {
        h.split(';')
            .next()
            .and_then(|pair| pair.trim().split_once('='))
            .is_some_and(|(n, _)| n == name)
    })
}

/// Whether an app_cookie response carries a (new or refreshed) `SLUICEAPP` cookie naming the
/// target that served it: when the application set its cookie (a session starts or is renewed
/// there), and while the request carries the application's cookie. The latter refreshes the
/// expiry of a sticky session and, after a re-pin (the cookie named a target that no longer
/// takes requests, or none), makes the session stick to its new target, as ALB does, even if
/// the application does not set its cookie again and the old target comes back. Without the
/// application's cookie the session is over: nothing is set.
pub fn app_cookie_due(application_sets_cookie: bool, request_carries_cookie: bool) -> bool {
    application_sets_cookie || request_carries_cookie
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StickyKey {
        StickyKey::from_bytes([7; 32])
    }

    fn target() -> SocketAddr {
        "10.0.1.10:3000".parse().unwrap()
    }

    #[test]
    fn app_cookie_sessions_follow_the_application_cookie() {
        // The application starts a session: pinned.
        assert!(app_cookie_due(true, false));
        // A session goes on (sticky, or re-pinned after its target left): pinned again.
        assert!(app_cookie_due(false, true));
        // No application cookie either way: no session, nothing set.
        assert!(!app_cookie_due(false, false));
    }

    #[test]
    fn a_signed_cookie_verifies_until_it_expires() {
        let value = key().sign("web", target(), 1000);
        assert!(
            value.bytes().all(|b| b.is_ascii_hexdigit()),
            "cookie-safe: {value}"
        );
        assert_eq!(key().verify(&value, "web", 999), Ok(target()));
        assert_eq!(key().verify(&value, "web", 1000), Err(StickyError::Expired));
        assert_eq!(
            key().verify(&value, "api", 999),
            Err(StickyError::OtherGroup)
        );
        let v6: SocketAddr = "[fd00::10]:80".parse().unwrap();
        assert_eq!(key().verify(&key().sign("a|b", v6, 5), "a|b", 1), Ok(v6));
    }

    #[test]
    fn tampered_forged_and_foreign_cookies_are_refused() {
        let value = key().sign("web", target(), 1000);
        // Flip one hex digit anywhere: the payload or the MAC.
        for at in [0, 10, value.len() - 1] {
            let mut bytes = value.clone().into_bytes();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(
                key().verify(&tampered, "web", 1),
                Err(StickyError::Forged),
                "at {at}"
            );
        }
        // A cookie another daemon (another key) signed.
        let other = StickyKey::from_bytes([8; 32]).sign("web", target(), 1000);
        assert_eq!(key().verify(&other, "web", 1), Err(StickyError::Forged));
        for junk in ["", "zz", "abc", "00", &"00".repeat(40)] {
            assert!(key().verify(junk, "web", 1).is_err(), "{junk}");
        }
    }

    #[test]
    fn random_keys_differ() {
        let a = StickyKey::random().unwrap();
        let b = StickyKey::random().unwrap();
        assert_ne!(a.0, b.0);
    }

    #[test]
    fn cookies_are_found_and_set() {
        let headers = ["a=1; SLUICE=abc", "SLUICE=def; b=\"2\""];
        assert_eq!(find_cookie(headers, "SLUICE"), Some("abc"));
        assert_eq!(find_cookie(headers, "b"), Some("2"));
        assert_eq!(find_cookie(headers, "SLUICEC"), None);
        assert_eq!(
            set_cookie(LB_COOKIE, "v", Duration::from_secs(60), false),
            "SLUICE=v; Max-Age=60; Path=/"
        );
        assert_eq!(
            set_cookie(LB_COOKIE_CORS, "v", Duration::from_secs(60), true),
            "SLUICECORS=v; Max-Age=60; Path=/; SameSite=None; Secure"
        );
        assert!(sets_cookie(["SESSIONID=x; Path=/; HttpOnly"], "SESSIONID"));
        assert!(!sets_cookie(["OTHER=SESSIONID"], "SESSIONID"));
    }
}
