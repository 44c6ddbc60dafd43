//! WebSocket through an http listener (issue 5): the upgrade passes through, the connection
//! stays on its target, and it stays open while otherwise idle past the listener's idle
//! timeout as long as heartbeats flow; a silent one is closed after the idle timeout.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::l7_support::{all_targets, fast_health_check, L7Sluice, VIP};
use crate::{
    netns::{require_root, LbTopology},
    servers::HttpServer,
    websocket::{WebSocketClient, WebSocketServer},
};

const LISTENER_PORT: u16 = 80;
const WS_PORT: u16 = 3000;
/// A plain HTTP server on every target, to see when the listener forwards.
const HTTP_PORT: u16 = 3080;
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

fn model(topology: &LbTopology) -> String {
    let idle = IDLE_TIMEOUT.as_secs();
    let targets = all_targets(topology);
    format!(
        "[[listener]]\nname = \"ws\"\naddress = \"{VIP}\"\nport = {LISTENER_PORT}\nprotocol = \"http\"\ndefault_target_group = \"ws\"\nidle_timeout = {idle}\n\n\
         [[listener]]\nname = \"plain\"\naddress = \"{VIP}\"\nport = 8080\nprotocol = \"http\"\ndefault_target_group = \"plain\"\n\n\
         [[target_group]]\nname = \"ws\"\nport = {WS_PORT}\n{}targets = [{targets}]\n\n\
         [[target_group]]\nname = \"plain\"\nport = {HTTP_PORT}\n{}targets = [{targets}]\n",
        fast_health_check(WS_PORT),
        fast_health_check(HTTP_PORT),
    )
}

#[test]
#[ignore = "needs the L7 proxy (merged by the lead)"]
fn websocket_stays_open_past_the_idle_timeout_while_heartbeats_flow() {
    require_root();
    let topology = LbTopology::new(2);
    let _servers: Vec<(WebSocketServer, HttpServer)> = topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = format!("target{i}");
            let ip = IpAddr::from(t.link.v4);
            (
                WebSocketServer::start(&t.ns, SocketAddr::new(ip, WS_PORT), &name),
                HttpServer::start(&t.ns, SocketAddr::new(ip, HTTP_PORT), &name),
            )
        })
        .collect();
    let lb = L7Sluice::start(&topology, &model(&topology), 4);
    lb.wait_forwarding(&topology, 8080, "target");
    let vip = SocketAddr::new(VIP.into(), LISTENER_PORT);

    let mut beating = WebSocketClient::connect(&topology.client.ns, vip, "/chat")
        .unwrap_or_else(|e| panic!("WebSocket upgrade through {vip}: {e}"));
    let target = beating.server_name().unwrap();
    let mut silent = WebSocketClient::connect(&topology.client.ns, vip, "/chat").unwrap();
    assert!(silent.server_name().unwrap().starts_with("target"));

    // Twice the idle timeout with a heartbeat every quarter of it: still open, same target.
    let answered = beating
        .heartbeat_for(IDLE_TIMEOUT * 2, IDLE_TIMEOUT / 4)
        .unwrap_or_else(|e| panic!("heartbeats through {vip}: {e}\n{}", lb.sluice.stderr()));
    assert!(answered >= 8, "{answered} heartbeats");
    assert_eq!(beating.server_name().unwrap(), target);

    // Meanwhile the silent connection was closed by the idle timeout (not much later).
    let closed_after = silent
        .wait_closed(IDLE_TIMEOUT)
        .expect("the silent WebSocket is closed after the idle timeout");
    assert!(closed_after < IDLE_TIMEOUT, "{closed_after:?}");
    lb.check_running();
}
