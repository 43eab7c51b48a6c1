//! PROXY protocol version 2 (HAProxy's binary header): written to the upstream before the
//! client's first byte, so a broker with PROXY protocol enabled (Artemis:
//! `proxyProtocolEnabled=true` on the acceptor) sees the client's real address.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
/// Address family and transport: TCP over IPv4, TCP over IPv6.
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;

/// The v2 header of a TCP connection from `client` to `local` (the address it connected to).
/// Mixed families are written as IPv6, an IPv4 address mapped into it.
pub fn v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + 36);
    h.extend_from_slice(&SIGNATURE);
    h.push(VERSION_PROXY);
    match (client.ip(), local.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            h.push(TCP4);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&src.octets());
            h.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            h.push(TCP6);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(src).octets());
            h.extend_from_slice(&v6(dst).octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&local.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header() {
        let h = v2_header(
            "10.1.2.3:40000".parse().unwrap(),
            "192.168.0.1:61616".parse().unwrap(),
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[10, 1, 2, 3]);
        assert_eq!(&h[20..24], &[192, 168, 0, 1]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
        assert_eq!(&h[26..28], &61616u16.to_be_bytes());
    }

    #[test]
    fn ipv6_and_mixed_headers() {
        let h = v2_header("[::1]:5".parse().unwrap(), "[::2]:6".parse().unwrap());
        assert_eq!(h.len(), 52);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h[31], 1);
        assert_eq!(h[47], 2);
        assert_eq!(&h[48..], &[0, 5, 0, 6]);
        let m = v2_header("127.0.0.1:5".parse().unwrap(), "[::2]:6".parse().unwrap());
        assert_eq!(&m[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(&m[26..32], &[0xff, 0xff, 127, 0, 0, 1]);
    }
}
