//! DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): every message is
//! preceded by its length as a big-endian `u16`. `--dns over-tcp` sends the
//! queries of UDP clients this way through a SOCKS5 CONNECT, for proxies
//! without UDP ASSOCIATE.

/// Largest message the two-byte prefix can describe.
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;
const PREFIX_LEN: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a {0}-byte DNS message does not fit TCP framing (at most {MAX_MESSAGE_LEN} bytes)")]
    TooLong(usize),
    #[error("the peer announced a {declared}-byte DNS message, over the {max}-byte limit")]
    DeclaredTooLong { declared: usize, max: usize },
    #[error("the peer announced an empty DNS message")]
    Empty,
}

/// `message` with its length prefix, ready to write to the stream.
pub fn frame(message: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u16::try_from(message.len()).map_err(|_| FrameError::TooLong(message.len()))?;
    let mut framed = Vec::with_capacity(PREFIX_LEN + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed)
}

/// Reassembles length-prefixed messages from a byte stream, however the
/// stream is cut. Holds at most one maximal frame (prefix plus
/// `max_message`): [`feed`](Self::feed) takes what fits and says how much,
/// so the caller keeps the rest (in its socket) until messages are taken out.
///
/// After an error the stream is out of step and cannot recover: close it.
#[derive(Debug, Clone)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`; consumed bytes are moved out only
    /// when room is needed, not on every message.
    start: usize,
    max_message: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// A reader accepting any message TCP framing allows.
    pub fn new() -> Self {
        Self::with_max_message(MAX_MESSAGE_LEN)
    }

    /// A reader refusing messages longer than `max_message` bytes (clamped to
    /// 1..=[`MAX_MESSAGE_LEN`]), e.g. to bound memory per upstream stream.
    pub fn with_max_message(max_message: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_message: max_message.clamp(1, MAX_MESSAGE_LEN),
        }
    }

    /// Buffers as much of `data` as fits and returns how many bytes it took.
    /// Less than `data.len()` only when a whole frame is already buffered:
    /// take messages out with [`next_message`](Self::next_message), then
    /// feed the rest.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let room = PREFIX_LEN + self.max_message - self.buf.len();
        let taken = data.len().min(room);
        self.buf.extend_from_slice(&data[..taken]);
        taken
    }

    /// The next complete message, without its prefix; `Ok(None)` until one
    /// has fully arrived.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let pending = &self.buf[self.start..];
        let Some((prefix, rest)) = pending.split_first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_message {
            return Err(FrameError::DeclaredTooLong {
                declared: len,
                max: self.max_message,
            });
        }
        let Some(message) = rest.get(..len) else {
            return Ok(None);
        };
        let message = message.to_vec();
        self.start += PREFIX_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(message))
    }

    /// Bytes held that are not yet part of a returned message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in `chunk`-byte pieces, collecting messages.
    fn read_all(reader: &mut FrameReader, stream: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut messages = Vec::new();
        for mut piece in stream.chunks(chunk) {
            while !piece.is_empty() {
                piece = &piece[reader.feed(piece)..];
                while let Some(message) = reader.next_message()? {
                    messages.push(message);
                }
            }
        }
        Ok(messages)
    }

    #[test]
    fn frame_prefixes_the_length() {
        assert_eq!(frame(b"abc").unwrap(), b"\x00\x03abc");
        assert_eq!(frame(&[7; 300]).unwrap()[..2], [1, 44]);
        assert_eq!(frame(&vec![0; MAX_MESSAGE_LEN]).unwrap().len(), MAX_MESSAGE_LEN + 2);
        assert_eq!(
            frame(&vec![0; MAX_MESSAGE_LEN + 1]),
            Err(FrameError::TooLong(MAX_MESSAGE_LEN + 1))
        );
    }

    #[test]
    fn messages_survive_any_cut_of_the_stream() {
        let messages: Vec<Vec<u8>> = [1, 2, 30, 255, 256, 700]
            .iter()
            .map(|&n| (0..n).map(|i| i as u8).collect())
            .collect();
        let stream: Vec<u8> = messages.iter().flat_map(|m| frame(m).unwrap()).collect();
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            assert_eq!(
                read_all(&mut FrameReader::new(), &stream, chunk).unwrap(),
                messages,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn buffer_is_bounded_and_feed_applies_backpressure() {
        let mut reader = FrameReader::with_max_message(10);
        let stream: Vec<u8> = (0..5).flat_map(|i| frame(&[i; 10]).unwrap()).collect();
        assert_eq!(reader.feed(&stream), 12, "one frame's worth at most");
        assert_eq!(reader.buffered(), 12);
        assert_eq!(reader.next_message().unwrap(), Some(vec![0; 10]));
        assert_eq!(reader.next_message().unwrap(), None);
        assert_eq!(read_all(&mut reader, &stream[12..], 100).unwrap().len(), 4);
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn partial_prefix_and_body_wait() {
        let mut reader = FrameReader::new();
        assert_eq!(reader.feed(&[0]), 1);
        assert_eq!(reader.next_message(), Ok(None));
        reader.feed(&[3, b'a', b'b']);
        assert_eq!(reader.next_message(), Ok(None));
        reader.feed(b"c\x00");
        assert_eq!(reader.next_message(), Ok(Some(b"abc".to_vec())));
        assert_eq!(reader.buffered(), 1);
    }

    #[test]
    fn oversized_and_empty_frames_are_errors() {
        let mut reader = FrameReader::with_max_message(512);
        reader.feed(&[0x02, 0x01]);
        assert_eq!(
            reader.next_message(),
            Err(FrameError::DeclaredTooLong {
                declared: 513,
                max: 512
            })
        );
        let mut reader = FrameReader::new();
        reader.feed(&[0, 0]);
        assert_eq!(reader.next_message(), Err(FrameError::Empty));
    }

    #[test]
    fn largest_frame_fits() {
        let message = vec![0x5a; MAX_MESSAGE_LEN];
        let messages = read_all(&mut FrameReader::new(), &frame(&message).unwrap(), 4096).unwrap();
        assert_eq!(messages, [message]);
    }
}
