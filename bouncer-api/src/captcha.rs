//! The captcha frames (`PROTOCOL.md` section 3.4 and 4.4): a client asks what to do
//! with a request whose verdict is captcha, the server answers pass, respond (status,
//! headers, body) or refuse. Both are *messages* that may span several frames of the
//! same kind and id: each frame's payload is a `more` byte (1: another frame of this
//! message follows) and a chunk; the message is the chunks joined. Kept apart from
//! [`crate::Request`], as the report frame is: a server takes these off its input first.

use crate::codec::{HEADER_LEN, LEN_PREFIX, MAX_FRAME_LEN, VERSION};
use crate::FrameError;
use bytes::{BufMut, BytesMut};
use std::net::IpAddr;

/// Kind byte of a captcha request.
pub const KIND_CAPTCHA: u8 = 0x04;
/// Kind byte of a captcha answer.
pub const KIND_CAPTCHA_ANSWER: u8 = 0x84;
/// Largest request message (the chunks joined).
pub const MAX_REQUEST: usize = 16 * 1024;
/// Largest answer message.
pub const MAX_ANSWER: usize = 256 * 1024;
/// Chunk bytes per frame.
const CHUNK: usize = MAX_FRAME_LEN - LEN_PREFIX - HEADER_LEN - 1;

/// A captcha request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptchaRequest {
    pub id: u32,
    pub addr: IpAddr,
    /// The client's request came over https.
    pub https: bool,
    /// The captcha verdict is AppSec's (the IP check allowed): the daemon runs the flow
    /// unless the address itself is now refused.
    pub from_appsec: bool,
    pub method: String,
    /// Path and query as the client sent them.
    pub uri: String,
    /// The value of the `cerberus_captcha` cookie, empty when absent.
    pub cookie: String,
}

/// What the client does with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptchaAnswer {
    /// Serve it (a valid clearance).
    Pass,
    /// Answer with this status, these headers and this body.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Refuse it as a ban (403).
    Refuse,
}

/// The outcome of looking at the front of the input.
#[derive(Debug)]
pub enum Taken<T> {
    /// The next frame is not of this kind.
    Other,
    /// A message of this kind has begun but is not all there yet.
    Partial,
    Message(Result<T, FrameError>),
}

fn id_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]])
}

/// Takes one whole message of `kind` off the front of `input` (at most `max` bytes
/// joined): its id and bytes.
fn take_message(input: &mut BytesMut, kind: u8, max: usize) -> Taken<(u32, Vec<u8>)> {
    if input.len() < LEN_PREFIX + HEADER_LEN || input[3] != kind || input[2] != VERSION {
        return Taken::Other;
    }
    let id = id_of(input);
    let mut at = 0;
    let mut joined = Vec::new();
    loop {
        if input.len() < at + LEN_PREFIX {
            return Taken::Partial;
        }
        let len = usize::from(u16::from_be_bytes([input[at], input[at + 1]]));
        if !(HEADER_LEN + 1..=MAX_FRAME_LEN - LEN_PREFIX).contains(&len) {
            if at == 0 {
                return Taken::Other; // the ordinary decoder reports a bad length
            }
            let _ = input.split_to(at);
            return Taken::Message(Err(FrameError::Truncated { id, kind }));
        }
        if input.len() < at + LEN_PREFIX + len {
            return Taken::Partial;
        }
        let frame = &input[at..at + LEN_PREFIX + len];
        if frame[2] != VERSION || frame[3] != kind || id_of(frame) != id {
            let _ = input.split_to(at);
            return Taken::Message(Err(FrameError::Truncated { id, kind }));
        }
        let more = frame[LEN_PREFIX + HEADER_LEN];
        joined.extend_from_slice(&frame[LEN_PREFIX + HEADER_LEN + 1..]);
        at += LEN_PREFIX + len;
        if joined.len() > max || more > 1 {
            let _ = input.split_to(at);
            return Taken::Message(Err(FrameError::BadValue {
                id,
                field: "more",
                value: more,
            }));
        }
        if more == 0 {
            let _ = input.split_to(at);
            return Taken::Message(Ok((id, joined)));
        }
    }
}

/// Appends `message` as frames of `kind` and `id` (an empty message is one frame).
fn put_message(out: &mut BytesMut, kind: u8, id: u32, message: &[u8]) {
    let mut rest = message;
    loop {
        let (chunk, tail) = rest.split_at(rest.len().min(CHUNK));
        out.put_u16((HEADER_LEN + 1 + chunk.len()) as u16);
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u32(id);
        out.put_u8(u8::from(!tail.is_empty()));
        out.put_slice(chunk);
        if tail.is_empty() {
            return;
        }
        rest = tail;
    }
}

/// Reads fields off the front of a joined message.
struct Fields<'a> {
    p: &'a [u8],
    id: u32,
    kind: u8,
}

impl<'a> Fields<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.p.len() < n {
            return Err(FrameError::Truncated {
                id: self.id,
                kind: self.kind,
            });
        }
        let (head, rest) = self.p.split_at(n);
        self.p = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn text(&mut self, wide: bool, field: &'static str) -> Result<String, FrameError> {
        let n = if wide {
            usize::from(self.u16()?)
        } else {
            usize::from(self.u8()?)
        };
        let b = self.bytes(n)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| FrameError::BadUtf8 { id: self.id, field })
    }
}

fn put_text(m: &mut Vec<u8>, s: &str, wide: bool) {
    if wide {
        let s = crate::truncate_utf8(s, u16::MAX as usize);
        m.put_u16(s.len() as u16);
        m.put_slice(s.as_bytes());
    } else {
        let s = crate::truncate_utf8(s, u8::MAX as usize);
        m.put_u8(s.len() as u8);
        m.put_slice(s.as_bytes());
    }
}

/// Appends a captcha request (as many frames as it takes).
pub fn encode_captcha_request(req: &CaptchaRequest, out: &mut BytesMut) {
    let mut m = Vec::with_capacity(64 + req.uri.len() + req.cookie.len());
    match req.addr.to_canonical() {
        IpAddr::V4(a) => {
            m.put_u8(4);
            m.put_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            m.put_u8(6);
            m.put_slice(&a.octets());
        }
    }
    m.put_u8(u8::from(req.https) | u8::from(req.from_appsec) << 1);
    put_text(&mut m, &req.method, false);
    put_text(&mut m, &req.uri, true);
    put_text(&mut m, &req.cookie, true);
    put_message(out, KIND_CAPTCHA, req.id, &m);
}

/// Takes a message of `kind` off `input` and reads it with `parse`; bytes left after
/// it are `trailing_bytes`.
fn take_parsed<T>(
    input: &mut BytesMut,
    kind: u8,
    max: usize,
    parse: impl FnOnce(&mut Fields<'_>) -> Result<T, FrameError>,
) -> Taken<T> {
    let (id, m) = match take_message(input, kind, max) {
        Taken::Other => return Taken::Other,
        Taken::Partial => return Taken::Partial,
        Taken::Message(Err(e)) => return Taken::Message(Err(e)),
        Taken::Message(Ok(v)) => v,
    };
    let mut f = Fields { p: &m, id, kind };
    let parsed = parse(&mut f);
    Taken::Message(parsed.and_then(|v| {
        if f.p.is_empty() {
            Ok(v)
        } else {
            Err(FrameError::TrailingBytes { id, kind })
        }
    }))
}

/// Takes a captcha request off the front of `input`.
pub fn take_captcha_request(input: &mut BytesMut) -> Taken<CaptchaRequest> {
    take_parsed(input, KIND_CAPTCHA, MAX_REQUEST, |f| {
        let id = f.id;
        let addr = match f.u8()? {
            4 => IpAddr::from(<[u8; 4]>::try_from(f.bytes(4)?).expect("4 bytes")),
            6 => IpAddr::from(<[u8; 16]>::try_from(f.bytes(16)?).expect("16 bytes")).to_canonical(),
            other => return Err(FrameError::BadFamily { id, family: other }),
        };
        let flags = f.u8()?;
        Ok(CaptchaRequest {
            id,
            addr,
            https: flags & 1 == 1,
            from_appsec: flags & 2 == 2,
            method: f.text(false, "method")?,
            uri: f.text(true, "uri")?,
            cookie: f.text(true, "cookie")?,
        })
    })
}

/// Appends a captcha answer (as many frames as it takes; a body beyond the message
/// limit is cut).
pub fn encode_captcha_answer(id: u32, answer: &CaptchaAnswer, out: &mut BytesMut) {
    let mut m = Vec::new();
    match answer {
        CaptchaAnswer::Pass => m.put_u8(0),
        CaptchaAnswer::Refuse => m.put_u8(2),
        CaptchaAnswer::Respond {
            status,
            headers,
            body,
        } => {
            m.put_u8(1);
            m.put_u16(*status);
            m.put_u8(headers.len().min(255) as u8);
            for (name, value) in headers.iter().take(255) {
                put_text(&mut m, name, false);
                put_text(&mut m, value, true);
            }
            let room = MAX_ANSWER.saturating_sub(m.len());
            m.put_slice(&body[..body.len().min(room)]);
        }
    }
    put_message(out, KIND_CAPTCHA_ANSWER, id, &m);
}

/// Takes a captcha answer off the front of `input` (the client side).
pub fn take_captcha_answer(input: &mut BytesMut) -> Taken<(u32, CaptchaAnswer)> {
    take_parsed(input, KIND_CAPTCHA_ANSWER, MAX_ANSWER, |f| {
        let answer = match f.u8()? {
            0 => CaptchaAnswer::Pass,
            2 => CaptchaAnswer::Refuse,
            1 => {
                let status = f.u16()?;
                let n = f.u8()?;
                let mut headers = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    let name = f.text(false, "header name")?;
                    let value = f.text(true, "header value")?;
                    headers.push((name, value));
                }
                CaptchaAnswer::Respond {
                    status,
                    headers,
                    body: std::mem::take(&mut f.p).to_vec(),
                }
            }
            other => {
                return Err(FrameError::BadValue {
                    id: f.id,
                    field: "action",
                    value: other,
                })
            }
        };
        Ok((f.id, answer))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri_len: usize) -> CaptchaRequest {
        CaptchaRequest {
            id: 9,
            addr: "::ffff:192.0.2.1".parse().unwrap(),
            https: true,
            from_appsec: uri_len % 3 == 1,
            method: "GET".into(),
            uri: format!("/{}", "a".repeat(uri_len)),
            cookie: "1.abc".into(),
        }
    }

    #[test]
    fn requests_round_trip_in_one_frame_or_many() {
        for n in [0, 10, 2000, 5000] {
            let mut out = BytesMut::new();
            encode_captcha_request(&request(n), &mut out);
            assert!(out.len() <= (out.len() / MAX_FRAME_LEN + 1) * MAX_FRAME_LEN);
            let whole = out.clone();
            // Every prefix but the whole is partial.
            let mut part = BytesMut::from(&whole[..whole.len() - 1]);
            assert!(matches!(take_captcha_request(&mut part), Taken::Partial));
            let Taken::Message(Ok(got)) = take_captcha_request(&mut out) else {
                panic!("a whole request decodes");
            };
            let mut want = request(n);
            want.addr = "192.0.2.1".parse().unwrap();
            assert_eq!(got, want);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn answers_round_trip_and_other_kinds_are_left_alone() {
        let page = CaptchaAnswer::Respond {
            status: 403,
            headers: vec![(
                "content-security-policy".into(),
                "default-src 'none'".into(),
            )],
            body: vec![b'x'; 9000],
        };
        for a in [CaptchaAnswer::Pass, CaptchaAnswer::Refuse, page] {
            let mut out = BytesMut::new();
            encode_captcha_answer(7, &a, &mut out);
            out.extend_from_slice(&[0, 6, 1, 0x82, 0, 0, 0, 1]); // a pong after it
            let Taken::Message(Ok((7, got))) = take_captcha_answer(&mut out) else {
                panic!("the answer decodes");
            };
            assert_eq!(got, a);
            assert!(matches!(take_captcha_answer(&mut out), Taken::Other));
            assert_eq!(out.len(), 8);
        }
    }

    #[test]
    fn a_message_interrupted_by_another_id_is_malformed() {
        let mut out = BytesMut::new();
        encode_captcha_request(&request(2000), &mut out);
        out[MAX_FRAME_LEN + 7] ^= 0x55; // the second frame's id
        assert!(matches!(
            take_captcha_request(&mut out),
            Taken::Message(Err(_))
        ));
    }
}
