//! Stickiness cookies. A cookie holds pins, each a target group, a target of it and an
//! expiry, sealed with ChaCha20-Poly1305 (authenticated encryption) under a key kept in a key
//! file ([`super::cookie_keys`]), so a restart keeps clients on their targets. The value is
//! opaque: a client learns no address and no name from it, cannot forge one that pins it to
//! a target of its choosing, and a stale one is refused; the caller then picks afresh and sets
//! a new cookie. One cookie holds a pin per sticky target group the client was sent to (up to
//! [`MAX_PINS`]), so a rule that forwards to several sticky groups keeps the client on one
//! group ([`Pins::group_of`]) and on one target in each. A pin naming a target that is no
//! longer routable is the caller's check.
//!
//! Cookies of the previous format (hex of `1|group|target|expiry` and its HMAC-SHA256) are
//! still accepted until they expire, so an upgrade keeps its clients; responses carry the
//! sealed format.

use std::{net::SocketAddr, time::Duration};

use hmac::{Hmac, Mac};
use ring::aead;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The lb_cookie cookie, as ALB's `AWSALB`.
pub const LB_COOKIE: &str = "SLUICE";
/// The same value with `SameSite=None; Secure`, set on https only, as ALB's `AWSALBCORS`:
/// browsers send it on cross-site requests (socket.io with `withCredentials`), which the
/// plain cookie, with browsers' default `SameSite=Lax`, would not be.
pub const LB_COOKIE_CORS: &str = "SLUICECORS";
/// The app_cookie tracking cookie, as ALB's `AWSALBAPP-0`.
pub const APP_COOKIE: &str = "SLUICEAPP";

/// Pins one cookie holds at most; a new pin pushes out the oldest.
pub const MAX_PINS: usize = 8;

const MAC_LEN: usize = 32;
const LEGACY_VERSION: &str = "1";
/// The first byte of a sealed cookie (a legacy one starts with `'1'`, 0x31).
const SEALED_VERSION: u8 = 2;
/// Binds the sealed bytes to their use.
const AAD: &[u8] = b"sluice stickiness cookie v2";

/// One target group's sticky target, until `expires` (seconds since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub group: String,
    pub target: SocketAddr,
    pub expires: u64,
}

/// The pins of one cookie, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins(pub Vec<Pin>);

impl Pins {
    /// The target `group` is pinned to.
    pub fn target(&self, group: &str) -> Option<SocketAddr> {
        self.0.iter().find(|p| p.group == group).map(|p| p.target)
    }

    /// The first of `groups` the cookie pins.
    pub fn group_of<'a>(&self, groups: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        groups
            .into_iter()
            .find(|g| self.0.iter().any(|p| p.group == *g))
    }

    /// These pins with `pin` for its group instead of any before, newest last, at most
    /// [`MAX_PINS`].
    pub fn with(&self, pin: Pin) -> Pins {
        let mut pins: Vec<Pin> = self
            .0
            .iter()
            .filter(|p| p.group != pin.group)
            .cloned()
            .collect();
        pins.push(pin);
        let excess = pins.len().saturating_sub(MAX_PINS);
        Pins(pins.split_off(excess))
    }

    fn unexpired(self, now: u64) -> Pins {
        Pins(self.0.into_iter().filter(|p| p.expires > now).collect())
    }
}

/// The key cookies are sealed with.
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
    #[error("not sealed with this key (forged, altered, or another daemon's)")]
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
        fill_random(&mut key)?;
        Ok(StickyKey(key))
    }

    fn aead(&self) -> aead::LessSafeKey {
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &self.0)
            .expect("ChaCha20-Poly1305 takes 32-byte keys");
        aead::LessSafeKey::new(key)
    }

    /// A cookie value holding `pins`: hex of the version, a random nonce, and the sealed
    /// pins with their tag.
    pub fn seal(&self, pins: &Pins) -> String {
        let mut nonce = [0u8; aead::NONCE_LEN];
        // The kernel's random source does not fail once it is initialised (it was, for the
        // key); a zero nonce would still leave the cookie sealed.
        let _ = fill_random(&mut nonce);
        let mut sealed = serde_json::to_vec(&pins.0).expect("pins serialize");
        self.aead()
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(AAD),
                &mut sealed,
            )
            .expect("a cookie is far below ChaCha20-Poly1305's limit");
        let mut cookie = Vec::with_capacity(1 + nonce.len() + sealed.len());
        cookie.push(SEALED_VERSION);
        cookie.extend_from_slice(&nonce);
        cookie.extend_from_slice(&sealed);
        hex::encode(cookie)
    }

    /// A cookie value with one pin: `target` of `group` until `expires`.
    pub fn sign(&self, group: &str, target: SocketAddr, expires: u64) -> String {
        self.seal(&Pins(vec![Pin {
            group: group.to_string(),
            target,
            expires,
        }]))
    }

    /// The unexpired pins of a cookie value, if this key sealed it (or signed it in the
    /// previous format).
    pub fn open(&self, value: &str, now: u64) -> Result<Pins, StickyError> {
        let bytes = hex::decode(value).map_err(|_| StickyError::Malformed)?;
        let pins = match bytes.split_first() {
            Some((&SEALED_VERSION, rest)) => self.open_sealed(rest)?,
            Some((b'1', _)) => self.open_legacy(&bytes)?,
            _ => return Err(StickyError::Malformed),
        };
        Ok(pins.unexpired(now))
    }

    fn open_sealed(&self, bytes: &[u8]) -> Result<Pins, StickyError> {
        if bytes.len() < aead::NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() {
            return Err(StickyError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(aead::NONCE_LEN);
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| StickyError::Malformed)?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, aead::Aad::from(AAD), &mut sealed)
            .map_err(|_| StickyError::Forged)?;
        serde_json::from_slice(plain)
            .map(Pins)
            .map_err(|_| StickyError::Malformed)
    }

    /// The previous format: hex of `1|group|target|expires` followed by its HMAC-SHA256,
    /// checked in constant time.
    fn open_legacy(&self, bytes: &[u8]) -> Result<Pins, StickyError> {
        if bytes.len() <= MAC_LEN {
            return Err(StickyError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(payload);
        mac.verify_slice(tag).map_err(|_| StickyError::Forged)?;
        let payload = std::str::from_utf8(payload).map_err(|_| StickyError::Malformed)?;
        // The group name may hold '|'; the version, target and expiry cannot.
        let (version, rest) = payload.split_once('|').ok_or(StickyError::Malformed)?;
        let (rest, expires) = rest.rsplit_once('|').ok_or(StickyError::Malformed)?;
        let (group, target) = rest.rsplit_once('|').ok_or(StickyError::Malformed)?;
        if version != LEGACY_VERSION {
            return Err(StickyError::Malformed);
        }
        Ok(Pins(vec![Pin {
            group: group.to_string(),
            target: target.parse().map_err(|_| StickyError::Malformed)?,
            expires: expires.parse().map_err(|_| StickyError::Malformed)?,
        }]))
    }

    /// The target a cookie value pins `group` to, if this key sealed it, it has a pin for
    /// `group`, and that has not expired at `now` (seconds since the epoch).
    pub fn verify(&self, value: &str, group: &str, now: u64) -> Result<SocketAddr, StickyError> {
        let all = self.open(value, 0)?;
        let pin = all
            .0
            .iter()
            .find(|p| p.group == group)
            .ok_or(StickyError::OtherGroup)?;
        if pin.expires <= now {
            return Err(StickyError::Expired);
        }
        Ok(pin.target)
    }
}

/// Fills `bytes` from the kernel's random source (ring's `SystemRandom`: getrandom(2)).
fn fill_random(bytes: &mut [u8]) -> std::io::Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(bytes)
        .map_err(|_| std::io::Error::other("the kernel's random source failed"))
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

    /// A cookie in the previous format (hex of `1|group|target|expires` and its HMAC).
    fn legacy(key: &StickyKey, group: &str, target: SocketAddr, expires: u64) -> String {
        let payload = format!("1|{group}|{target}|{expires}");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).unwrap();
        mac.update(payload.as_bytes());
        let tag = mac.finalize().into_bytes();
        payload
            .as_bytes()
            .iter()
            .chain(tag.iter())
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_sealed_cookie_reveals_no_group_and_no_target() {
        let value = key().sign("canary-group", target(), 1000);
        let bytes = hex::decode(&value).unwrap();
        for secret in [&b"canary-group"[..], b"10.0.1.10", b"3000", &[10, 0, 1, 10]] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{secret:?} in {value}"
            );
        }
        assert_ne!(
            value,
            key().sign("canary-group", target(), 1000),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn legacy_cookies_still_verify() {
        let value = legacy(&key(), "web", target(), 1000);
        assert_eq!(key().verify(&value, "web", 999), Ok(target()));
        assert_eq!(key().verify(&value, "web", 1000), Err(StickyError::Expired));
        let other = legacy(&StickyKey::from_bytes([8; 32]), "web", target(), 1000);
        assert_eq!(key().verify(&other, "web", 1), Err(StickyError::Forged));
    }

    #[test]
    fn one_cookie_pins_several_groups() {
        let other: SocketAddr = "10.0.2.20:80".parse().unwrap();
        let pins = Pins::default()
            .with(Pin {
                group: "blue".into(),
                target: target(),
                expires: 1000,
            })
            .with(Pin {
                group: "green".into(),
                target: other,
                expires: 500,
            });
        let value = key().seal(&pins);
        assert_eq!(key().verify(&value, "blue", 1), Ok(target()));
        assert_eq!(key().verify(&value, "green", 1), Ok(other));
        assert_eq!(
            key().verify(&value, "green", 500),
            Err(StickyError::Expired)
        );
        assert_eq!(key().verify(&value, "red", 1), Err(StickyError::OtherGroup));
        let opened = key().open(&value, 600).unwrap();
        assert_eq!(opened.target("blue"), Some(target()));
        assert_eq!(opened.target("green"), None, "expired pins are dropped");
        assert_eq!(opened.group_of(["red", "blue"]), Some("blue"));
        // A group pinned again replaces its pin; at most MAX_PINS, the oldest go.
        let mut many = pins.with(Pin {
            group: "blue".into(),
            target: other,
            expires: 9,
        });
        assert_eq!(many.target("blue"), Some(other));
        assert_eq!(many.0.len(), 2);
        for i in 0..MAX_PINS {
            many = many.with(Pin {
                group: format!("g{i}"),
                target: other,
                expires: 9,
            });
        }
        assert_eq!(many.0.len(), MAX_PINS);
        assert_eq!(many.target("green"), None);
        assert_eq!(many.target(&format!("g{}", MAX_PINS - 1)), Some(other));
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
        // Flip one hex digit anywhere after the version: the nonce, the sealed pins, the tag.
        for at in [2, 10, 40, value.len() - 1] {
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
