//! Limits and failures end to end: a slow request head (slowloris) gets 408, oversized
//! headers 431, a malformed request line 400, none reaching a target; a target killed
//! mid-request gives 502 and the next request goes to another target.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use super::l7_routing::{L7, SHORT};
use crate::netns::wait_until;

/// Sends `bytes` on a new connection from the client and reads until the proxy closes.
fn exchange(l7: &L7, bytes: &[u8]) -> String {
    let mut stream = l7.connect();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn target_requests(l7: &L7) -> u64 {
    l7.servers
        .iter()
        .map(|(a, b)| a.requests() + b.requests())
        .sum()
}

#[test]
fn slow_oversized_and_malformed_heads_get_their_documented_answers() {
    let l7 = L7::start();
    // Slowloris: half a head, then nothing; the listener's header_read_timeout is 1 s.
    let started = Instant::now();
    let answer = exchange(&l7, b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Slow: 1");
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < SHORT,
        "{took:?}"
    );
    // max_header_bytes is 4096.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let answer = exchange(&l7, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    let answer = exchange(&l7, b"GET /not a request line\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    let answer = exchange(&l7, b"GET / HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "no Host: {answer:?}");
    assert_eq!(target_requests(&l7), 0, "none reached a target");
    // Each has its access log line, those hyper answered itself included.
    let client = l7.topology.client.link.v4;
    for (status, reason) in [
        (408, "RequestHeaderTimeout"),
        (431, "RequestHeaderTooLarge"),
        (400, "MalformedRequest"),
        (400, "MissingHost"),
    ] {
        wait_until(
            SHORT,
            &format!("the access log line of the {status}"),
            || {
                l7.lb.sluice.stderr().lines().any(|line| {
                    line.contains(&format!(" web {client}:"))
                        && line.contains(&format!(" {status} - "))
                        && line.ends_with(&format!("\"{reason}\""))
                })
            },
        );
    }
    let log = l7.lb.sluice.stderr();
    let refused = log
        .lines()
        .find(|l| l.ends_with("\"MalformedRequest\""))
        .unwrap();
    assert!(
        refused.contains(" -1 -1 -1 400 - 36 ") && refused.contains(" \"- - -\" \"-\" "),
        "received the 36 bytes sent, no request line: {refused}"
    );
    // sluice stats and status show the listener with the proxy's numbers: four 4XX answers,
    // one of them to a request (no Host), the others to heads that never became requests.
    let web = |report: &serde_json::Value| {
        report["http_listeners"]
            .as_array()
            .expect("http_listeners")
            .iter()
            .find(|l| l["name"] == "web")
            .cloned()
            .expect("the web listener")
    };
    wait_until(SHORT, "the closed connections to leave the count", || {
        let out = l7.cli(&["stats", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        web(&report)["active_connections"] == 0
    });
    let out = l7.cli(&["stats", "--json"]);
    let listener = web(&serde_json::from_slice(&out.stdout).unwrap());
    assert_eq!(
        (
            &listener["protocol"],
            &listener["requests"],
            &listener["new_connections"],
            &listener["elb_4xx"],
            &listener["elb_5xx"]
        ),
        (
            &serde_json::json!("http"),
            &serde_json::json!(1),
            &serde_json::json!(4),
            &serde_json::json!(4),
            &serde_json::json!(0)
        ),
        "{listener}"
    );
    let address = format!("{}:80/http", super::l7_routing::VIP);
    let out = l7.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec![
            "web",
            address.as_str(),
            "www",
            "0",
            "4",
            "1",
            "4",
            "0",
            "0",
            "0"
        ]),
        "{text}"
    );
}

#[test]
fn a_target_killed_mid_request_gives_502_and_the_next_request_goes_elsewhere() {
    let l7 = L7::start();
    let (status, _) = l7.get("www.example.com", "/die", &[]);
    assert_eq!(status, 502);
    let dead: Vec<usize> = (0..3).filter(|&i| l7.servers[i].0.dead()).collect();
    assert_eq!(dead.len(), 1, "one target died");
    let dead_name = format!("target{}", dead[0]);
    // Round robin would come back to the dead target: its refused connection is retried
    // on another target, so every request succeeds.
    for _ in 0..6 {
        let (status, body) = l7.get("www.example.com", "/", &[]);
        assert_eq!(status, 200);
        assert_ne!(body.trim(), dead_name);
    }
}

#[test]
fn a_hanging_target_gives_504_after_the_idle_timeout() {
    let l7 = L7::start();
    let started = Instant::now();
    let (status, _) = l7.get("www.example.com", "/hang", &[]);
    assert_eq!(status, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < SHORT,
        "{took:?}"
    );
}
