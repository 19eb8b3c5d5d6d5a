//! Framing of the PostgreSQL message stream, without copying: a frame is a
//! type byte, a 4-byte big-endian length (counting itself) and a body.

/// The largest frame Proctor decodes whole (statements, bind parameters,
/// row descriptions, errors). Row data and COPY data stream at any size.
pub const MAX_DECODED_FRAME: usize = 16 << 20;

/// PostgreSQL's own limit on a message (1 GiB - 1).
pub const MAX_FRAME: usize = 0x3fff_ffff;

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// A whole frame of `total` bytes (type, length and body).
    Complete { tag: u8, total: usize },
    /// The first `have` bytes of a frame of `total` bytes.
    Partial { tag: u8, total: usize },
    /// Not even the 5-byte header yet.
    Header,
    /// A length no PostgreSQL peer sends.
    Invalid { tag: u8, length: u32 },
}

pub fn peek(buf: &[u8]) -> Peek {
    if buf.len() < 5 {
        return Peek::Header;
    }
    let tag = buf[0];
    let length = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if length < 4 || length as usize > MAX_FRAME {
        return Peek::Invalid { tag, length };
    }
    let total = 1 + length as usize;
    if buf.len() >= total { Peek::Complete { tag, total } } else { Peek::Partial { tag, total } }
}

/// A cursor over a frame body.
pub struct Body<'a> {
    bytes: &'a [u8],
}

impl<'a> Body<'a> {
    pub fn new(bytes: &'a [u8]) -> Body<'a> {
        Body { bytes }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.bytes
    }

    /// A NUL-terminated string.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.bytes.iter().position(|&b| b == 0)?;
        let (s, rest) = self.bytes.split_at(end);
        self.bytes = &rest[1..];
        Some(s)
    }

    pub fn i16(&mut self) -> Option<i16> {
        let bytes = self.take(2)?;
        Some(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Option<i32> {
        let bytes = self.take(4)?;
        Some(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(taken)
    }
}

/// Text as the recording stores it: UTF-8, with invalid bytes replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_recognised_whole_partial_or_invalid() {
        let frame = [b'Q', 0, 0, 0, 8, b's', b'e', b'l', 0];
        assert_eq!(peek(&frame), Peek::Complete { tag: b'Q', total: 9 });
        assert_eq!(peek(&frame[..7]), Peek::Partial { tag: b'Q', total: 9 });
        assert_eq!(peek(&frame[..4]), Peek::Header);
        assert_eq!(peek(&[b'Q', 0, 0, 0, 3]), Peek::Invalid { tag: b'Q', length: 3 });
        assert_eq!(peek(&[b'Q', 0x7f, 0xff, 0xff, 0xff]), Peek::Invalid { tag: b'Q', length: 0x7fff_ffff });
    }

    #[test]
    fn bodies_read_without_overrunning() {
        let mut body = Body::new(b"abc\0\x00\x01\x00\x00\x00\x02");
        assert_eq!(body.cstr(), Some(&b"abc"[..]));
        assert_eq!(body.i16(), Some(1));
        assert_eq!(body.i32(), Some(2));
        assert_eq!(body.i32(), None);
        assert_eq!(Body::new(b"no terminator").cstr(), None);
    }
}
