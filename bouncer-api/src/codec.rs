//! Frame types, encoders and incremental decoders (see `PROTOCOL.md`).
//!
//! Every frame is `len: u16 BE` followed by `len` bytes: `version u8`, `kind u8`,
//! `id u32 BE` and a payload whose layout depends on the kind. All integers are
//! big-endian.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Buf, BufMut, BytesMut};

/// The protocol version this crate speaks (byte 2 of every frame).
pub const VERSION: u8 = 1;
/// Largest frame on the wire, the 2-byte length prefix included.
pub const MAX_FRAME_LEN: usize = 1024;
/// Size of the length prefix.
pub const LEN_PREFIX: usize = 2;
/// Bytes counted by the length prefix before the payload: version, kind, id.
pub const HEADER_LEN: usize = 6;
/// Smallest legal value of the length prefix (a frame without payload).
pub const MIN_DECLARED_LEN: usize = HEADER_LEN;
/// Largest legal value of the length prefix.
pub const MAX_DECLARED_LEN: usize = MAX_FRAME_LEN - LEN_PREFIX;
/// Longest `origin` an encoder writes (longer ones are truncated).
pub const MAX_ORIGIN_LEN: usize = 255;
/// Longest `scenario` an encoder writes (longer ones are truncated).
pub const MAX_SCENARIO_LEN: usize = 495;
/// Longest decision `type` an encoder writes (longer ones are truncated).
pub const MAX_TYPE_LEN: usize = 255;
/// Longest error `message` an encoder writes (longer ones are truncated).
pub const MAX_MESSAGE_LEN: usize = 255;

/// Wire size of a lookup request for an IPv4 address.
pub const LOOKUP_V4_FRAME_LEN: usize = LEN_PREFIX + HEADER_LEN + 1 + 4;
/// Wire size of a lookup request for an IPv6 address.
pub const LOOKUP_V6_FRAME_LEN: usize = LEN_PREFIX + HEADER_LEN + 1 + 16;

/// Fixed part of a lookup answer payload: status, remediation, flags, expires_in_s,
/// and the three string length fields.
const ANSWER_FIXED_LEN: usize = 1 + 1 + 1 + 4 + 1 + 2 + 1;

// The three strings at their maximum fill a frame exactly.
const _: () = assert!(
    LEN_PREFIX + HEADER_LEN + ANSWER_FIXED_LEN + MAX_ORIGIN_LEN + MAX_SCENARIO_LEN + MAX_TYPE_LEN
        == MAX_FRAME_LEN
);

/// Frame kinds (byte 3 of every frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Request: look up one address.
    Lookup = 0x01,
    /// Request: liveness check.
    Ping = 0x02,
    /// Response to [`Kind::Lookup`].
    LookupAnswer = 0x81,
    /// Response to [`Kind::Ping`].
    Pong = 0x82,
    /// Response: the request (or the connection) failed.
    Error = 0xFF,
}

impl Kind {
    /// The kind for a wire byte, if it is one.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            0x01 => Kind::Lookup,
            0x02 => Kind::Ping,
            0x81 => Kind::LookupAnswer,
            0x82 => Kind::Pong,
            0xFF => Kind::Error,
            _ => return None,
        })
    }
}

/// What the caller should do with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Remediation {
    /// No decision applies (or protection is disabled).
    #[default]
    Allow = 0,
    /// Block the request.
    Ban = 1,
    /// Ask for a captcha.
    Captcha = 2,
    /// Rate limit (HTTP 429).
    Throttle = 3,
    /// Another decision type; the raw type is in [`LookupAnswer::decision_type`].
    Other = 4,
}

impl Remediation {
    /// All values, in wire order.
    pub const ALL: [Remediation; 5] = [
        Remediation::Allow,
        Remediation::Ban,
        Remediation::Captcha,
        Remediation::Throttle,
        Remediation::Other,
    ];

    /// The remediation for a wire byte, if it is one.
    pub fn from_u8(v: u8) -> Option<Remediation> {
        Remediation::ALL.get(usize::from(v)).copied()
    }

    /// Lower-case name, as used in `PROTOCOL.md` and the test vectors.
    pub fn as_str(self) -> &'static str {
        match self {
            Remediation::Allow => "allow",
            Remediation::Ban => "ban",
            Remediation::Captcha => "captcha",
            Remediation::Throttle => "throttle",
            Remediation::Other => "other",
        }
    }

    /// Inverse of [`Remediation::as_str`].
    pub fn from_name(name: &str) -> Option<Remediation> {
        Remediation::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Remediation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a lookup answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Status {
    /// The daemon answered from its decision set.
    #[default]
    Ok = 0,
    /// The daemon has no decision set yet (no persisted snapshot and no successful
    /// pull). The remediation is still the daemon's answer; a client may apply its
    /// own fail-open/fail-closed policy instead.
    NotReady = 1,
}

impl Status {
    /// The status for a wire byte, if it is one.
    pub fn from_u8(v: u8) -> Option<Status> {
        match v {
            0 => Some(Status::Ok),
            1 => Some(Status::NotReady),
            _ => None,
        }
    }

    /// Lower-case name, as used in `PROTOCOL.md` and the test vectors.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotReady => "not_ready",
        }
    }

    /// Inverse of [`Status::as_str`].
    pub fn from_name(name: &str) -> Option<Status> {
        [Status::Ok, Status::NotReady]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// Flag bits of a lookup answer. Unknown bits are kept as received (and ignored).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// Bit 0: protection is disabled; the answer is allow whatever the decisions say.
    pub const BYPASSED: Flags = Flags(0x01);
    /// Bit 1: the daemon cannot reach LAPI and runs fail-closed; the verdict is not
    /// backed by a decision.
    pub const FAIL_CLOSED: Flags = Flags(0x02);
    /// No flag set.
    pub const NONE: Flags = Flags(0);

    /// Flags from raw bits (unknown bits are kept).
    pub const fn from_bits(bits: u8) -> Flags {
        Flags(bits)
    }
    /// Raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with the bits of `other` set.
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    /// Protection disabled (bit 0).
    pub const fn is_bypassed(self) -> bool {
        self.contains(Flags::BYPASSED)
    }
    /// Fail-closed verdict because LAPI is unreachable (bit 1).
    pub const fn is_fail_closed(self) -> bool {
        self.contains(Flags::FAIL_CLOSED)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({:#04x}", self.0)?;
        if self.is_bypassed() {
            f.write_str(" bypassed")?;
        }
        if self.is_fail_closed() {
            f.write_str(" fail_closed")?;
        }
        f.write_str(")")
    }
}

/// Error codes carried by an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// The request's version byte is not one the server speaks. Connection closed.
    BadVersion = 1,
    /// Unknown request kind. Connection closed.
    BadKind = 2,
    /// Bad length, truncated payload or trailing bytes. Connection closed.
    BadFrame = 3,
    /// Address family other than 4 or 6. Connection closed.
    BadFamily = 4,
    /// The server is overloaded; this request was not answered. Retry later.
    Busy = 5,
    /// The server failed to answer this request.
    Internal = 6,
}

impl ErrorCode {
    /// All values, in wire order.
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::BadVersion,
        ErrorCode::BadKind,
        ErrorCode::BadFrame,
        ErrorCode::BadFamily,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ];

    /// The code for a wire byte, if it is one.
    pub fn from_u8(v: u8) -> Option<ErrorCode> {
        ErrorCode::ALL.get(usize::from(v).wrapping_sub(1)).copied()
    }

    /// Lower-case name, as used in `PROTOCOL.md` and the test vectors.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadVersion => "bad_version",
            ErrorCode::BadKind => "bad_kind",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadFamily => "bad_family",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
        }
    }

    /// Inverse of [`ErrorCode::as_str`].
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Whether the server closes the connection after sending this code.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::BadVersion | ErrorCode::BadKind | ErrorCode::BadFrame | ErrorCode::BadFamily
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request, client to server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// What to do with `addr`. Encoders send IPv4-mapped IPv6 addresses as IPv4, and
    /// the decoder turns a mapped address sent as family 6 into IPv4.
    Lookup { id: u32, addr: IpAddr },
    /// Liveness check; answered by [`Response::Pong`].
    Ping { id: u32 },
}

impl Request {
    /// The request id, echoed by the answer.
    pub fn id(&self) -> u32 {
        match *self {
            Request::Lookup { id, .. } | Request::Ping { id } => id,
        }
    }
}

/// The verdict for one address.
///
/// `S` is the string type: `String` for decoded answers, `&str` (or anything
/// `AsRef<str>`) to encode an answer without allocating.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LookupAnswer<S = String> {
    pub status: Status,
    pub remediation: Remediation,
    pub flags: Flags,
    /// Seconds until the deciding decision expires (rounded up); 0 for allow.
    pub expires_in_s: u32,
    /// Origin of the deciding decision (`crowdsec`, `cscli`, `CAPI`, `lists`, ...).
    pub origin: S,
    /// Scenario (or reason) of the deciding decision.
    pub scenario: S,
    /// Raw decision type (`ban`, `captcha`, `throttle`, or anything for `Other`).
    pub decision_type: S,
}

impl<S: Default> LookupAnswer<S> {
    /// Allow, nothing else set.
    pub fn allow() -> Self {
        LookupAnswer::default()
    }
}

impl<S: AsRef<str>> LookupAnswer<S> {
    /// A borrowed view of this answer (for encoding without cloning strings).
    pub fn as_borrowed(&self) -> LookupAnswer<&str> {
        LookupAnswer {
            status: self.status,
            remediation: self.remediation,
            flags: self.flags,
            expires_in_s: self.expires_in_s,
            origin: self.origin.as_ref(),
            scenario: self.scenario.as_ref(),
            decision_type: self.decision_type.as_ref(),
        }
    }

    /// An owned copy of this answer.
    pub fn to_owned_answer(&self) -> LookupAnswer<String> {
        LookupAnswer {
            status: self.status,
            remediation: self.remediation,
            flags: self.flags,
            expires_in_s: self.expires_in_s,
            origin: self.origin.as_ref().to_owned(),
            scenario: self.scenario.as_ref().to_owned(),
            decision_type: self.decision_type.as_ref().to_owned(),
        }
    }
}

/// A response, server to client. `S` as in [`LookupAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Response<S = String> {
    /// Answer to [`Request::Lookup`].
    Lookup { id: u32, answer: LookupAnswer<S> },
    /// Answer to [`Request::Ping`].
    Pong { id: u32 },
    /// The request `id` failed (or, with id 0, the connection did).
    Error {
        id: u32,
        code: ErrorCode,
        message: S,
    },
}

impl<S> Response<S> {
    /// The id of the request this answers (0 for a connection-level error).
    pub fn id(&self) -> u32 {
        match *self {
            Response::Lookup { id, .. } | Response::Pong { id } | Response::Error { id, .. } => id,
        }
    }
}

/// Why bytes are not a valid frame. After any of these the stream is out of sync:
/// answer [`FrameError::error_response`] (server side) and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is below 6 or above 1022.
    #[error("declared frame length {declared} outside {MIN_DECLARED_LEN}..={MAX_DECLARED_LEN}")]
    BadLength { declared: u16 },
    /// Unsupported version byte.
    #[error("unsupported protocol version {version} (this side speaks {VERSION})")]
    BadVersion { id: u32, version: u8 },
    /// Kind unknown, or not valid in this direction.
    #[error("unknown frame kind {kind:#04x}")]
    BadKind { id: u32, kind: u8 },
    /// The payload ends before its layout does.
    #[error("payload of kind {kind:#04x} is truncated")]
    Truncated { id: u32, kind: u8 },
    /// The payload goes on after its layout ends.
    #[error("payload of kind {kind:#04x} has trailing bytes")]
    TrailingBytes { id: u32, kind: u8 },
    /// Address family other than 4 or 6.
    #[error("bad address family {family}")]
    BadFamily { id: u32, family: u8 },
    /// A string field is not UTF-8.
    #[error("field {field} is not valid UTF-8")]
    BadUtf8 { id: u32, field: &'static str },
    /// An enumerated field (status, remediation, error code) has an unknown value.
    #[error("field {field} has unknown value {value}")]
    BadValue {
        id: u32,
        field: &'static str,
        value: u8,
    },
}

impl FrameError {
    /// The id of the offending frame, or 0 when the header was not read.
    pub fn id(&self) -> u32 {
        match *self {
            FrameError::BadLength { .. } => 0,
            FrameError::BadVersion { id, .. }
            | FrameError::BadKind { id, .. }
            | FrameError::Truncated { id, .. }
            | FrameError::TrailingBytes { id, .. }
            | FrameError::BadFamily { id, .. }
            | FrameError::BadUtf8 { id, .. }
            | FrameError::BadValue { id, .. } => id,
        }
    }

    /// The error code a server answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::BadVersion { .. } => ErrorCode::BadVersion,
            FrameError::BadKind { .. } => ErrorCode::BadKind,
            FrameError::BadFamily { .. } => ErrorCode::BadFamily,
            FrameError::BadLength { .. }
            | FrameError::Truncated { .. }
            | FrameError::TrailingBytes { .. }
            | FrameError::BadUtf8 { .. }
            | FrameError::BadValue { .. } => ErrorCode::BadFrame,
        }
    }

    /// Short name, as used in the test vectors' `error` field.
    pub fn name(&self) -> &'static str {
        match self {
            FrameError::BadLength { .. } => "bad_length",
            FrameError::BadVersion { .. } => "bad_version",
            FrameError::BadKind { .. } => "bad_kind",
            FrameError::Truncated { .. } => "truncated",
            FrameError::TrailingBytes { .. } => "trailing_bytes",
            FrameError::BadFamily { .. } => "bad_family",
            FrameError::BadUtf8 { .. } => "bad_utf8",
            FrameError::BadValue { .. } => "bad_value",
        }
    }

    /// The error frame a server sends before closing the connection. Does not
    /// allocate (the message is a fixed text per error).
    pub fn error_response(&self) -> Response<&'static str> {
        let message = match self {
            FrameError::BadLength { .. } => "frame length out of range",
            FrameError::BadVersion { .. } => "unsupported protocol version",
            FrameError::BadKind { .. } => "unknown request kind",
            FrameError::Truncated { .. } => "truncated payload",
            FrameError::TrailingBytes { .. } => "trailing bytes in frame",
            FrameError::BadFamily { .. } => "address family must be 4 or 6",
            FrameError::BadUtf8 { .. } => "string is not UTF-8",
            FrameError::BadValue { .. } => "unknown enumerated value",
        };
        Response::Error {
            id: self.id(),
            code: self.code(),
            message,
        }
    }
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[inline]
fn header(declared: usize, kind: Kind, id: u32) -> [u8; LEN_PREFIX + HEADER_LEN] {
    debug_assert!((MIN_DECLARED_LEN..=MAX_DECLARED_LEN).contains(&declared));
    let len = (declared as u16).to_be_bytes();
    let id = id.to_be_bytes();
    [
        len[0], len[1], VERSION, kind as u8, id[0], id[1], id[2], id[3],
    ]
}

/// Appends the encoding of `req` to `out`.
///
/// An IPv4-mapped IPv6 address is sent as family 4.
#[inline]
pub fn encode_request<B: BufMut + ?Sized>(req: &Request, out: &mut B) {
    match *req {
        Request::Ping { id } => out.put_slice(&header(HEADER_LEN, Kind::Ping, id)),
        Request::Lookup { id, addr } => match addr.to_canonical() {
            IpAddr::V4(v4) => {
                let mut frame = [0u8; LOOKUP_V4_FRAME_LEN];
                frame[..8].copy_from_slice(&header(HEADER_LEN + 5, Kind::Lookup, id));
                frame[8] = 4;
                frame[9..].copy_from_slice(&v4.octets());
                out.put_slice(&frame);
            }
            IpAddr::V6(v6) => {
                let mut frame = [0u8; LOOKUP_V6_FRAME_LEN];
                frame[..8].copy_from_slice(&header(HEADER_LEN + 17, Kind::Lookup, id));
                frame[8] = 6;
                frame[9..].copy_from_slice(&v6.octets());
                out.put_slice(&frame);
            }
        },
    }
}

/// Appends the encoding of `resp` to `out`. Strings longer than their field are
/// truncated at a UTF-8 boundary (see the `MAX_*_LEN` constants), so the frame is
/// never larger than [`MAX_FRAME_LEN`]. Does not allocate beyond growing `out`.
#[inline]
pub fn encode_response<S: AsRef<str>, B: BufMut + ?Sized>(resp: &Response<S>, out: &mut B) {
    match resp {
        Response::Pong { id } => out.put_slice(&header(HEADER_LEN, Kind::Pong, *id)),
        Response::Lookup { id, answer } => encode_lookup_answer(*id, answer, out),
        Response::Error { id, code, message } => {
            let message = truncate_utf8(message.as_ref(), MAX_MESSAGE_LEN);
            let declared = HEADER_LEN + 2 + message.len();
            out.put_slice(&header(declared, Kind::Error, *id));
            out.put_slice(&[*code as u8, message.len() as u8]);
            out.put_slice(message.as_bytes());
        }
    }
}

/// Appends a lookup answer frame for request `id`; the same as
/// `encode_response(&Response::Lookup { id, answer }, out)` without building the
/// `Response`.
#[inline]
pub fn encode_lookup_answer<S: AsRef<str>, B: BufMut + ?Sized>(
    id: u32,
    answer: &LookupAnswer<S>,
    out: &mut B,
) {
    let origin = truncate_utf8(answer.origin.as_ref(), MAX_ORIGIN_LEN);
    let scenario = truncate_utf8(answer.scenario.as_ref(), MAX_SCENARIO_LEN);
    let dtype = truncate_utf8(answer.decision_type.as_ref(), MAX_TYPE_LEN);
    let declared = HEADER_LEN + ANSWER_FIXED_LEN + origin.len() + scenario.len() + dtype.len();

    let mut fixed = [0u8; LEN_PREFIX + HEADER_LEN + 8];
    fixed[..8].copy_from_slice(&header(declared, Kind::LookupAnswer, id));
    fixed[8] = answer.status as u8;
    fixed[9] = answer.remediation as u8;
    fixed[10] = answer.flags.bits();
    fixed[11..15].copy_from_slice(&answer.expires_in_s.to_be_bytes());
    fixed[15] = origin.len() as u8;
    out.put_slice(&fixed);
    out.put_slice(origin.as_bytes());
    out.put_slice(&(scenario.len() as u16).to_be_bytes());
    out.put_slice(scenario.as_bytes());
    out.put_u8(dtype.len() as u8);
    out.put_slice(dtype.as_bytes());
}

/// Size on the wire of the first frame in `buf`: `Ok(None)` when fewer than 2 bytes
/// or fewer than the declared length are present. The length prefix is checked as
/// soon as its 2 bytes are there.
#[inline]
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let [hi, lo, ..] = *buf else {
        return Ok(None);
    };
    let declared = u16::from_be_bytes([hi, lo]);
    let d = usize::from(declared);
    if !(MIN_DECLARED_LEN..=MAX_DECLARED_LEN).contains(&d) {
        return Err(FrameError::BadLength { declared });
    }
    let total = LEN_PREFIX + d;
    Ok((buf.len() >= total).then_some(total))
}

/// Splits a complete frame into (version-checked) kind byte, id and payload.
#[inline]
fn split_frame(frame: &[u8]) -> Result<(u8, u32, &[u8]), FrameError> {
    let version = frame[2];
    let kind = frame[3];
    let id = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if version != VERSION {
        return Err(FrameError::BadVersion { id, version });
    }
    Ok((kind, id, &frame[LEN_PREFIX + HEADER_LEN..]))
}

/// Decodes the first request in `buf` without consuming it: `Ok(Some((request,
/// frame_size)))`, or `Ok(None)` if more bytes are needed. Never allocates.
#[inline]
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, FrameError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    let (kind, id, payload) = split_frame(&buf[..total])?;
    let req = match Kind::from_u8(kind) {
        Some(Kind::Lookup) => {
            let Some((&family, addr)) = payload.split_first() else {
                return Err(FrameError::Truncated { id, kind });
            };
            let want = match family {
                4 => 4,
                6 => 16,
                _ => return Err(FrameError::BadFamily { id, family }),
            };
            if addr.len() < want {
                return Err(FrameError::Truncated { id, kind });
            }
            if addr.len() > want {
                return Err(FrameError::TrailingBytes { id, kind });
            }
            let addr = if family == 4 {
                IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
            } else {
                let mut o = [0u8; 16];
                o.copy_from_slice(addr);
                IpAddr::V6(Ipv6Addr::from(o)).to_canonical()
            };
            Request::Lookup { id, addr }
        }
        Some(Kind::Ping) => {
            if !payload.is_empty() {
                return Err(FrameError::TrailingBytes { id, kind });
            }
            Request::Ping { id }
        }
        _ => return Err(FrameError::BadKind { id, kind }),
    };
    Ok(Some((req, total)))
}

/// Decodes and consumes the first request in `buf`; `Ok(None)` (nothing consumed)
/// when more bytes are needed. Never allocates. On error the buffer is left as it
/// was; the connection should be answered with [`FrameError::error_response`] and
/// closed.
#[inline]
pub fn decode_request(buf: &mut BytesMut) -> Result<Option<Request>, FrameError> {
    match parse_request(buf)? {
        Some((req, used)) => {
            buf.advance(used);
            Ok(Some(req))
        }
        None => Ok(None),
    }
}

/// Reads the payload of a response field by field.
struct Reader<'a> {
    rest: &'a [u8],
    id: u32,
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Truncated {
                id: self.id,
                kind: self.kind,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, len: usize, field: &'static str) -> Result<String, FrameError> {
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(FrameError::BadUtf8 { id: self.id, field }),
        }
    }
    fn bad_value(&self, field: &'static str, value: u8) -> FrameError {
        FrameError::BadValue {
            id: self.id,
            field,
            value,
        }
    }
    fn finish(&self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                id: self.id,
                kind: self.kind,
            })
        }
    }
}

/// Decodes the first response in `buf` without consuming it: `Ok(Some((response,
/// frame_size)))`, or `Ok(None)` if more bytes are needed. Fields are checked in
/// wire order; the first problem found is reported.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, FrameError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    let (kind, id, payload) = split_frame(&buf[..total])?;
    let mut r = Reader {
        rest: payload,
        id,
        kind,
    };
    let resp = match Kind::from_u8(kind) {
        Some(Kind::LookupAnswer) => {
            let v = r.u8()?;
            let status = Status::from_u8(v).ok_or_else(|| r.bad_value("status", v))?;
            let v = r.u8()?;
            let remediation =
                Remediation::from_u8(v).ok_or_else(|| r.bad_value("remediation", v))?;
            let flags = Flags::from_bits(r.u8()?);
            let expires_in_s = r.u32()?;
            let n = usize::from(r.u8()?);
            let origin = r.string(n, "origin")?;
            let n = usize::from(r.u16()?);
            let scenario = r.string(n, "scenario")?;
            let n = usize::from(r.u8()?);
            let decision_type = r.string(n, "type")?;
            r.finish()?;
            Response::Lookup {
                id,
                answer: LookupAnswer {
                    status,
                    remediation,
                    flags,
                    expires_in_s,
                    origin,
                    scenario,
                    decision_type,
                },
            }
        }
        Some(Kind::Pong) => {
            r.finish()?;
            Response::Pong { id }
        }
        Some(Kind::Error) => {
            let v = r.u8()?;
            let code = ErrorCode::from_u8(v).ok_or_else(|| r.bad_value("code", v))?;
            let n = usize::from(r.u8()?);
            let message = r.string(n, "message")?;
            r.finish()?;
            Response::Error { id, code, message }
        }
        _ => return Err(FrameError::BadKind { id, kind }),
    };
    Ok(Some((resp, total)))
}

/// Decodes and consumes the first response in `buf`; `Ok(None)` (nothing consumed)
/// when more bytes are needed. Allocates only for the strings of the answer.
pub fn decode_response(buf: &mut BytesMut) -> Result<Option<Response>, FrameError> {
    match parse_response(buf)? {
        Some((resp, used)) => {
            buf.advance(used);
            Ok(Some(resp))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 3), "abc");
        assert_eq!(truncate_utf8("abc", 0), "");
        assert_eq!(truncate_utf8("€", 2), "");
    }

    #[test]
    fn longest_answer_fills_a_frame_exactly() {
        let long = "x".repeat(2000);
        let answer = LookupAnswer {
            status: Status::Ok,
            remediation: Remediation::Ban,
            flags: Flags::NONE,
            expires_in_s: 1,
            origin: long.as_str(),
            scenario: long.as_str(),
            decision_type: long.as_str(),
        };
        let mut out = Vec::new();
        encode_lookup_answer(9, &answer, &mut out);
        assert_eq!(out.len(), MAX_FRAME_LEN);
        let (resp, used) = parse_response(&out).unwrap().unwrap();
        assert_eq!(used, MAX_FRAME_LEN);
        let Response::Lookup { answer, .. } = resp else {
            panic!("not a lookup answer")
        };
        assert_eq!(answer.origin.len(), MAX_ORIGIN_LEN);
        assert_eq!(answer.scenario.len(), MAX_SCENARIO_LEN);
        assert_eq!(answer.decision_type.len(), MAX_TYPE_LEN);
    }

    #[test]
    fn length_prefix_is_checked_before_the_body_arrives() {
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0x00]), Ok(None));
        assert_eq!(
            frame_len(&[0x03, 0xff]),
            Err(FrameError::BadLength { declared: 1023 })
        );
        assert_eq!(
            frame_len(&[0x00, 0x05]),
            Err(FrameError::BadLength { declared: 5 })
        );
        assert_eq!(frame_len(&[0x03, 0xfe]), Ok(None));
    }

    #[test]
    fn mapped_v6_goes_out_as_v4_and_comes_back_as_v4() {
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let mut out = BytesMut::new();
        encode_request(
            &Request::Lookup {
                id: 5,
                addr: mapped,
            },
            &mut out,
        );
        assert_eq!(out.len(), LOOKUP_V4_FRAME_LEN);
        assert_eq!(
            decode_request(&mut out),
            Ok(Some(Request::Lookup {
                id: 5,
                addr: "192.0.2.1".parse().unwrap()
            }))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn error_codes_round_trip_by_value_and_name() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u8(c as u8), Some(c));
            assert_eq!(ErrorCode::from_name(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::from_u8(0), None);
        assert_eq!(ErrorCode::from_u8(7), None);
        for r in Remediation::ALL {
            assert_eq!(Remediation::from_u8(r as u8), Some(r));
            assert_eq!(Remediation::from_name(r.as_str()), Some(r));
        }
        assert_eq!(Remediation::from_u8(5), None);
    }
}
