//! An NBD client (the protocol of doc/proto.md in the NBD project): fixed newstyle handshake,
//! NBD_OPT_GO with export info, structured replies, block status with meta contexts
//! (`base:allocation`, `qemu:dirty-bitmap:NAME`), and reads split into many requests in flight.
//! TLS by NBD_OPT_STARTTLS (rustls), with a CA to trust and an optional client certificate.
//! Every reply is checked against the request it answers; a malformed or truncated reply is an
//! error naming what was wrong, never a panic and never bytes in the wrong place.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_FIXED_NEWSTYLE: u32 = 1;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_ABORT: u32 = 2;
const OPT_STARTTLS: u32 = 5;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_BIT: u32 = 1 << 31;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// Transmission flag: the server accepts NBD_CMD_BLOCK_STATUS only if a context was negotiated;
/// read-only is reported here too.
pub const TRANSMIT_READ_ONLY: u16 = 2;
const TRANSMIT_SEND_FLUSH: u16 = 4;
const TRANSMIT_SEND_WRITE_ZEROES: u16 = 64;

/// Requests larger than this are split (QEMU's limit is 32 MiB).
const MAX_REQUEST: u32 = 32 << 20;
/// Requests sent before the first reply is awaited.
const IN_FLIGHT: usize = 16;
/// No reply payload may be larger than this (a read reply carries at most MAX_REQUEST bytes).
const MAX_PAYLOAD: u32 = MAX_REQUEST + 4096;
/// Option replies are small; anything larger is a broken server.
const MAX_OPTION_REPLY: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD {what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("NBD server sent a malformed reply: {0}")]
    Protocol(String),
    #[error("NBD server refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("NBD server failed {what} at offset {offset}: error {errno}{}", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    Server { what: String, offset: u64, errno: u32, message: String },
    #[error("NBD server does not support {0}")]
    Unsupported(String),
    #[error("NBD request out of range: {0}")]
    Range(String),
    #[error("NBD over TLS: {0}")]
    Tls(String),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> NbdError + '_ {
    move |cause| NbdError::Io { what: what.to_string(), cause }
}

fn protocol(msg: impl Into<String>) -> NbdError {
    NbdError::Protocol(msg.into())
}

/// Where the NBD server listens.
#[derive(Clone, Debug)]
pub enum NbdAddress {
    Unix(PathBuf),
    Tcp(String),
    /// TCP upgraded to TLS before any export is named (NBD_OPT_STARTTLS).
    Tls(String, NbdTls),
}

impl std::fmt::Display for NbdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdAddress::Unix(p) => write!(f, "nbd+unix://?socket={}", p.display()),
            NbdAddress::Tcp(a) => write!(f, "nbd://{a}"),
            NbdAddress::Tls(a, _) => write!(f, "nbds://{a}"),
        }
    }
}

/// How to talk TLS to an NBD server: the CA its certificate must chain to, the name it must
/// carry, and our client certificate when the server asks for one (QEMU's default).
#[derive(Clone)]
pub struct NbdTls {
    config: Arc<rustls::ClientConfig>,
    server_name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NbdTls {{ server_name: {:?} }}", self.server_name)
    }
}

impl NbdTls {
    /// `ca_pem`: the CA certificate(s); `client`: certificate chain and private key, in PEM;
    /// `server_name`: the host name or IP address the server's certificate must name.
    pub fn new(ca_pem: &[u8], client: Option<(&[u8], &[u8])>, server_name: &str) -> Result<NbdTls, NbdError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let bad = |what: &str, e: String| NbdError::Tls(format!("{what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| bad("reading the CA certificate", e.to_string()))?;
            roots.add(cert).map_err(|e| bad("adding the CA certificate", e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("the CA certificate", "no PEM certificate found".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("setting up TLS", e.to_string()))?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("reading the client certificate", e.to_string()))?;
                let key =
                    PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("reading the client key", e.to_string()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| bad("the client certificate", e.to_string()))?
            }
        };
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| bad(&format!("the server name {server_name:?}"), e.to_string()))?;
        Ok(NbdTls { config: Arc::new(config), server_name })
    }
}

/// The two halves of a socket as one stream, for TLS to wrap.
struct Duplex {
    r: Box<dyn Read + Send>,
    w: Box<dyn Write + Send>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// One TLS session shared by the client's reading and writing halves. The client uses them from
/// one thread, alternately, so the lock is never contended.
#[derive(Clone)]
struct SharedTls(Arc<Mutex<rustls::StreamOwned<rustls::ClientConnection, Duplex>>>);

impl Read for SharedTls {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().expect("tls lock").read(buf)
    }
}

impl Write for SharedTls {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("tls lock").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().expect("tls lock").flush()
    }
}

/// A run of bytes with the same status in one meta context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockExtent {
    pub length: u32,
    pub flags: u32,
}

pub struct NbdClient {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: BufWriter<Box<dyn Write + Send>>,
    size: u64,
    transmit_flags: u16,
    structured: bool,
    contexts: HashMap<String, u32>,
    max_request: u32,
    next_cookie: u64,
    export: String,
}

/// One chunk of a structured reply, parsed and bounds-checked only against itself.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyChunk {
    None,
    Data { offset: u64, data: Vec<u8> },
    Hole { offset: u64, length: u32 },
    BlockStatus { context: u32, extents: Vec<BlockExtent> },
    Error { errno: u32, message: String, offset: Option<u64> },
}

/// A reply as it comes off the wire: simple (error plus, for reads, data the caller must read)
/// or one structured chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple { cookie: u64, errno: u32 },
    Chunk { cookie: u64, done: bool, chunk: ReplyChunk },
}

fn read_exact<R: Read + ?Sized>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), NbdError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            protocol(format!("connection closed in the middle of {what}"))
        } else {
            NbdError::Io { what: format!("reading {what}"), cause: e }
        }
    })
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// A reply header as it comes off the wire; a structured chunk's payload follows it.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyHead {
    Simple { cookie: u64, errno: u32 },
    Structured { cookie: u64, done: bool, kind: u16, length: u32 },
}

/// Reads one transmission-phase reply header.
pub fn read_reply_head<R: Read + ?Sized>(r: &mut R) -> Result<ReplyHead, NbdError> {
    let mut magic = [0u8; 4];
    read_exact(r, &mut magic, "a reply header")?;
    match u32::from_be_bytes(magic) {
        SIMPLE_REPLY_MAGIC => {
            let mut rest = [0u8; 12];
            read_exact(r, &mut rest, "a simple reply header")?;
            Ok(ReplyHead::Simple { errno: be_u32(&rest[0..4]), cookie: be_u64(&rest[4..12]) })
        }
        STRUCTURED_REPLY_MAGIC => {
            let mut rest = [0u8; 16];
            read_exact(r, &mut rest, "a structured reply header")?;
            let length = be_u32(&rest[12..16]);
            if length > MAX_PAYLOAD {
                return Err(protocol(format!("reply chunk of {length} bytes is over the {MAX_PAYLOAD}-byte limit")));
            }
            Ok(ReplyHead::Structured {
                done: be_u16(&rest[0..2]) & REPLY_FLAG_DONE != 0,
                kind: be_u16(&rest[2..4]),
                cookie: be_u64(&rest[4..12]),
                length,
            })
        }
        m => Err(protocol(format!("unknown reply magic {m:#010x}"))),
    }
}

fn read_payload<R: Read + ?Sized>(r: &mut R, kind: u16, length: u32) -> Result<ReplyChunk, NbdError> {
    let mut payload = vec![0u8; length as usize];
    read_exact(r, &mut payload, "a structured reply payload")?;
    parse_chunk(kind, payload)
}

/// Reads one transmission-phase reply header and, for structured replies, its payload.
pub fn read_reply<R: Read + ?Sized>(r: &mut R) -> Result<Reply, NbdError> {
    match read_reply_head(r)? {
        ReplyHead::Simple { cookie, errno } => Ok(Reply::Simple { cookie, errno }),
        ReplyHead::Structured { cookie, done, kind, length } => {
            Ok(Reply::Chunk { cookie, done, chunk: read_payload(r, kind, length)? })
        }
    }
}

/// Parses a structured reply chunk's payload by its type.
pub fn parse_chunk(kind: u16, mut payload: Vec<u8>) -> Result<ReplyChunk, NbdError> {
    let len = payload.len();
    match kind {
        REPLY_TYPE_NONE if len == 0 => Ok(ReplyChunk::None),
        REPLY_TYPE_NONE => Err(protocol(format!("NONE chunk with a {len}-byte payload"))),
        REPLY_TYPE_OFFSET_DATA => {
            if len < 9 {
                return Err(protocol(format!("OFFSET_DATA chunk of {len} bytes (at least 9)")));
            }
            let offset = be_u64(&payload[..8]);
            payload.drain(..8);
            Ok(ReplyChunk::Data { offset, data: payload })
        }
        REPLY_TYPE_OFFSET_HOLE => {
            if len != 12 {
                return Err(protocol(format!("OFFSET_HOLE chunk of {len} bytes (exactly 12)")));
            }
            let length = be_u32(&payload[8..12]);
            if length == 0 {
                return Err(protocol("OFFSET_HOLE chunk with a zero length"));
            }
            Ok(ReplyChunk::Hole { offset: be_u64(&payload[..8]), length })
        }
        REPLY_TYPE_BLOCK_STATUS => {
            if len < 12 || !(len - 4).is_multiple_of(8) {
                return Err(protocol(format!("BLOCK_STATUS chunk of {len} bytes (4 + a multiple of 8)")));
            }
            let extents = payload[4..]
                .chunks_exact(8)
                .map(|d| BlockExtent { length: be_u32(&d[0..4]), flags: be_u32(&d[4..8]) })
                .collect::<Vec<_>>();
            if extents.iter().any(|e| e.length == 0) {
                return Err(protocol("BLOCK_STATUS descriptor with a zero length"));
            }
            Ok(ReplyChunk::BlockStatus { context: be_u32(&payload[..4]), extents })
        }
        k if k & REPLY_TYPE_ERROR_BIT != 0 => {
            if len < 6 {
                return Err(protocol(format!("error chunk of {len} bytes (at least 6)")));
            }
            let errno = be_u32(&payload[0..4]);
            let msg_len = be_u16(&payload[4..6]) as usize;
            let with_offset = k == REPLY_TYPE_ERROR_BIT | 2;
            let need = 6 + msg_len + if with_offset { 8 } else { 0 };
            // The two defined error types have exactly these fields; later ones may carry more.
            let known = k == REPLY_TYPE_ERROR_BIT | 1 || with_offset;
            if len < need || (known && len != need) {
                return Err(protocol(format!("error chunk of {len} bytes, its fields need {need}")));
            }
            let message = String::from_utf8_lossy(&payload[6..6 + msg_len]).into_owned();
            let offset = with_offset.then(|| be_u64(&payload[6 + msg_len..14 + msg_len]));
            if errno == 0 {
                return Err(protocol("error chunk with error code 0"));
            }
            Ok(ReplyChunk::Error { errno, message, offset })
        }
        k => Err(protocol(format!("unknown reply chunk type {k}"))),
    }
}

struct Pending {
    offset: u64,
    length: u32,
    /// Where this request's bytes go in the caller's buffer.
    at: usize,
    covered: u64,
}

impl NbdClient {
    /// Connects, negotiates structured replies and the given meta contexts, and opens `export`.
    pub fn connect(addr: &NbdAddress, export: &str, meta_contexts: &[&str]) -> Result<NbdClient, NbdError> {
        let what = format!("connecting to {addr}");
        let (r, w): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match addr {
            NbdAddress::Unix(path) => {
                let s = UnixStream::connect(path).map_err(io(&what))?;
                (Box::new(s.try_clone().map_err(io(&what))?), Box::new(s))
            }
            NbdAddress::Tcp(a) | NbdAddress::Tls(a, _) => {
                let s = TcpStream::connect(a).map_err(io(&what))?;
                s.set_nodelay(true).map_err(io(&what))?;
                (Box::new(s.try_clone().map_err(io(&what))?), Box::new(s))
            }
        };
        let tls = match addr {
            NbdAddress::Tls(_, tls) => Some(tls),
            _ => None,
        };
        NbdClient::negotiate(r, w, export, meta_contexts, tls)
    }

    /// The handshake over an already open stream (used by tests with scripted servers too).
    pub fn handshake(
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<NbdClient, NbdError> {
        NbdClient::negotiate(r, w, export, meta_contexts, None)
    }

    /// Asks for TLS, then runs the TLS handshake over the connection; everything after it
    /// (export names included) travels encrypted.
    fn start_tls(&mut self, tls: &NbdTls) -> Result<(), NbdError> {
        self.send_option(OPT_STARTTLS, &[])?;
        let (kind, _) = self.option_reply(OPT_STARTTLS)?;
        if kind != REP_ACK {
            return Err(protocol(format!("unexpected reply {kind} to STARTTLS")));
        }
        if !self.reader.buffer().is_empty() {
            return Err(protocol("plaintext data after the STARTTLS reply"));
        }
        let r = std::mem::replace(&mut self.reader, BufReader::new(Box::new(std::io::empty()))).into_inner();
        let w = std::mem::replace(&mut self.writer, BufWriter::new(Box::new(std::io::sink())))
            .into_inner()
            .map_err(|e| NbdError::Io { what: "sending options".into(), cause: e.into_error() })?;
        let conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
            .map_err(|e| NbdError::Tls(e.to_string()))?;
        let mut stream = rustls::StreamOwned::new(conn, Duplex { r, w });
        // Finish the handshake now, so a bad certificate is reported as that.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(|e| NbdError::Tls(format!("handshake failed: {e}")))?;
        }
        let shared = SharedTls(Arc::new(Mutex::new(stream)));
        self.reader = BufReader::with_capacity(1 << 20, Box::new(shared.clone()));
        self.writer = BufWriter::with_capacity(1 << 16, Box::new(shared));
        Ok(())
    }

    fn negotiate(
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
        export: &str,
        meta_contexts: &[&str],
        tls: Option<&NbdTls>,
    ) -> Result<NbdClient, NbdError> {
        let mut c = NbdClient {
            reader: BufReader::with_capacity(1 << 20, r),
            writer: BufWriter::with_capacity(1 << 16, w),
            size: 0,
            transmit_flags: 0,
            structured: false,
            contexts: HashMap::new(),
            max_request: MAX_REQUEST,
            next_cookie: 1,
            export: export.to_string(),
        };
        let mut hello = [0u8; 18];
        read_exact(&mut c.reader, &mut hello, "the server greeting")?;
        if be_u64(&hello[0..8]) != NBDMAGIC {
            return Err(protocol("greeting does not start with NBDMAGIC (not an NBD server?)"));
        }
        if be_u64(&hello[8..16]) != IHAVEOPT {
            return Err(NbdError::Unsupported("newstyle negotiation (oldstyle server)".into()));
        }
        let server_flags = be_u16(&hello[16..18]);
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Unsupported("fixed newstyle negotiation".into()));
        }
        let mut client_flags = CLIENT_FIXED_NEWSTYLE;
        if server_flags & FLAG_NO_ZEROES != 0 {
            client_flags |= CLIENT_NO_ZEROES;
        }
        c.writer.write_all(&client_flags.to_be_bytes()).map_err(io("sending client flags"))?;
        if let Some(tls) = tls {
            c.start_tls(tls)?;
        }

        // Structured replies: needed for holes, block status and error messages. Over TLS, the
        // server judges our certificate after our side of the handshake is done: the first
        // reply is where a refusal shows.
        let first = c.send_option(OPT_STRUCTURED_REPLY, &[]).and_then(|()| c.option_reply(OPT_STRUCTURED_REPLY));
        let (kind, _) = first.map_err(|e| match (tls, e) {
            (Some(_), e @ (NbdError::Io { .. } | NbdError::Protocol(_))) => NbdError::Tls(format!(
                "the server ended the connection after the TLS handshake ({e}): it requires a client \
                 certificate, or does not accept ours"
            )),
            (_, e) => e,
        })?;
        c.structured = kind == REP_ACK;

        if !meta_contexts.is_empty() {
            if !c.structured {
                return Err(NbdError::Unsupported("structured replies (needed for block status)".into()));
            }
            let mut data = Vec::new();
            data.extend_from_slice(&(export.len() as u32).to_be_bytes());
            data.extend_from_slice(export.as_bytes());
            data.extend_from_slice(&(meta_contexts.len() as u32).to_be_bytes());
            for q in meta_contexts {
                data.extend_from_slice(&(q.len() as u32).to_be_bytes());
                data.extend_from_slice(q.as_bytes());
            }
            c.send_option(OPT_SET_META_CONTEXT, &data)?;
            loop {
                let (kind, payload) = c.option_reply(OPT_SET_META_CONTEXT)?;
                match kind {
                    REP_ACK => break,
                    REP_META_CONTEXT if payload.len() >= 4 => {
                        let id = be_u32(&payload[..4]);
                        let name = String::from_utf8_lossy(&payload[4..]).into_owned();
                        c.contexts.insert(name, id);
                    }
                    k => return Err(protocol(format!("unexpected reply {k} to SET_META_CONTEXT"))),
                }
            }
            for q in meta_contexts {
                if !c.contexts.contains_key(*q) {
                    return Err(NbdError::Refused {
                        what: format!("meta context {q:?} on export {export:?}"),
                        message: "not offered by the server (no such bitmap?)".into(),
                    });
                }
            }
        }

        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        c.send_option(OPT_GO, &data)?;
        let mut got_export = false;
        loop {
            let (kind, payload) = c.option_reply(OPT_GO)?;
            match kind {
                REP_ACK => break,
                REP_INFO if payload.len() >= 2 => match be_u16(&payload[..2]) {
                    INFO_EXPORT if payload.len() == 12 => {
                        c.size = be_u64(&payload[2..10]);
                        c.transmit_flags = be_u16(&payload[10..12]);
                        got_export = true;
                    }
                    INFO_BLOCK_SIZE if payload.len() == 14 => {
                        let max = be_u32(&payload[10..14]);
                        if max >= 512 {
                            c.max_request = max.min(MAX_REQUEST);
                        }
                    }
                    INFO_EXPORT | INFO_BLOCK_SIZE => {
                        return Err(protocol(format!("export info of {} bytes has the wrong length", payload.len())))
                    }
                    _ => {}
                },
                k => return Err(protocol(format!("unexpected reply {k} to GO"))),
            }
        }
        if !got_export {
            return Err(protocol("GO finished without the export's size"));
        }
        c.writer.flush().map_err(io("sending options"))?;
        Ok(c)
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<(), NbdError> {
        let w = &mut self.writer;
        w.write_all(&IHAVEOPT.to_be_bytes())
            .and_then(|()| w.write_all(&option.to_be_bytes()))
            .and_then(|()| w.write_all(&(data.len() as u32).to_be_bytes()))
            .and_then(|()| w.write_all(data))
            .and_then(|()| w.flush())
            .map_err(io("sending an option"))
    }

    /// Reads one option reply; server errors become `Refused` with the server's message.
    fn option_reply(&mut self, option: u32) -> Result<(u32, Vec<u8>), NbdError> {
        let mut head = [0u8; 20];
        read_exact(&mut self.reader, &mut head, "an option reply")?;
        if be_u64(&head[0..8]) != OPT_REPLY_MAGIC {
            return Err(protocol("option reply with a bad magic"));
        }
        if be_u32(&head[8..12]) != option {
            return Err(protocol(format!("reply to option {} while waiting for {option}", be_u32(&head[8..12]))));
        }
        let kind = be_u32(&head[12..16]);
        let len = be_u32(&head[16..20]);
        if len > MAX_OPTION_REPLY {
            return Err(protocol(format!("option reply of {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        read_exact(&mut self.reader, &mut payload, "an option reply payload")?;
        if kind & REP_ERR_BIT != 0 {
            if option == OPT_STRUCTURED_REPLY && kind == REP_ERR_BIT | 1 {
                return Ok((kind, payload));
            }
            let what = match option {
                OPT_GO => format!("export {:?}", self.export),
                OPT_STARTTLS => "TLS (STARTTLS)".to_string(),
                OPT_SET_META_CONTEXT => "the meta contexts".to_string(),
                o => format!("option {o}"),
            };
            let message = String::from_utf8_lossy(&payload).into_owned();
            return Err(NbdError::Refused {
                what,
                message: if message.is_empty() { format!("error {}", kind & !REP_ERR_BIT) } else { message },
            });
        }
        Ok((kind, payload))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.transmit_flags & TRANSMIT_READ_ONLY != 0
    }

    pub fn has_context(&self, name: &str) -> bool {
        self.contexts.contains_key(name)
    }

    fn send_request(&mut self, cmd: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> Result<(), NbdError> {
        let mut req = [0u8; 28];
        req[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req[4..6].copy_from_slice(&flags.to_be_bytes());
        req[6..8].copy_from_slice(&cmd.to_be_bytes());
        req[8..16].copy_from_slice(&cookie.to_be_bytes());
        req[16..24].copy_from_slice(&offset.to_be_bytes());
        req[24..28].copy_from_slice(&length.to_be_bytes());
        self.writer.write_all(&req).map_err(io("sending a request"))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(NbdError::Range(format!(
                "{len} bytes at {offset} on export {:?} of {} bytes",
                self.export, self.size
            )));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`, as many requests in flight as the window allows.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.check_range(offset, buf.len() as u64)?;
        let step = self.max_request as usize;
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut next = 0usize;
        while next < buf.len() || !pending.is_empty() {
            while next < buf.len() && pending.len() < IN_FLIGHT {
                let length = (buf.len() - next).min(step) as u32;
                let cookie = self.next_cookie;
                self.next_cookie += 1;
                self.send_request(CMD_READ, 0, cookie, offset + next as u64, length)?;
                pending.insert(cookie, Pending { offset: offset + next as u64, length, at: next, covered: 0 });
                next += length as usize;
            }
            self.writer.flush().map_err(io("sending read requests"))?;
            self.receive_read(&mut pending, buf)?;
        }
        Ok(())
    }

    /// Handles one reply (or chunk) for a pending read.
    fn receive_read(&mut self, pending: &mut HashMap<u64, Pending>, buf: &mut [u8]) -> Result<(), NbdError> {
        let head = read_reply_head(&mut self.reader)?;
        let cookie = match &head {
            ReplyHead::Simple { cookie, .. } | ReplyHead::Structured { cookie, .. } => *cookie,
        };
        let p = pending.get_mut(&cookie).ok_or_else(|| protocol(format!("reply to unknown request {cookie}")))?;
        let dst = &mut buf[p.at..p.at + p.length as usize];
        let locate = |off: u64, len: u64| -> Result<std::ops::Range<usize>, NbdError> {
            if off < p.offset || off + len > p.offset + p.length as u64 {
                return Err(protocol(format!(
                    "{len} bytes at {off} lie outside the request ({} bytes at {})",
                    p.length, p.offset
                )));
            }
            let s = (off - p.offset) as usize;
            Ok(s..s + len as usize)
        };
        let reply = match head {
            // Data goes straight from the socket into the caller's buffer: no copy, no allocation.
            ReplyHead::Structured { done, kind: REPLY_TYPE_OFFSET_DATA, length, .. } => {
                if length < 9 {
                    return Err(protocol(format!("OFFSET_DATA chunk of {length} bytes (at least 9)")));
                }
                let mut off = [0u8; 8];
                read_exact(&mut self.reader, &mut off, "a data chunk's offset")?;
                let r = locate(u64::from_be_bytes(off), length as u64 - 8)?;
                read_exact(&mut self.reader, &mut dst[r], "read data")?;
                p.covered += length as u64 - 8;
                Reply::Chunk { cookie, done, chunk: ReplyChunk::None }
            }
            ReplyHead::Structured { done, kind, length, .. } => {
                Reply::Chunk { cookie, done, chunk: read_payload(&mut self.reader, kind, length)? }
            }
            ReplyHead::Simple { errno, .. } => Reply::Simple { cookie, errno },
        };
        let done = match reply {
            Reply::Simple { errno, .. } => {
                if errno != 0 {
                    return Err(NbdError::Server {
                        what: "a read".into(),
                        offset: p.offset,
                        errno,
                        message: String::new(),
                    });
                }
                read_exact(&mut self.reader, dst, "read data")?;
                p.covered = p.length as u64;
                true
            }
            Reply::Chunk { done, chunk, .. } => {
                match chunk {
                    ReplyChunk::Data { offset, data } => {
                        let r = locate(offset, data.len() as u64)?;
                        dst[r].copy_from_slice(&data);
                        p.covered += data.len() as u64;
                    }
                    ReplyChunk::Hole { offset, length } => {
                        let r = locate(offset, length as u64)?;
                        dst[r].fill(0);
                        p.covered += length as u64;
                    }
                    ReplyChunk::Error { errno, message, offset } => {
                        return Err(NbdError::Server {
                            what: "a read".into(),
                            offset: offset.unwrap_or(p.offset),
                            errno,
                            message,
                        })
                    }
                    ReplyChunk::None => {}
                    ReplyChunk::BlockStatus { .. } => return Err(protocol("block status chunk in reply to a read")),
                }
                done
            }
        };
        if done {
            if p.covered != p.length as u64 {
                return Err(protocol(format!(
                    "read of {} bytes at {} answered with {} bytes",
                    p.length, p.offset, p.covered
                )));
            }
            pending.remove(&cookie);
        }
        Ok(())
    }

    /// Writes `data` at `offset`, as many requests in flight as the window allows.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        self.check_writable(offset, data.len() as u64)?;
        let step = self.max_request as usize;
        let mut next = 0usize;
        let mut pending = Vec::new();
        while next < data.len() || !pending.is_empty() {
            while next < data.len() && pending.len() < IN_FLIGHT {
                let len = (data.len() - next).min(step);
                let cookie = self.next_cookie;
                self.next_cookie += 1;
                self.send_request(CMD_WRITE, 0, cookie, offset + next as u64, len as u32)?;
                self.writer.write_all(&data[next..next + len]).map_err(io("sending write data"))?;
                pending.push((cookie, offset + next as u64));
                next += len;
            }
            self.writer.flush().map_err(io("sending write requests"))?;
            self.receive_ack(&mut pending, "a write")?;
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeros; the server may deallocate them (holes stay
    /// holes).
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), NbdError> {
        if self.transmit_flags & TRANSMIT_SEND_WRITE_ZEROES == 0 {
            return Err(NbdError::Unsupported("WRITE_ZEROES".into()));
        }
        self.check_writable(offset, len)?;
        let mut pending = Vec::new();
        let mut pos = 0u64;
        while pos < len || !pending.is_empty() {
            while pos < len && pending.len() < IN_FLIGHT {
                let n = (len - pos).min(1 << 30);
                let cookie = self.next_cookie;
                self.next_cookie += 1;
                self.send_request(CMD_WRITE_ZEROES, 0, cookie, offset + pos, n as u32)?;
                pending.push((cookie, offset + pos));
                pos += n;
            }
            self.writer.flush().map_err(io("sending write-zeroes requests"))?;
            self.receive_ack(&mut pending, "a write of zeroes")?;
        }
        Ok(())
    }

    /// Asks the server to make every completed write durable.
    pub fn flush(&mut self) -> Result<(), NbdError> {
        if self.transmit_flags & TRANSMIT_SEND_FLUSH == 0 {
            return Ok(());
        }
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.send_request(CMD_FLUSH, 0, cookie, 0, 0)?;
        self.writer.flush().map_err(io("sending a flush"))?;
        let mut pending = vec![(cookie, 0)];
        self.receive_ack(&mut pending, "a flush")
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        if self.read_only() {
            return Err(NbdError::Refused {
                what: format!("writing to export {:?}", self.export),
                message: "the export is read-only".into(),
            });
        }
        self.check_range(offset, len)
    }

    /// Waits for one reply to a pending request that carries no data (write, zeroes, flush).
    fn receive_ack(&mut self, pending: &mut Vec<(u64, u64)>, what: &str) -> Result<(), NbdError> {
        let (cookie, done, error) = match read_reply(&mut self.reader)? {
            Reply::Simple { cookie, errno } => (cookie, true, (errno != 0).then(|| (errno, String::new(), None))),
            Reply::Chunk { cookie, done, chunk: ReplyChunk::None } => (cookie, done, None),
            Reply::Chunk { cookie, done, chunk: ReplyChunk::Error { errno, message, offset } } => {
                (cookie, done, Some((errno, message, offset)))
            }
            Reply::Chunk { .. } => return Err(protocol(format!("data in the reply to {what}"))),
        };
        let i = pending
            .iter()
            .position(|(c, _)| *c == cookie)
            .ok_or_else(|| protocol(format!("reply to unknown request {cookie}")))?;
        if let Some((errno, message, at)) = error {
            return Err(NbdError::Server { what: what.into(), offset: at.unwrap_or(pending[i].1), errno, message });
        }
        if done {
            pending.swap_remove(i);
        }
        Ok(())
    }

    /// Status of the range starting at `offset` in meta context `context`: one or more extents
    /// covering at least the start of the range (the server may answer for less than asked).
    pub fn block_status(&mut self, context: &str, offset: u64, len: u32) -> Result<Vec<BlockExtent>, NbdError> {
        let id = *self
            .contexts
            .get(context)
            .ok_or_else(|| NbdError::Unsupported(format!("meta context {context:?} (not negotiated)")))?;
        self.check_range(offset, len as u64)?;
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.send_request(CMD_BLOCK_STATUS, 0, cookie, offset, len)?;
        self.writer.flush().map_err(io("sending a block status request"))?;
        let mut out = None;
        loop {
            match read_reply(&mut self.reader)? {
                Reply::Chunk { cookie: c, done, chunk } if c == cookie => {
                    match chunk {
                        ReplyChunk::BlockStatus { context: cid, extents } if cid == id => out = Some(extents),
                        ReplyChunk::BlockStatus { .. } | ReplyChunk::None => {}
                        ReplyChunk::Error { errno, message, offset: o } => {
                            return Err(NbdError::Server {
                                what: format!("block status of {context}"),
                                offset: o.unwrap_or(offset),
                                errno,
                                message,
                            })
                        }
                        _ => return Err(protocol("data chunk in reply to block status")),
                    }
                    if done {
                        break;
                    }
                }
                Reply::Simple { cookie: c, errno } if c == cookie && errno != 0 => {
                    return Err(NbdError::Server {
                        what: format!("block status of {context}"),
                        offset,
                        errno,
                        message: String::new(),
                    })
                }
                _ => return Err(protocol("unexpected reply to block status")),
            }
        }
        let extents = out.ok_or_else(|| protocol(format!("block status reply without context {context}")))?;
        let total: u64 = extents.iter().map(|e| e.length as u64).sum();
        if total > len as u64 && extents.len() > 1 {
            return Err(protocol(format!("block status covers {total} bytes, more than the {len} asked")));
        }
        Ok(extents)
    }

    /// Ends the session politely.
    pub fn disconnect(mut self) -> Result<(), NbdError> {
        let cookie = self.next_cookie;
        self.send_request(CMD_DISC, 0, cookie, 0, 0)?;
        self.writer.flush().map_err(io("disconnecting"))
    }

    /// Abandons negotiation (used when a caller only probes an export).
    pub fn abort_option(&mut self) -> Result<(), NbdError> {
        self.send_option(OPT_ABORT, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(kind: u16, cookie: u64, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_each_chunk_type() {
        let mut p = 4096u64.to_be_bytes().to_vec();
        p.extend_from_slice(b"abc");
        let r = read_reply(&mut &chunk(1, 7, 0, &p)[..]).unwrap();
        assert_eq!(
            r,
            Reply::Chunk { cookie: 7, done: false, chunk: ReplyChunk::Data { offset: 4096, data: b"abc".to_vec() } }
        );
        let mut h = 10u64.to_be_bytes().to_vec();
        h.extend_from_slice(&5u32.to_be_bytes());
        assert!(matches!(
            read_reply(&mut &chunk(2, 1, 1, &h)[..]).unwrap(),
            Reply::Chunk { done: true, chunk: ReplyChunk::Hole { offset: 10, length: 5 }, .. }
        ));
        let mut bs = 3u32.to_be_bytes().to_vec();
        bs.extend_from_slice(&65536u32.to_be_bytes());
        bs.extend_from_slice(&1u32.to_be_bytes());
        assert!(matches!(
            read_reply(&mut &chunk(5, 1, 1, &bs)[..]).unwrap(),
            Reply::Chunk { chunk: ReplyChunk::BlockStatus { context: 3, .. }, .. }
        ));
        let mut e = 5u32.to_be_bytes().to_vec();
        e.extend_from_slice(&4u16.to_be_bytes());
        e.extend_from_slice(b"oops");
        assert!(matches!(
            read_reply(&mut &chunk(0x8001, 1, 1, &e)[..]).unwrap(),
            Reply::Chunk { chunk: ReplyChunk::Error { errno: 5, .. }, .. }
        ));
    }

    #[test]
    fn malformed_and_truncated_replies_are_errors() {
        assert!(read_reply(&mut &b"\x12\x34\x56\x78"[..]).is_err());
        let good = chunk(2, 1, 1, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4]);
        for cut in 0..good.len() {
            let e = read_reply(&mut &good[..cut]).unwrap_err();
            assert!(e.to_string().contains("connection closed") || cut == 0, "{e}");
        }
        assert!(read_reply(&mut &chunk(2, 1, 1, &[0; 11])[..]).is_err());
        assert!(read_reply(&mut &chunk(2, 1, 1, &[0; 12])[..]).is_err(), "zero-length hole");
        assert!(read_reply(&mut &chunk(5, 1, 1, &[0; 9])[..]).is_err());
        assert!(read_reply(&mut &chunk(99, 1, 1, &[])[..]).is_err());
        let mut huge = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        let e = read_reply(&mut &huge[..]).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]
        /// Fuzzes the reply parser: arbitrary bytes, and valid replies with bytes flipped or
        /// cut, never panic and never ask for more memory than the payload limit.
        #[test]
        fn reply_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), kind in 0u16..8, flip in any::<(usize, u8)>()) {
            let _ = read_reply(&mut &bytes[..]);
            let mut framed = chunk(kind | if flip.1 & 1 == 1 { 0x8000 } else { 0 }, 1, 1, &bytes);
            let i = flip.0 % framed.len();
            framed[i] ^= flip.1;
            let _ = read_reply(&mut &framed[..]);
            let cut = flip.0 % (framed.len() + 1);
            let _ = read_reply(&mut &framed[..cut]);
        }
    }
}
