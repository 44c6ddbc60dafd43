//! `sluice listener add` for the L7 proxy: an https listener with its certificate added to a
//! running daemon serves TLS at once; what is missing or misplaced is refused with the fix;
//! one on an address the host does not hold is warned about.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::l7_support::{all_targets, fast_health_check, L7Sluice, VIP};
use crate::{
    http_servers::L7Server,
    netns::LbTopology,
    tls::{curl_https, CertDir, HttpVersion},
};

const TARGET_PORT: u16 = 8080;

#[test]
fn an_https_listener_added_with_its_certificate_serves_tls() {
    let topology = LbTopology::new(1);
    let target = &topology.targets[0];
    let _server = L7Server::start(
        &target.ns,
        SocketAddr::new(target.link.v4.into(), TARGET_PORT),
        "target0",
    );
    let model = format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"http\"\ndefault_target_group = \"www\"\n\n[[target_group]]\nname = \"www\"\nport = {TARGET_PORT}\ntargets = [{}]\n{}",
        all_targets(&topology),
        fast_health_check(TARGET_PORT)
    );
    let lb = L7Sluice::start(&topology, &model, 1);
    let certs = CertDir::new();
    let cert = certs.self_signed("www", &["www.example.com"]);
    let vip = VIP.to_string();
    let add = |extra: &[&str]| {
        let mut args = vec![
            "listener",
            "add",
            "secure",
            "--address",
            &vip,
            "--port",
            "8443",
            "--target-group",
            "www",
        ];
        args.extend_from_slice(extra);
        lb.cli(&args)
    };

    // https without a certificate: the model's own sentence.
    let out = add(&["--protocol", "https"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listener 'secure' (https) needs certificates"),
        "{stderr}"
    );
    // A certificate without its key.
    let cert_arg = cert.cert.to_str().unwrap();
    let key_arg = cert.key.to_str().unwrap();
    let out = add(&["--protocol", "https", "--cert", cert_arg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 --cert and 0 --key given"), "{stderr}");
    // An address with its port.
    let out = lb.cli(&[
        "listener",
        "add",
        "secure",
        "--address",
        &format!("{VIP}:8443"),
        "--port",
        "8443",
        "--protocol",
        "https",
        "--target-group",
        "www",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("has a port; use --address \"{VIP}\" --port 8443")),
        "{stderr}"
    );

    let out = add(&["--protocol", "https", "--cert", cert_arg, "--key", key_arg]);
    assert!(out.status.success(), "{out:?}");
    let answer = curl_https(
        &topology.client.ns,
        "www.example.com",
        SocketAddr::new(IpAddr::from(VIP), 8443),
        "/",
        &cert.cert,
        HttpVersion::Http2,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!((answer.status, answer.body.trim()), (200, "target0"));
    assert_eq!(answer.http_version, "2");

    // An http listener on an address the lb namespace does not hold is served (the proxy
    // binds it) but gets no traffic: the daemon says so.
    let out = lb.cli(&[
        "listener",
        "add",
        "elsewhere",
        "--address",
        "10.111.100.2",
        "--port",
        "80",
        "--protocol",
        "http",
        "--target-group",
        "www",
    ]);
    assert!(out.status.success(), "{out:?}");
    crate::netns::wait_until(Duration::from_secs(10), "the warning", || {
        lb.sluice.stderr().contains("listener 'elsewhere' (http) listens on 10.111.100.2, which no interface of this host holds")
    });
    assert!(
        !lb.sluice
            .stderr()
            .contains("listener 'secure' (https) listens on"),
        "{}",
        lb.sluice.stderr()
    );
    lb.check_running();
}
