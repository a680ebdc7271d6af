//! Just enough header parsing to route a packet inside a worker: which
//! protocol, which flow, and for TCP the flags that decide whether it may
//! open a session. smoltcp does the full (checked) parse afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A flow as the application sees it: its own endpoint and the destination
/// it asked for (which becomes the smoltcp socket's local endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub dest: SocketAddr,
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.client, self.dest)
    }
}

/// TCP control bits that matter before a session exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlags(u8);

impl TcpFlags {
    pub fn syn(self) -> bool {
        self.0 & TCP_SYN != 0
    }
    pub fn ack(self) -> bool {
        self.0 & TCP_ACK != 0
    }
    pub fn rst(self) -> bool {
        self.0 & TCP_RST != 0
    }
    pub fn fin(self) -> bool {
        self.0 & TCP_FIN != 0
    }
    /// A connection request: SYN without ACK (and without RST).
    pub fn is_connection_request(self) -> bool {
        self.syn() && !self.ack() && !self.rst()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    Tcp {
        key: FlowKey,
        flags: TcpFlags,
    },
    /// `payload` is where the UDP payload lies in the packet.
    Udp {
        key: FlowKey,
        payload: std::ops::Range<usize>,
    },
    /// IP, but nothing we terminate (ICMP, fragments, extension headers...).
    Other,
    /// Too short or inconsistent to be an IP packet.
    Malformed,
}

/// Classifies one IP packet read from the device.
pub fn classify(packet: &[u8]) -> Classified {
    match packet.first().map(|b| b >> 4) {
        Some(4) => classify_v4(packet),
        Some(6) => classify_v6(packet),
        _ => Classified::Malformed,
    }
}

fn classify_v4(p: &[u8]) -> Classified {
    if p.len() < 20 {
        return Classified::Malformed;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || total < ihl || total > p.len() {
        return Classified::Malformed;
    }
    let frag = u16::from_be_bytes([p[6], p[7]]);
    let more_fragments = frag & 0x2000 != 0;
    if more_fragments || frag & 0x1fff != 0 {
        return Classified::Other;
    }
    let src = IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
    transport(p[9], src, dst, &p[ihl..total], ihl)
}

fn classify_v6(p: &[u8]) -> Classified {
    if p.len() < 40 {
        return Classified::Malformed;
    }
    let payload_len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    if 40 + payload_len > p.len() {
        return Classified::Malformed;
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&p[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    transport(p[6], addr(8), addr(24), &p[40..40 + payload_len], 40)
}

/// The MSS option of a TCP segment (in practice a SYN): `None` when the
/// packet is not TCP or the option is absent or malformed.
pub fn tcp_mss_option(p: &[u8]) -> Option<u16> {
    let (proto, l4) = match p.first()? >> 4 {
        4 => (*p.get(9)?, usize::from(p[0] & 0x0f) * 4),
        6 => (*p.get(6)?, 40),
        _ => return None,
    };
    if proto != PROTO_TCP {
        return None;
    }
    let header = usize::from(p.get(l4 + 12)? >> 4) * 4;
    let mut options = p.get(l4 + 20..l4 + header)?;
    while let [kind, rest @ ..] = options {
        match kind {
            0 => return None, // end of options
            1 => options = rest,
            _ => {
                let len = usize::from(*rest.first()?);
                if len < 2 || len > options.len() {
                    return None;
                }
                if *kind == 2 && len == 4 {
                    return Some(u16::from_be_bytes([options[2], options[3]]));
                }
                options = &options[len..];
            }
        }
    }
    None
}

/// `l4` is the transport segment, which starts at `l4_offset` in the packet.
fn transport(proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8], l4_offset: usize) -> Classified {
    let min_len = match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        _ => return Classified::Other,
    };
    if l4.len() < min_len {
        return Classified::Malformed;
    }
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let key = FlowKey {
        client: SocketAddr::new(src, sport),
        dest: SocketAddr::new(dst, dport),
    };
    if proto == PROTO_TCP {
        return Classified::Tcp {
            key,
            flags: TcpFlags(l4[13]),
        };
    }
    let udp_len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
    if udp_len < 8 || udp_len > l4.len() {
        return Classified::Malformed;
    }
    Classified::Udp {
        key,
        payload: l4_offset + 8..l4_offset + udp_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 40-byte IPv4+TCP SYN from 10.0.1.1:40000 to 10.0.2.2:80.
    fn syn_v4() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 1, 1, 10, 0, 2, 2, // IPv4
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0, // TCP
        ];
        p.truncate(40);
        p
    }

    #[test]
    fn finds_the_mss_option_after_others() {
        assert_eq!(tcp_mss_option(&syn_v4()), None);
        // NOP, NOP, window scale 7, MSS 8960: a 52-byte SYN.
        let mut p = syn_v4();
        p[3] = 52;
        p[32] = 0x80;
        p.extend_from_slice(&[1, 1, 3, 3, 7, 2, 4, 0x23, 0x00, 1, 1, 0]);
        assert_eq!(tcp_mss_option(&p), Some(8960));
        // A length that runs past the header is no option.
        let mut bad = p.clone();
        bad[43] = 20;
        assert_eq!(tcp_mss_option(&bad), None);
        p[9] = PROTO_UDP;
        assert_eq!(tcp_mss_option(&p), None);
    }

    #[test]
    fn classifies_ipv4_syn() {
        let Classified::Tcp { key, flags } = classify(&syn_v4()) else {
            panic!("not tcp")
        };
        assert_eq!(key.client, "10.0.1.1:40000".parse().unwrap());
        assert_eq!(key.dest, "10.0.2.2:80".parse().unwrap());
        assert!(flags.is_connection_request());
    }

    #[test]
    fn rejects_truncated_and_inconsistent_headers() {
        let p = syn_v4();
        assert_eq!(classify(&p[..19]), Classified::Malformed);
        assert_eq!(classify(&p[..30]), Classified::Malformed); // total length says 40
        assert_eq!(classify(&[]), Classified::Malformed);
        let mut bad_ihl = p.clone();
        bad_ihl[0] = 0x44;
        assert_eq!(classify(&bad_ihl), Classified::Malformed);
        let mut short_tcp = p.clone();
        short_tcp[3] = 30;
        assert_eq!(classify(&short_tcp[..30]), Classified::Malformed);
    }

    #[test]
    fn fragments_are_not_terminated() {
        let mut p = syn_v4();
        p[6] = 0x20; // MF
        assert_eq!(classify(&p), Classified::Other);
    }

    #[test]
    fn classifies_ipv6_udp() {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, PROTO_UDP, 64];
        p.extend_from_slice(&"fd00:1::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00:2::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
        let mut bad_len = p.clone();
        bad_len[45] = 9; // UDP length beyond the packet
        assert_eq!(classify(&bad_len), Classified::Malformed);
        let Classified::Udp { key, payload } = classify(&p) else {
            panic!("not udp")
        };
        assert_eq!(key.dest, "[fd00:2::2]:53".parse().unwrap());
        assert_eq!(payload, 48..48);
        assert_eq!(classify(&p[..47]), Classified::Malformed);
    }
}

/// Builds an IP/UDP packet from `src` to `dst` into `buf` (replacing its
/// contents), with checksums. `None` when the families differ or the
/// payload does not fit in one IP packet.
pub fn write_udp(buf: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<()> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr};

    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let udp_len = udp.header_len() + payload.len();
    // What the length fields can express: IPv4's total length, IPv6's
    // payload length (no jumbograms).
    let max_udp_len = if src.is_ipv4() {
        usize::from(u16::MAX) - 20
    } else {
        usize::from(u16::MAX)
    };
    if udp_len > max_udp_len {
        return None;
    }
    let caps = ChecksumCapabilities::default();
    let (src_ip, dst_ip): (IpAddress, IpAddress) = (src.ip().into(), dst.ip().into());
    let l4_offset = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: udp_len,
                hop_limit: 64,
            };
            buf.clear();
            buf.resize(ip.buffer_len() + udp_len, 0);
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
            ip.buffer_len()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: udp_len,
                hop_limit: 64,
            };
            buf.clear();
            buf.resize(ip.buffer_len() + udp_len, 0);
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            ip.buffer_len()
        }
        _ => return None,
    };
    let mut packet = UdpPacket::new_unchecked(&mut buf[l4_offset..]);
    udp.emit(
        &mut packet,
        &src_ip,
        &dst_ip,
        payload.len(),
        |p| p.copy_from_slice(payload),
        &caps,
    );
    Some(())
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn built_udp_packets_classify_back() {
        let mut buf = Vec::new();
        for (src, dst) in [("10.0.2.2:7", "10.0.1.1:40000"), ("[fd00:2::2]:7", "[fd00:1::1]:40000")] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            write_udp(&mut buf, src, dst, b"hello").unwrap();
            let Classified::Udp { key, payload } = classify(&buf) else {
                panic!("not udp")
            };
            assert_eq!((key.client, key.dest), (src, dst));
            assert_eq!(&buf[payload], b"hello");
        }
        let v4: SocketAddr = "10.0.2.2:7".parse().unwrap();
        let v6: SocketAddr = "[fd00:2::2]:7".parse().unwrap();
        assert!(write_udp(&mut buf, v4, v6, b"x").is_none());
        // The largest payloads the length fields can carry, and one more.
        let v4b: SocketAddr = "10.0.1.1:9".parse().unwrap();
        let v6b: SocketAddr = "[fd00:1::1]:9".parse().unwrap();
        assert!(write_udp(&mut buf, v4, v4b, &vec![0; 65_507]).is_some());
        assert!(write_udp(&mut buf, v4, v4b, &vec![0; 65_508]).is_none());
        assert!(write_udp(&mut buf, v6, v6b, &vec![0; 65_527]).is_some());
        assert!(write_udp(&mut buf, v6, v6b, &vec![0; 65_528]).is_none());
    }

    #[test]
    fn built_udp_checksum_is_valid() {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
        let mut buf = Vec::new();
        write_udp(
            &mut buf,
            "10.0.2.2:7".parse().unwrap(),
            "10.0.1.1:9".parse().unwrap(),
            b"abc",
        )
        .unwrap();
        let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
        let caps = ChecksumCapabilities::default();
        let repr = Ipv4Repr::parse(&ip, &caps).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(UdpRepr::parse(&udp, &repr.src_addr.into(), &repr.dst_addr.into(), &caps).is_ok());
    }
}
