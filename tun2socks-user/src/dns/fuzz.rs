//! Entry points for fuzzers (cargo-fuzz targets call these): each takes
//! arbitrary bytes and panics only when an invariant is broken.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};

use super::fake_ip::{FakeIpConfig, FakeIpPool};
use super::responder::{Reply, Responder};
use super::tcp::FrameReader;

/// Runs `data` through a responder whose small pool fills up and recycles
/// entries, so the allocation and reuse paths get fuzzed too. Any answer must
/// parse, be a response to `data`'s ID and fit a plain UDP datagram.
pub fn fuzz_responder(data: &[u8]) {
    static RESPONDER: OnceLock<Responder> = OnceLock::new();
    let responder = RESPONDER.get_or_init(|| {
        let config = FakeIpConfig {
            capacity: 8,
            ttl: Duration::from_secs(1),
            ..FakeIpConfig::default()
        };
        Responder::new(Arc::new(FakeIpPool::new(config).expect("valid fuzz config")))
    });
    if let Reply::Answer(bytes) = responder.handle(data, Instant::now()) {
        let answer = Message::from_vec(&bytes).expect("answers parse");
        assert_eq!(answer.message_type, MessageType::Response);
        assert_eq!(answer.id.to_be_bytes(), data[..2], "the ID is echoed");
        assert!(bytes.len() <= 512, "answer of {} bytes", bytes.len());
    }
}

/// Feeds `data` to a [`FrameReader`] in pieces whose sizes come from the data
/// itself; the reader must make progress and never hold more than one frame.
pub fn fuzz_frame_reader(data: &[u8]) {
    let Some((&max, stream)) = data.split_first() else {
        return;
    };
    let max_message = usize::from(max) * 64 + 1;
    let mut reader = FrameReader::with_max_message(max_message);
    let mut rest = stream;
    while let Some((&cut, _)) = rest.split_first() {
        let piece = &rest[..usize::from(cut).clamp(1, rest.len())];
        let taken = reader.feed(piece);
        assert!(reader.buffered() <= max_message + 2);
        rest = &rest[taken..];
        let mut progressed = taken > 0;
        loop {
            match reader.next_message() {
                Ok(Some(message)) => {
                    assert!(!message.is_empty() && message.len() <= max_message);
                    progressed = true;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(progressed, "a full reader yielded no message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cheap stand-in for a fuzzer run: pseudo-random inputs, and mutations
    /// of a real query, through both entry points.
    #[test]
    fn entry_points_survive_noise() {
        let query = b"\x5a\xcf\x01\x20\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            // xorshift64*: deterministic, no dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for round in 0..20_000 {
            let mut data = query.to_vec();
            let flips = (next() % 4) as usize;
            for _ in 0..flips {
                let at = (next() as usize) % data.len();
                data[at] = next() as u8;
            }
            // Fresh names as well, so the small pool keeps recycling.
            data[13] = b'a' + (round % 26) as u8;
            data.truncate((next() as usize) % (data.len() + 1));
            fuzz_responder(&data);
            let noise: Vec<u8> = (0..(next() % 200)).map(|_| next() as u8).collect();
            fuzz_responder(&noise);
            fuzz_frame_reader(&noise);
        }
    }
}
