//! WebSocket through the proxy: the handshake reaches the target and its answer the client;
//! frames echo; the connection stays open past the idle timeout while heartbeats flow, and
//! is closed once it has been idle for it.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use super::l7_routing::{vip, IDLE_TIMEOUT_SECS, L7, SHORT};
use crate::http_servers::{assert_websocket_switched, frame, parse_frame};

fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let deadline = Instant::now() + SHORT;
    loop {
        if let Some((op, payload, used)) = parse_frame(buf) {
            buf.drain(..used);
            return Some((op, payload));
        }
        if Instant::now() > deadline {
            return None;
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
}

/// Opens a WebSocket to `/ws` through the proxy: the stream, bytes read past the handshake,
/// and the answering target's name.
fn open(l7: &L7) -> (TcpStream, Vec<u8>, String) {
    let mut stream = l7
        .topology
        .client
        .ns
        .run_in(|| TcpStream::connect_timeout(&vip(), SHORT))
        .unwrap();
    stream.set_read_timeout(Some(SHORT)).unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        stream,
        "GET /ws HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = stream.read(&mut chunk).expect("the handshake answer");
        assert!(
            n > 0,
            "closed during the handshake: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    buf.drain(..head_end);
    assert_websocket_switched(&head, key);
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    let target = head
        .split("x-target: ")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap()
        .to_string();
    (stream, buf, target)
}

fn beat(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    let payload = format!("beat {n}");
    if stream
        .write_all(&frame(1, payload.as_bytes(), Some([9, 8, 7, 6])))
        .is_err()
    {
        return false;
    }
    read_frame(stream, buf) == Some((1, payload.into_bytes()))
}

#[test]
fn websocket_passes_through_and_outlives_the_idle_timeout_with_heartbeats() {
    let l7 = L7::start();
    let (mut stream, mut buf, target) = open(&l7);

    // Heartbeats every 400 ms for three idle timeouts.
    let started = Instant::now();
    let mut beats = 0;
    let mut quiet = Instant::now();
    while started.elapsed() < Duration::from_secs(3 * IDLE_TIMEOUT_SECS) {
        std::thread::sleep(Duration::from_millis(400));
        let payload = format!("beat {beats}");
        stream
            .write_all(&frame(1, payload.as_bytes(), Some([9, 8, 7, 6])))
            .unwrap();
        let (op, echoed) = read_frame(&mut stream, &mut buf).expect("an echo");
        // The idle timeout counts from the last data either way.
        quiet = Instant::now();
        assert_eq!((op, echoed), (1, payload.into_bytes()), "beat {beats}");
        beats += 1;
    }
    assert!(beats >= 10, "{beats}");
    // Silence: closed after the idle timeout.
    let closed = read_frame(&mut stream, &mut buf).is_none();
    assert!(closed, "still open after silence");
    let took = quiet.elapsed();
    assert!(
        took >= Duration::from_secs(IDLE_TIMEOUT_SECS) - Duration::from_millis(100) && took < SHORT,
        "{took:?}"
    );
    assert!(target.starts_with("target"), "{target}");
}

#[test]
fn a_drained_targets_websocket_lasts_its_deregistration_delay_then_closes() {
    let l7 = L7::start();
    let (mut stream, mut buf, target) = open(&l7);
    let index: usize = target.trim_start_matches("target").parse().unwrap();
    let address = format!("{}:8080", l7.topology.targets[index].link.v4);
    let out = l7.cli(&["target", "remove", "www", &address]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed = Instant::now();
    // The group's deregistration_delay is 1 s; drains end on the daemon's 1 s tick.
    let mut beats = 0;
    while beat(&mut stream, &mut buf, beats) {
        beats += 1;
        assert!(
            removed.elapsed() < SHORT,
            "still open {:?} after deregistration",
            removed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lasted = removed.elapsed();
    assert!(
        lasted >= Duration::from_millis(900),
        "closed after {lasted:?}, before the delay ended"
    );
    assert!(
        l7.lb
            .sluice
            .stderr()
            .contains("closing an upgraded connection"),
        "{}",
        l7.lb.sluice.stderr()
    );
}
