//! ONC RPC version 2 (RFC 5531) over TCP: record marking, calls, and the replies the server
//! sends (accepted with a result or an error, denied for credentials).

use super::xdr::{Reader, Writer, XdrError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest record accepted: a WRITE of the largest size we offer, with its header.
pub const MAX_RECORD: usize = super::MAX_IO as usize + 4096;

pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;

/// Why a call is refused before its procedure runs.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The program is not served here.
    ProgUnavail,
    /// The program is served in versions low..=high.
    ProgMismatch(u32, u32),
    ProcUnavail,
    /// The arguments do not decode.
    GarbageArgs,
    /// The credential's flavor is not accepted (AUTH_TOOWEAK).
    TooWeak,
    /// The credential does not decode (AUTH_BADCRED).
    BadCred,
    /// Not RPC version 2 (RPC_MISMATCH).
    RpcMismatch,
}

/// The AUTH_SYS credential's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// One decoded call: its header; the arguments are what follows.
#[derive(Debug)]
pub struct Call<'a> {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    /// The AUTH_SYS identity, if the call carries one.
    pub caller: Option<Caller>,
    pub args: Reader<'a>,
}

/// Reads one record (all its fragments); None at a clean end of stream. A record longer than
/// MAX_RECORD is an error: the connection is dropped without reading it.
pub async fn read_record<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    loop {
        let mut head = [0u8; 4];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && record.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        }
        let word = u32::from_be_bytes(head);
        let (last, len) = (word & 0x8000_0000 != 0, (word & 0x7fff_ffff) as usize);
        if record.len() + len > MAX_RECORD {
            return Err(std::io::Error::other(format!("a record of over {MAX_RECORD} bytes")));
        }
        // Grown as the bytes arrive: a header alone claims no memory.
        let start = record.len();
        (&mut *r).take(len as u64).read_to_end(&mut record).await?;
        if record.len() - start != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if last {
            return Ok(Some(record));
        }
    }
}

/// Sends one record as a single fragment.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(0x8000_0000 | body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await
}

/// Decodes a call's header. Err(xid, refusal) for a call that gets an error reply; a message
/// that is not even a call (no xid) is Err(None, …): the connection is dropped.
pub fn parse_call(record: &[u8]) -> Result<Call<'_>, (Option<u32>, Refusal)> {
    let mut r = Reader::new(record);
    let xid = r.u32().map_err(|_| (None, Refusal::GarbageArgs))?;
    let head =
        (|| -> Result<(u32, u32, u32, u32, u32), XdrError> { Ok((r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?)) })(
        );
    let Ok((mtype, rpcvers, prog, vers, proc_)) = head else { return Err((Some(xid), Refusal::GarbageArgs)) };
    if mtype != 0 {
        return Err((None, Refusal::GarbageArgs));
    }
    if rpcvers != 2 {
        return Err((Some(xid), Refusal::RpcMismatch));
    }
    let cred = (|| -> Result<(u32, Vec<u8>), XdrError> {
        let flavor = r.u32()?;
        let body = r.opaque(400)?.to_vec();
        let _verf_flavor = r.u32()?;
        let _verf = r.opaque(400)?;
        Ok((flavor, body))
    })();
    let Ok((flavor, body)) = cred else { return Err((Some(xid), Refusal::BadCred)) };
    let caller = match flavor {
        AUTH_SYS => Some(auth_sys(&body).map_err(|_| (Some(xid), Refusal::BadCred))?),
        AUTH_NONE => None,
        _ => return Err((Some(xid), Refusal::TooWeak)),
    };
    Ok(Call { xid, prog, vers, proc_, caller, args: r })
}

/// stamp, machine name (≤255), uid, gid, up to 16 more gids.
fn auth_sys(body: &[u8]) -> Result<Caller, XdrError> {
    let mut r = Reader::new(body);
    let _stamp = r.u32()?;
    let _machine = r.opaque(255)?;
    let (uid, gid) = (r.u32()?, r.u32()?);
    let n = r.u32()?;
    if n > 16 {
        return Err(XdrError::TooLong { len: n, max: 16 });
    }
    for _ in 0..n {
        r.u32()?;
    }
    Ok(Caller { uid, gid })
}

/// A successful reply's header; the result follows.
pub fn accepted(xid: u32) -> Writer {
    let mut w = Writer::default();
    // REPLY, MSG_ACCEPTED, verifier AUTH_NONE, SUCCESS.
    w.u32(xid).u32(1).u32(0).u32(AUTH_NONE).u32(0).u32(0);
    w
}

/// The reply to a refused call.
pub fn refused(xid: u32, why: &Refusal) -> Writer {
    let mut w = Writer::default();
    w.u32(xid).u32(1);
    match why {
        // MSG_DENIED, RPC_MISMATCH, versions 2 to 2.
        Refusal::RpcMismatch => {
            w.u32(1).u32(0).u32(2).u32(2);
        }
        Refusal::TooWeak | Refusal::BadCred => {
            // MSG_DENIED, AUTH_ERROR, AUTH_TOOWEAK (5) or AUTH_BADCRED (1).
            w.u32(1).u32(1).u32(if *why == Refusal::TooWeak { 5 } else { 1 });
        }
        other => {
            w.u32(0).u32(AUTH_NONE).u32(0);
            match other {
                Refusal::ProgUnavail => w.u32(1),
                Refusal::ProgMismatch(low, high) => w.u32(2).u32(*low).u32(*high),
                Refusal::ProcUnavail => w.u32(3),
                _ => w.u32(4),
            };
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(flavor: u32, cred: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(42).u32(0).u32(2).u32(100003).u32(3).u32(1).u32(flavor).opaque(cred).u32(0).opaque(&[]);
        w.u64(99);
        w.buf
    }

    #[test]
    fn calls_decode_with_their_credential_and_bad_ones_are_refused_by_kind() {
        let mut cred = Writer::default();
        cred.u32(1).string("host").u32(64055).u32(64055).u32(1).u32(27);
        let record = call(AUTH_SYS, &cred.buf);
        let mut c = parse_call(&record).unwrap();
        assert_eq!((c.xid, c.prog, c.vers, c.proc_), (42, 100003, 3, 1));
        assert_eq!(c.caller, Some(Caller { uid: 64055, gid: 64055 }));
        assert_eq!(c.args.u64(), Ok(99));
        assert_eq!(parse_call(&call(6, &[])).unwrap_err(), (Some(42), Refusal::TooWeak));
        assert_eq!(parse_call(&call(AUTH_SYS, &[0, 0, 0, 1])).unwrap_err(), (Some(42), Refusal::BadCred));
        // Seventeen more groups: refused, not allocated.
        let mut many = Writer::default();
        many.u32(1).string("h").u32(0).u32(0).u32(1 << 30);
        assert_eq!(parse_call(&call(AUTH_SYS, &many.buf)).unwrap_err(), (Some(42), Refusal::BadCred));
        // A reply sent to us, or a truncated header.
        let reply = [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 2], [0; 4], [0; 4], [0; 4]].concat();
        assert_eq!(parse_call(&reply).unwrap_err().0, None);
        let v3 = [[0, 0, 0, 1], [0; 4], [0, 0, 0, 3], [0; 4], [0; 4], [0; 4]].concat();
        assert_eq!(parse_call(&v3).unwrap_err(), (Some(1), Refusal::RpcMismatch));
        assert_eq!(
            refused(1, &Refusal::RpcMismatch).buf,
            [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1], [0; 4], [0, 0, 0, 2], [0, 0, 0, 2]].concat()
        );
        assert_eq!(parse_call(&record[..10]).unwrap_err(), (Some(42), Refusal::GarbageArgs));
    }

    #[tokio::test]
    async fn records_join_their_fragments_and_oversized_ones_are_refused_unread() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&3u32.to_be_bytes());
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&(0x8000_0000u32 | 2).to_be_bytes());
        wire.extend_from_slice(b"de");
        let mut r = &wire[..];
        assert_eq!(read_record(&mut r).await.unwrap().as_deref(), Some(&b"abcde"[..]));
        assert_eq!(read_record(&mut r).await.unwrap(), None);
        let huge = (0x8000_0000u32 | 0x7fff_ffff).to_be_bytes();
        assert!(read_record(&mut &huge[..]).await.is_err());
        let mut out = Vec::new();
        write_record(&mut out, b"xy").await.unwrap();
        assert_eq!(out, [0x80, 0, 0, 2, b'x', b'y']);
    }
}
