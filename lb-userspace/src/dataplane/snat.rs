//! The load balancer's own address towards a target, which `nat` mode puts in the source of
//! forwarded packets so that replies come back through it.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
};

/// The source address the kernel would use to reach `target` (from its routing table), found
/// by connecting a UDP socket, which sends nothing.
pub fn source_for(target: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect((target, 9))?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_reached_from_loopback() {
        assert_eq!(
            source_for("127.0.0.1".parse().unwrap()).unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
