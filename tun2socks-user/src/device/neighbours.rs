//! Router mode's answer to "which MAC address does this reply go to?":
//! the source MAC of the last frame that came *from* that IP address.
//!
//! On a router's LAN port the workers answer clients they have just heard
//! from: every flow starts with a frame from its client (a SYN, a first
//! datagram), so the client's MAC is known before anything is sent to it.
//! A client behind another router on the LAN is learned with that router's
//! MAC, which is where its replies must go anyway. No ARP or NDP of our own:
//! the kernel keeps answering those for the interface.
//!
//! Each port (worker) keeps its own table, as it only answers its own
//! flows; nothing is shared. The table is bounded: when full, it is
//! cleared and relearned from the next frames (cheap, and a full table of
//! [`CAPACITY`] clients is a LAN far larger than one port serves).

use std::collections::HashMap;
use std::net::IpAddr;

/// Addresses one table holds before it starts over.
pub const CAPACITY: usize = 16_384;

/// IP address → MAC address, learned from received frames.
#[derive(Debug, Default)]
pub struct Neighbours {
    table: HashMap<IpAddr, [u8; 6]>,
    /// The last address looked up or learned, to skip hashing for runs of
    /// packets of one flow.
    last: Option<(IpAddr, [u8; 6])>,
}

impl Neighbours {
    /// Notes that `packet` (an IP packet) arrived in a frame from `mac`.
    pub fn learn(&mut self, packet: &[u8], mac: [u8; 6]) {
        let Some(source) = source_address(packet) else { return };
        if self.last == Some((source, mac)) {
            return;
        }
        if self.table.len() >= CAPACITY && !self.table.contains_key(&source) {
            self.table.clear();
        }
        self.table.insert(source, mac);
        self.last = Some((source, mac));
    }

    /// The MAC address `packet` (an IP packet) goes to: that of its
    /// destination, if it was heard from.
    pub fn lookup(&mut self, packet: &[u8]) -> Option<[u8; 6]> {
        let destination = destination_address(packet)?;
        if let Some((ip, mac)) = self.last
            && ip == destination
        {
            return Some(mac);
        }
        let mac = *self.table.get(&destination)?;
        self.last = Some((destination, mac));
        Some(mac)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn address_at(packet: &[u8], v4: usize, v6: usize) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let bytes: [u8; 4] = packet.get(v4..v4 + 4)?.try_into().ok()?;
            Some(IpAddr::from(bytes))
        }
        6 => {
            let bytes: [u8; 16] = packet.get(v6..v6 + 16)?.try_into().ok()?;
            Some(IpAddr::from(bytes))
        }
        _ => None,
    }
}

fn source_address(packet: &[u8]) -> Option<IpAddr> {
    address_at(packet, 12, 8)
}

fn destination_address(packet: &[u8]) -> Option<IpAddr> {
    address_at(packet, 16, 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p
    }

    fn v6(src: u8, dst: u8) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, 17, 64];
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = src;
        p.extend_from_slice(&a);
        a[15] = dst;
        p.extend_from_slice(&a);
        p
    }

    const CLIENT: [u8; 6] = [2, 0, 0, 0, 0, 9];
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 8];

    #[test]
    fn replies_go_to_the_mac_the_request_came_from() {
        let mut n = Neighbours::default();
        n.learn(&v4([192, 168, 1, 10], [10, 0, 0, 1]), CLIENT);
        n.learn(&v6(10, 1), OTHER);
        assert_eq!(n.lookup(&v4([10, 0, 0, 1], [192, 168, 1, 10])), Some(CLIENT));
        assert_eq!(n.lookup(&v6(1, 10)), Some(OTHER));
        assert_eq!(n.lookup(&v4([10, 0, 0, 1], [192, 168, 1, 11])), None);
        // A client that moved (new NIC, DHCP reuse) is relearned.
        n.learn(&v4([192, 168, 1, 10], [10, 0, 0, 1]), OTHER);
        assert_eq!(n.lookup(&v4([10, 0, 0, 1], [192, 168, 1, 10])), Some(OTHER));
        assert_eq!(n.len(), 2);
    }

    #[test]
    fn garbage_is_neither_learned_nor_found() {
        let mut n = Neighbours::default();
        n.learn(&[], CLIENT);
        n.learn(&[0x45, 0, 0], CLIENT);
        n.learn(&[0x55; 40], CLIENT);
        assert!(n.is_empty());
        assert_eq!(n.lookup(&[0x45]), None);
    }

    #[test]
    fn a_full_table_starts_over() {
        let mut n = Neighbours::default();
        for i in 0..CAPACITY as u32 {
            n.learn(&v4((0x0a00_0000 + i).to_be_bytes(), [1, 1, 1, 1]), CLIENT);
        }
        assert_eq!(n.len(), CAPACITY);
        n.learn(&v4([192, 168, 9, 9], [1, 1, 1, 1]), OTHER);
        assert_eq!(n.len(), 1);
        assert_eq!(n.lookup(&v4([1, 1, 1, 1], [192, 168, 9, 9])), Some(OTHER));
    }
}
