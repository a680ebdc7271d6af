//! The `virtio_net_hdr` that a TUN queue opened with `IFF_VNET_HDR` puts in
//! front of every packet it hands out and expects in front of every packet
//! written to it (`--tun-offload on`), and the little TCP work that offload
//! leaves to us.
//!
//! Wire format (`include/uapi/linux/virtio_net.h`, the legacy 10-byte header;
//! we set `TUNSETVNETLE`, so its 16-bit fields are little-endian on any host):
//!
//! ```text
//! 0      1         2        4         6           8            10
//! | flags | gso_type | hdr_len | gso_size | csum_start | csum_offset |
//! ```
//!
//! Why 10 bytes and not 12 (`virtio_net_hdr_mrg_rxbuf`, with `num_buffers`):
//! `num_buffers` only means something to a virtio device that merges receive
//! buffers; the TUN driver ignores it on write and writes 0 on read. It would
//! cost two bytes a packet for nothing.
//!
//! What the kernel does with the header we write (`virtio_net_hdr_to_skb`,
//! called from `tun_get_user`):
//!
//! * `flags = NEEDS_CSUM`: the skb becomes `CHECKSUM_PARTIAL` with the
//!   checksum to be computed from `csum_start` over the rest of the packet
//!   and stored at `csum_start + csum_offset`; the field must already hold
//!   the pseudo-header sum. Local delivery trusts a partial checksum (never
//!   computes it); a packet forwarded out of a device without checksum
//!   offload gets it computed by `skb_checksum_help`.
//! * `gso_type = TCPV4 / TCPV6`: the skb is a GSO packet of `gso_size`-byte
//!   segments (marked `SKB_GSO_DODGY`: the kernel re-checks the headers).
//!   For TCP the kernel requires `csum_offset == 16` when `NEEDS_CSUM` is
//!   set, and a packet whose payload is not bigger than `gso_size` is
//!   quietly treated as a plain one. Local delivery hands the whole skb to
//!   TCP (as GRO would); forwarding segments it.
//! * `hdr_len`: how much `tun_get_user` copies into the skb's linear part;
//!   at least `csum_start + csum_offset + 2` (the kernel raises it to that),
//!   and no more than the packet.

use std::fmt;

/// Bytes of the header in front of every packet.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset`
/// holds only the pseudo-header sum; whoever needs it complete finishes it.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the kernel (or a NIC) verified the checksum.
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag on top of the GSO type.
pub const GSO_ECN: u8 = 0x80;

/// Where a TCP header keeps its checksum.
pub const TCP_CSUM_OFFSET: u16 = 16;
const PROTO_TCP: u8 = 6;

/// One `virtio_net_hdr`, fields in host order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header of a packet that needs nothing done (checksums complete,
    /// no segmentation): ten zero bytes.
    pub const PLAIN: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut out = [0u8; VNET_HDR_LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        out
    }

    /// The header at the start of `bytes`; `None` when there are fewer than
    /// [`VNET_HDR_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = bytes.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// A GSO packet (one the kernel segmented for us, or we for it).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Whether the packet's transport checksum may be taken as good without
    /// looking: it was made on this host and is only partial (`NEEDS_CSUM`),
    /// or the kernel already verified it (`DATA_VALID`). Anything else (a
    /// packet routed in from a LAN, say) must be verified in software.
    pub fn checksum_trusted(&self) -> bool {
        self.flags & (F_NEEDS_CSUM | F_DATA_VALID) != 0
    }
}

impl fmt::Display for VnetHdr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flags={:#x} gso_type={:#x} hdr_len={} gso_size={} csum_start={} csum_offset={}",
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )
    }
}

/// The layout of a TCP packet, as far as offload needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLayout {
    pub ipv6: bool,
    /// Bytes of IP header (IPv6: the fixed 40; smoltcp adds no extension
    /// headers).
    pub ip_header: usize,
    /// Bytes of TCP header, options included.
    pub tcp_header: usize,
    pub payload: usize,
}

/// The TCP layout of an IPv4 or IPv6 packet whose (first) next header is
/// TCP; `None` for anything else or a packet too short for its headers.
pub fn tcp_layout(packet: &[u8]) -> Option<TcpLayout> {
    let (ipv6, ip_header, total) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if packet.len() < 20 || packet[9] != PROTO_TCP || ihl < 20 {
                return None;
            }
            (false, ihl, usize::from(u16::from_be_bytes([packet[2], packet[3]])))
        }
        6 => {
            if packet.len() < 40 || packet[6] != PROTO_TCP {
                return None;
            }
            (true, 40, 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]])))
        }
        _ => return None,
    };
    if total > packet.len() || total < ip_header + 20 {
        return None;
    }
    let tcp_header = usize::from(packet[ip_header + 12] >> 4) * 4;
    if tcp_header < 20 || ip_header + tcp_header > total {
        return None;
    }
    Some(TcpLayout {
        ipv6,
        ip_header,
        tcp_header,
        payload: total - ip_header - tcp_header,
    })
}

/// Ones'-complement sum of `data` as big-endian 16-bit words, added to `sum`
/// (not folded).
fn sum_be_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP pseudo-header sum of `packet` (addresses, protocol, TCP length),
/// folded but not complemented: what a `NEEDS_CSUM` packet carries in its
/// checksum field.
fn pseudo_header_sum(packet: &[u8], layout: &TcpLayout) -> u16 {
    let tcp_len = (layout.tcp_header + layout.payload) as u64;
    let addrs = if layout.ipv6 { &packet[8..40] } else { &packet[12..20] };
    fold(sum_be_words(u64::from(PROTO_TCP) + tcp_len, addrs))
}

/// Prepares a TCP packet built without a checksum for the kernel, and
/// returns the header to write in front of it: the checksum field gets the
/// pseudo-header sum and the header says `NEEDS_CSUM` (the kernel completes
/// it if it ever needs it: never for local delivery); a payload bigger than
/// `mss` makes it a GSO packet of `mss`-byte segments. `mss` is the payload
/// per segment, TCP options already taken off.
pub fn offload_tcp(packet: &mut [u8], layout: &TcpLayout, mss: u16) -> VnetHdr {
    let sum = pseudo_header_sum(packet, layout);
    let at = layout.ip_header + usize::from(TCP_CSUM_OFFSET);
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    let headers = layout.ip_header + layout.tcp_header;
    let segmented = layout.payload > usize::from(mss);
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: match (segmented, layout.ipv6) {
            (false, _) => GSO_NONE,
            (true, false) => GSO_TCPV4,
            (true, true) => GSO_TCPV6,
        },
        hdr_len: headers as u16,
        gso_size: if segmented { mss } else { 0 },
        csum_start: layout.ip_header as u16,
        csum_offset: TCP_CSUM_OFFSET,
    }
}

/// Whether the TCP checksum of `packet` is right, computed in full (for
/// packets whose header does not vouch for it).
pub fn tcp_checksum_ok(packet: &[u8], layout: &TcpLayout) -> bool {
    let start = layout.ip_header;
    let end = start + layout.tcp_header + layout.payload;
    let pseudo = u64::from(pseudo_header_sum(packet, layout));
    fold(sum_be_words(pseudo, &packet[start..end])) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP packet 10.0.1.1:40000 -> 10.0.2.2:9000 with `payload`
    /// bytes of 0xab and a 12-byte timestamp option (TCP header 32 bytes).
    fn ipv4_tcp(payload: usize) -> Vec<u8> {
        let total = 20 + 32 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 0, 1, 1]);
        p[16..20].copy_from_slice(&[10, 0, 2, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&9000u16.to_be_bytes());
        p[32] = 8 << 4;
        p[33] = 0x10;
        p[52..].fill(0xab);
        p
    }

    fn ipv6_tcp(payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 20 + payload];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
        p[6] = PROTO_TCP;
        p[7] = 64;
        p[8..10].copy_from_slice(&[0xfd, 0x00]);
        p[23] = 1;
        p[24..26].copy_from_slice(&[0xfd, 0x00]);
        p[39] = 2;
        p[52] = 5 << 4;
        p[60..].fill(0x5a);
        p
    }

    #[test]
    fn a_gso_tcpv4_header_has_these_bytes() {
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 8948,
            csum_start: 20,
            csum_offset: 16,
        };
        // 8948 = 0x22f4, little-endian.
        let bytes = [0x01, 0x01, 52, 0, 0xf4, 0x22, 20, 0, 16, 0];
        assert_eq!(hdr.encode(), bytes);
        assert_eq!(VnetHdr::decode(&bytes), Some(hdr));
        assert!(hdr.is_gso() && hdr.checksum_trusted());
    }

    #[test]
    fn a_plain_header_is_ten_zeros_and_trusts_nothing() {
        assert_eq!(VnetHdr::PLAIN.encode(), [0; 10]);
        assert_eq!(VnetHdr::decode(&[0; 10]), Some(VnetHdr::PLAIN));
        assert!(!VnetHdr::PLAIN.is_gso() && !VnetHdr::PLAIN.checksum_trusted());
        assert_eq!(VnetHdr::decode(&[0; 9]), None);
    }

    #[test]
    fn a_needs_csum_packet_read_from_the_kernel_decodes() {
        // What TUN hands out for a locally made IPv6 TCP segment of 1 MSS
        // (no GSO): NEEDS_CSUM from byte 40, checksum at 40 + 16.
        let bytes = [0x01, 0x00, 60, 0, 0, 0, 40, 0, 16, 0];
        let hdr = VnetHdr::decode(&bytes).unwrap();
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        assert_eq!((hdr.csum_start, hdr.csum_offset, hdr.hdr_len), (40, 16, 60));
        assert!(!hdr.is_gso() && hdr.checksum_trusted());
        // DATA_VALID alone (a verified packet from elsewhere) is trusted too;
        // an ECN flag alone is no GSO type.
        assert!(
            VnetHdr::decode(&[0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap()
                .checksum_trusted()
        );
        assert!(!VnetHdr::decode(&[0, GSO_ECN, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap().is_gso());
    }

    #[test]
    fn layouts_of_tcp_packets_and_of_others() {
        assert_eq!(
            tcp_layout(&ipv4_tcp(100)),
            Some(TcpLayout {
                ipv6: false,
                ip_header: 20,
                tcp_header: 32,
                payload: 100
            })
        );
        assert_eq!(
            tcp_layout(&ipv6_tcp(7)),
            Some(TcpLayout {
                ipv6: true,
                ip_header: 40,
                tcp_header: 20,
                payload: 7
            })
        );
        let mut udp = ipv4_tcp(8);
        udp[9] = 17;
        assert_eq!(tcp_layout(&udp), None);
        assert_eq!(tcp_layout(&ipv4_tcp(8)[..30]), None);
        assert_eq!(tcp_layout(&[]), None);
    }

    #[test]
    fn a_big_segment_becomes_gso_with_the_pseudo_header_sum_in_place() {
        let mut p = ipv4_tcp(20_000);
        let layout = tcp_layout(&p).unwrap();
        let hdr = offload_tcp(&mut p, &layout, 8948);
        assert_eq!(hdr.encode(), [0x01, 0x01, 52, 0, 0xf4, 0x22, 20, 0, 16, 0]);
        // Pseudo header: 0x0a00 + 0x0101 + 0x0a00 + 0x0202 + 6 + (32 + 20000).
        let expected = fold(0x0a00 + 0x0101 + 0x0a00 + 0x0202 + 6 + 20_032);
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), expected);
        // Completing it the way the kernel does gives a valid checksum.
        let complete = !fold(sum_be_words(0, &p[20..]));
        p[36..38].copy_from_slice(&complete.to_be_bytes());
        assert!(tcp_checksum_ok(&p, &layout));
    }

    #[test]
    fn a_segment_within_the_mss_is_no_gso_but_still_partial() {
        let mut p = ipv6_tcp(1000);
        let layout = tcp_layout(&p).unwrap();
        let hdr = offload_tcp(&mut p, &layout, 1000);
        assert_eq!(hdr.encode(), [0x01, 0x00, 60, 0, 0, 0, 40, 0, 16, 0]);
        let mut p = ipv6_tcp(1001);
        let layout = tcp_layout(&p).unwrap();
        let hdr = offload_tcp(&mut p, &layout, 1000);
        assert_eq!(hdr.gso_type, GSO_TCPV6);
        assert_eq!(hdr.gso_size, 1000);
    }

    #[test]
    fn software_verification_catches_a_bad_checksum() {
        let mut p = ipv6_tcp(33); // odd length: the last byte is padded
        let layout = tcp_layout(&p).unwrap();
        offload_tcp(&mut p, &layout, 1000);
        let complete = !fold(sum_be_words(0, &p[40..]));
        p[56..58].copy_from_slice(&complete.to_be_bytes());
        assert!(tcp_checksum_ok(&p, &layout));
        p[70] ^= 1;
        assert!(!tcp_checksum_ok(&p, &layout));
    }
}
