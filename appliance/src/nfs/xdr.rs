//! XDR (RFC 4506), the part ONC RPC, MOUNT, the portmapper and NFSv3 use: big-endian 32- and
//! 64-bit integers, booleans, and variable-length opaque data and strings padded to four bytes.
//! Decoding never allocates what a length field claims: a length is checked against its bound
//! and against the bytes actually left before anything is taken.

#[derive(Debug, PartialEq, Eq)]
pub enum XdrError {
    /// The message ends before the item.
    Truncated,
    /// A length above the item's bound.
    TooLong { len: u32, max: u32 },
    /// A boolean that is neither 0 nor 1.
    BadBool(u32),
}

impl std::fmt::Display for XdrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdrError::Truncated => f.write_str("the message ends inside an item"),
            XdrError::TooLong { len, max } => write!(f, "a length of {len} where at most {max} is allowed"),
            XdrError::BadBool(v) => write!(f, "{v} is not a boolean"),
        }
    }
}

pub type Result<T> = std::result::Result<T, XdrError>;

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Reads items off a received message.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(XdrError::Truncated)?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn bool(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(XdrError::BadBool(v)),
        }
    }

    /// Fixed-length opaque data of `n` bytes (plus padding).
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8]> {
        let data = self.take(padded(n))?;
        Ok(&data[..n])
    }

    /// Variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, max: u32) -> Result<&'a [u8]> {
        let len = self.u32()?;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        self.fixed(len as usize)
    }

    /// A string of at most `max` bytes; bytes that are not UTF-8 are replaced (names we serve
    /// are ours, so such a name matches nothing).
    pub fn string(&mut self, max: u32) -> Result<String> {
        Ok(String::from_utf8_lossy(self.opaque(max)?).into_owned())
    }

    /// What is left unread.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

/// Builds a reply.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }

    pub fn fixed(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + padded(data.len()) - data.len(), 0);
        self
    }

    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        self.u32(data.len() as u32).fixed(data)
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.opaque(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_with_padding() {
        let mut w = Writer::default();
        w.u32(7).u64(1 << 40).bool(true).opaque(b"abcde").string("fh").fixed(&[9; 3]);
        assert_eq!(w.buf.len(), 4 + 8 + 4 + (4 + 8) + (4 + 4) + 4);
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.u32(), Ok(7));
        assert_eq!(r.u64(), Ok(1 << 40));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.opaque(16), Ok(&b"abcde"[..]));
        assert_eq!(r.string(16).as_deref(), Ok("fh"));
        assert_eq!(r.fixed(3), Ok(&[9u8; 3][..]));
        assert!(r.rest().is_empty());
    }

    #[test]
    fn lengths_are_checked_before_anything_is_taken() {
        // A length of 4 GiB in a 12-byte message: refused by its bound, then by what is left.
        let mut w = Writer::default();
        w.u32(u32::MAX).u64(0);
        assert_eq!(Reader::new(&w.buf).opaque(64), Err(XdrError::TooLong { len: u32::MAX, max: 64 }));
        assert_eq!(Reader::new(&w.buf).opaque(u32::MAX), Err(XdrError::Truncated));
        assert_eq!(Reader::new(&[0, 0, 0, 2]).bool(), Err(XdrError::BadBool(2)));
        assert_eq!(Reader::new(&[0, 0]).u32(), Err(XdrError::Truncated));
        // Padding counts: 5 bytes of data need 8.
        assert_eq!(Reader::new(&[0, 0, 0, 5, 1, 2, 3, 4, 5]).opaque(8), Err(XdrError::Truncated));
    }
}
