//! Cookie stickiness end to end. Group `sticky`, lb_cookie: a client with a cookie jar stays
//! on one target; clients without cookies spread; a rule forwarding 50/50 to two sticky
//! groups keeps a client on one group and target, with a cookie that names neither; a tampered cookie gets a valid target and a
//! new cookie; a cookie naming a drained or unhealthy target is re-pinned. Group `app`,
//! app_cookie (`SESSIONID`, set by the targets' `/login`): the same, following the
//! application's session.

use super::l7_routing::{L7, SHORT, VIP};
use crate::{http_servers::APP_COOKIE, netns::wait_until};

const HOST: &str = "sticky.example.com";

/// GET / with `cookie` (a `Cookie:` value, or none): the target's name and the value of the
/// `SLUICE` cookie set on the response.
fn get(l7: &L7, cookie: Option<&str>) -> (String, Option<String>) {
    let mut args = vec!["-i".to_string(), "-H".into(), format!("Host: {HOST}")];
    if let Some(cookie) = cookie {
        args.extend(["-H".into(), format!("Cookie: {cookie}")]);
    }
    args.push(format!("http://{VIP}/"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = l7.curl(&refs);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let set = text
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: SLUICE="))
        .map(|v| v.split(';').next().unwrap().to_string())
        .next();
    let body = text.rsplit("\r\n\r\n").next().unwrap().trim().to_string();
    (body, set)
}

#[test]
fn a_cookie_jar_pins_one_target_and_cookieless_requests_spread() {
    let l7 = L7::start();
    let jar = std::env::temp_dir().join(format!("{}.jar", l7.topology.lb.name()));
    let jar_arg = jar.to_str().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let (status, body) = l7.get(HOST, "/", &["-b", jar_arg, "-c", jar_arg]);
        assert_eq!(status, 200);
        seen.insert(body);
    }
    let _ = std::fs::remove_file(&jar);
    assert_eq!(seen.len(), 1, "100 requests with one cookie jar: {seen:?}");
    let spread: std::collections::BTreeSet<String> = (0..9).map(|_| get(&l7, None).0).collect();
    assert_eq!(spread.len(), 3, "without cookies: {spread:?}");
}

/// The `SLUICE` cookie's value in a curl cookie jar.
fn jar_cookie(jar: &std::path::Path) -> String {
    let text = std::fs::read_to_string(jar).unwrap();
    text.lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            (fields.len() == 7 && fields[5] == "SLUICE").then(|| fields[6].to_string())
        })
        .unwrap_or_else(|| panic!("no SLUICE cookie in the jar:\n{text}"))
}

#[test]
fn a_weighted_forward_to_two_sticky_groups_keeps_a_client_on_one_group_and_target() {
    // canary.example.com: 50/50 to `sticky` (targets answer `target<i>`) and `canary`
    // (targets answer `api<i>`), both lb_cookie.
    let l7 = L7::start();
    let cookieless: std::collections::BTreeSet<String> = (0..20)
        .map(|_| l7.get("canary.example.com", "/", &[]).1)
        .map(|body| body.trim().trim_end_matches(char::is_numeric).to_string())
        .collect();
    assert_eq!(
        cookieless.len(),
        2,
        "without cookies both groups: {cookieless:?}"
    );
    for client in 0..3 {
        let jar = std::env::temp_dir().join(format!("{}.{client}.jar", l7.topology.lb.name()));
        let jar_arg = jar.to_str().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let (status, body) = l7.get("canary.example.com", "/", &["-b", jar_arg, "-c", jar_arg]);
            assert_eq!(status, 200);
            seen.insert(body);
        }
        let cookie = jar_cookie(&jar);
        let _ = std::fs::remove_file(&jar);
        assert_eq!(
            seen.len(),
            1,
            "client {client}, 100 requests with one cookie jar: {seen:?}"
        );
        // The cookie is opaque: neither it nor its bytes name a group, a target or a port.
        let bytes: Vec<u8> = (0..cookie.len() / 2)
            .map(|i| u8::from_str_radix(&cookie[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let mut secrets: Vec<Vec<u8>> = ["sticky", "canary", "8080", "8081"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        for target in &l7.topology.targets {
            secrets.push(target.link.v4.to_string().into_bytes());
            secrets.push(target.link.v4.octets().to_vec());
        }
        for secret in &secrets {
            let found = |hay: &[u8]| hay.windows(secret.len()).any(|w| w == secret.as_slice());
            // Hex digits alone turn up in any long hex text by chance; names and dotted
            // addresses cannot.
            let in_text = !secret.iter().all(u8::is_ascii_hexdigit) && found(cookie.as_bytes());
            assert!(
                !found(&bytes) && !in_text,
                "{:?} readable in {cookie}",
                String::from_utf8_lossy(secret)
            );
        }
    }
}

#[test]
fn tampered_cookies_get_a_valid_target_and_a_new_cookie() {
    let l7 = L7::start();
    let (target, cookie) = get(&l7, None);
    let cookie = cookie.expect("the first response sets SLUICE");
    let (again, refreshed) = get(&l7, Some(&format!("SLUICE={cookie}")));
    assert_eq!(again, target);
    assert!(
        refreshed.is_some(),
        "the expiry is refreshed on every response"
    );
    // Flip a digit of the signed target address: the MAC no longer matches.
    let mut bytes = cookie.clone().into_bytes();
    bytes[8] = if bytes[8] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(bytes).unwrap();
    for forged in [tampered.as_str(), "garbage", ""] {
        let (body, new) = get(&l7, Some(&format!("SLUICE={forged}")));
        assert!(body.starts_with("target"), "{body}");
        let new = new.expect("a new cookie");
        assert_ne!(new, forged);
        // The new cookie pins where the request went.
        assert_eq!(get(&l7, Some(&format!("SLUICE={new}"))).0, body);
    }
}

#[test]
fn cookies_naming_drained_or_unhealthy_targets_are_re_pinned() {
    let l7 = L7::start();
    // Pin a client to each target.
    let mut pinned = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let (target, cookie) = get(&l7, None);
        pinned.entry(target).or_insert(cookie.unwrap());
        if pinned.len() == 3 {
            break;
        }
    }
    assert_eq!(pinned.len(), 3);
    // target1 fails its health checks (every group checks /health on it).
    l7.servers[1].0.set_healthy(false);
    wait_until(SHORT * 2, "target1 unhealthy in 'sticky'", || {
        l7.lb.sluice.stderr().contains(&format!(
            "target {}:8080 of 'sticky': healthy -> unhealthy",
            l7.topology.targets[1].link.v4
        ))
    });
    let (body, new) = get(&l7, Some(&format!("SLUICE={}", pinned["target1"])));
    assert_ne!(body, "target1", "re-pinned away from the unhealthy target");
    assert_eq!(get(&l7, Some(&format!("SLUICE={}", new.unwrap()))).0, body);
    // target2 is deregistered (drained): its cookie is re-pinned at once.
    let target2 = format!("{}:8080", l7.topology.targets[2].link.v4);
    let out = l7.cli(&["target", "remove", "sticky", &target2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, _) = get(&l7, Some(&format!("SLUICE={}", pinned["target2"])));
    assert_eq!(body, "target0", "the only routable target left");
    // target0's clients are undisturbed.
    assert_eq!(
        get(&l7, Some(&format!("SLUICE={}", pinned["target0"]))).0,
        "target0"
    );
}

const APP_HOST: &str = "app.example.com";

/// GET `path` on the app_cookie group with `cookie` (a `Cookie:` value, or none): the
/// target's name, and the values of the `SESSIONID` and `SLUICEAPP` cookies set on the
/// response.
fn get_app(l7: &L7, path: &str, cookie: Option<&str>) -> (String, Option<String>, Option<String>) {
    let mut args = vec!["-i".to_string(), "-H".into(), format!("Host: {APP_HOST}")];
    if let Some(cookie) = cookie {
        args.extend(["-H".into(), format!("Cookie: {cookie}")]);
    }
    args.push(format!("http://{VIP}{path}"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = l7.curl(&refs);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let set = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("set-cookie: {name}=")))
            .map(|v| v.split(';').next().unwrap().to_string())
            .next()
    };
    let body = text.rsplit("\r\n\r\n").next().unwrap().trim().to_string();
    (body, set(APP_COOKIE), set("SLUICEAPP"))
}

/// A client's session: `SESSIONID` from the application, `SLUICEAPP` from sluice.
fn session(app: &str, sluice: &str) -> String {
    format!("{APP_COOKIE}={app}; SLUICEAPP={sluice}")
}

#[test]
fn app_cookie_sessions_stick_to_the_target_that_set_the_cookie_and_are_re_pinned() {
    let l7 = L7::start();
    // Each target starts a session: the application's cookie, and sluice's beside it.
    let mut sessions = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let (target, app, pin) = get_app(&l7, "/login", None);
        let app = app.expect("the application sets its cookie on /login");
        let pin = pin.expect("sluice pins a session the application starts");
        sessions.entry(target).or_insert(session(&app, &pin));
        if sessions.len() == 3 {
            break;
        }
    }
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    // Requests carrying both cookies stay on the session's target.
    for (target, cookie) in &sessions {
        for _ in 0..10 {
            let (body, _, refreshed) = get_app(&l7, "/", Some(cookie));
            assert_eq!(&body, target, "{cookie}");
            assert!(
                refreshed.is_some(),
                "a sticky session's expiry is refreshed"
            );
        }
    }
    // Without the application's cookie there is no session: requests spread and no
    // SLUICEAPP is set, even with a valid one.
    let pin_only = sessions["target0"].split("; ").nth(1).unwrap().to_string();
    let spread: std::collections::BTreeSet<String> = (0..9)
        .map(|_| {
            let (body, _, set) = get_app(&l7, "/", Some(&pin_only));
            assert_eq!(set, None, "no session, nothing pinned");
            body
        })
        .collect();
    assert_eq!(spread.len(), 3, "{spread:?}");
    // A forged SLUICEAPP with the application's cookie: a fresh pick, pinned there.
    let (body, _, pin) = get_app(&l7, "/", Some(&session("x", "00ff")));
    let pin = pin.expect("a re-pinned session gets a new SLUICEAPP");
    assert_eq!(get_app(&l7, "/", Some(&session("x", &pin))).0, body);

    // target1 fails its health checks: its session moves, and stays where it moved even
    // though the application sets no new cookie there, and after target1 comes back (ALB).
    l7.servers[1].0.set_healthy(false);
    wait_until(SHORT * 2, "target1 unhealthy in 'app'", || {
        l7.lb.sluice.stderr().contains(&format!(
            "target {}:8080 of 'app': healthy -> unhealthy",
            l7.topology.targets[1].link.v4
        ))
    });
    let app1 = sessions["target1"].split("; ").next().unwrap().to_string();
    let (moved_to, _, pin) = get_app(&l7, "/", Some(&sessions["target1"]));
    assert_ne!(
        moved_to, "target1",
        "re-pinned away from the unhealthy target"
    );
    let pin = pin.expect("the re-pinned session gets a new SLUICEAPP");
    let moved = format!("{app1}; SLUICEAPP={pin}");
    for _ in 0..5 {
        assert_eq!(get_app(&l7, "/", Some(&moved)).0, moved_to);
    }
    l7.servers[1].0.set_healthy(true);
    wait_until(SHORT * 2, "target1 healthy again in 'app'", || {
        l7.lb.sluice.stderr().contains(&format!(
            "target {}:8080 of 'app': unhealthy -> healthy",
            l7.topology.targets[1].link.v4
        ))
    });
    assert_eq!(get_app(&l7, "/", Some(&moved)).0, moved_to);

    // target2 is deregistered (drained): its session is re-pinned at once.
    let target2 = format!("{}:8080", l7.topology.targets[2].link.v4);
    let out = l7.cli(&["target", "remove", "app", &target2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, _, pin) = get_app(&l7, "/", Some(&sessions["target2"]));
    assert_ne!(body, "target2", "re-pinned away from the drained target");
    let app2 = sessions["target2"].split("; ").next().unwrap().to_string();
    let repinned = format!("{app2}; SLUICEAPP={}", pin.unwrap());
    for _ in 0..5 {
        assert_eq!(get_app(&l7, "/", Some(&repinned)).0, body);
    }
    // target0's session is undisturbed.
    assert_eq!(get_app(&l7, "/", Some(&sessions["target0"])).0, "target0");
}

#[test]
fn a_cookie_keeps_its_target_across_a_restart_and_one_key_rotation() {
    let mut l7 = L7::start();
    // A cookie pinned to each target.
    let mut pinned = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let (target, cookie) = get(&l7, None);
        pinned
            .entry(target)
            .or_insert(cookie.expect("a new client gets a cookie"));
        if pinned.len() == 3 {
            break;
        }
    }
    assert_eq!(pinned.len(), 3, "{pinned:?}");
    // The key file is root's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&l7.lb.keys).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Restart: the next daemon reads the same key file, so every cookie keeps its target.
    let status = l7.lb.sluice.stop(libc::SIGTERM, super::namespaces::TIMEOUT);
    assert!(status.success(), "{}", l7.lb.sluice.stderr());
    l7.lb.sluice = l7
        .lb
        .spawn_next(&l7.topology, &crate::netns::sluice_binary(), &[]);
    l7.lb.wait_forwarding(&l7.topology, 80, "target");
    for (target, cookie) in &pinned {
        for _ in 0..5 {
            assert_eq!(&get(&l7, Some(&format!("SLUICE={cookie}"))).0, target);
        }
    }

    // A rotation: old cookies still pin (and are re-signed with the new key); after a second
    // rotation, cookies of the first key are refused (the client is pinned afresh), those of
    // the second still pin.
    let rotate = || {
        let keys = l7.lb.keys.to_str().unwrap().to_string();
        let out = std::process::Command::new(crate::netns::sluice_binary())
            .args(["stickiness", "rotate-key", "--key-file", &keys])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = l7.lb.cli(&["reload"]);
        assert!(out.status.success(), "{out:?}");
    };
    rotate();
    let mut resigned = std::collections::BTreeMap::new();
    for (target, cookie) in &pinned {
        let (now, new) = get(&l7, Some(&format!("SLUICE={cookie}")));
        assert_eq!(&now, target);
        let new = new.expect("refreshed");
        assert_ne!(&new, cookie, "signed with the new key");
        resigned.insert(target.clone(), new);
    }
    rotate();
    for (target, cookie) in &resigned {
        assert_eq!(&get(&l7, Some(&format!("SLUICE={cookie}"))).0, target);
    }
    let (_, cookie) = pinned.iter().next().unwrap();
    let (target, new) = get(&l7, Some(&format!("SLUICE={cookie}")));
    let new = new.expect("a new cookie");
    assert_ne!(&new, cookie);
    assert_eq!(get(&l7, Some(&format!("SLUICE={new}"))).0, target);
}
