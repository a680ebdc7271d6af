//! The `t2s-probe` transfer protocol, shared by its server and client.
//!
//! A client opens a TCP connection and sends a 17-byte header:
//! `op` (1 byte), `len` (u64 big-endian), `seed` (u64 big-endian).
//!
//! * `D` (download): the server sends `len` bytes of [`Pattern`]`(seed)` and
//!   closes its write side.
//! * `U` (upload): the client sends `len` bytes; the server reads exactly that
//!   many and replies with their 32-byte SHA-256, then closes.

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

pub const HEADER_LEN: usize = 17;
pub const DIGEST_LEN: usize = 32;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Download,
    Upload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    pub len: u64,
    pub seed: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0; HEADER_LEN];
        buf[0] = match self.op {
            Op::Download => b'D',
            Op::Upload => b'U',
        };
        buf[1..9].copy_from_slice(&self.len.to_be_bytes());
        buf[9..17].copy_from_slice(&self.seed.to_be_bytes());
        buf
    }

    pub fn decode(buf: &[u8; HEADER_LEN]) -> Result<Self> {
        let op = match buf[0] {
            b'D' => Op::Download,
            b'U' => Op::Upload,
            other => bail!("unknown op byte {other:#04x}"),
        };
        let len = u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes"));
        let seed = u64::from_be_bytes(buf[9..17].try_into().expect("8 bytes"));
        Ok(Header { op, len, seed })
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*, seeded through
/// splitmix64). The bytes do not depend on how the stream is chunked.
pub struct Pattern {
    state: u64,
    spare: [u8; 8],
    spare_used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        // splitmix64 spreads any seed (0 included) to a non-zero state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Pattern {
            state: z | 1,
            spare: [0; 8],
            spare_used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let from_spare = (8 - self.spare_used).min(buf.len());
        buf[..from_spare].copy_from_slice(&self.spare[self.spare_used..][..from_spare]);
        self.spare_used += from_spare;
        let mut words = buf[from_spare..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_word());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            self.spare = self.next_word();
            rest.copy_from_slice(&self.spare[..rest.len()]);
            self.spare_used = rest.len();
        }
    }
}

/// SHA-256 of the first `len` bytes of `Pattern::new(seed)`.
pub fn pattern_digest(seed: u64, len: u64) -> [u8; DIGEST_LEN] {
    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hasher.finalize().into()
}

/// Parses a size: a number with an optional binary suffix (`K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `B`), e.g. `8MiB`.
pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let Ok(n) = digits.parse::<u64>() else {
        bail!("bad size {text:?} (examples: 4096, 64KiB, 8MiB, 1GiB)");
    };
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => bail!("unknown size unit {other:?} (use B, KiB, MiB or GiB)"),
    };
    n.checked_mul(factor)
        .ok_or_else(|| anyhow::anyhow!("size {text:?} too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_independent_of_chunking() {
        let mut whole = vec![0; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut pieces = vec![0; 1000];
        let mut p = Pattern::new(7);
        let mut at = 0;
        for step in [1, 3, 8, 13, 0, 64, 5].iter().cycle() {
            let end = (at + step).min(pieces.len());
            p.fill(&mut pieces[at..end]);
            at = end;
            if at == pieces.len() {
                break;
            }
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0; 1000];
        Pattern::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn digest_matches_sha256_of_the_stream() {
        let mut bytes = vec![0; 200_003];
        Pattern::new(42).fill(&mut bytes);
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(pattern_digest(42, bytes.len() as u64), expected);
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            op: Op::Upload,
            len: 8 << 20,
            seed: u64::MAX - 3,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert!(Header::decode(&[b'X'; HEADER_LEN]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("8MB").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
