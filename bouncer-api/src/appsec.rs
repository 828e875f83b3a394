//! The AppSec frames (`PROTOCOL.md` sections 3.5 and 4.5): a request to inspect (`0x05`, a long
//! frame: its body does not fit the 1024-byte limit) and its verdict (`0x85`). Kept
//! apart from [`crate::Request`] like the report: a server takes these frames off its
//! input before the ordinary decoder.

use crate::codec::{HEADER_LEN, LEN_PREFIX, VERSION};
use crate::{FrameError, Remediation};
use bytes::{Buf, BufMut, BytesMut};
use std::net::IpAddr;

/// Kind byte of an AppSec request.
pub const KIND_APPSEC: u8 = 0x05;
/// Kind byte of its answer.
pub const KIND_APPSEC_ANSWER: u8 = 0x85;
/// `len` of every AppSec request: the header and the u32 `size` that follows.
pub const DECLARED_LEN: u16 = (HEADER_LEN + 4) as u16;
/// Largest `size` (bytes after the 12-byte head) a server accepts: a 16 MiB body and
/// 1 MiB of the rest.
pub const MAX_SIZE: usize = 17 << 20;
const HEAD: usize = LEN_PREFIX + HEADER_LEN + 4;

/// Flag bit of a request: the body was cut at the client's limit.
pub const TRUNCATED: u8 = 0x01;

/// One request to inspect, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppsecRequest<'a> {
    pub id: u32,
    pub truncated: bool,
    pub ip: IpAddr,
    pub method: &'a str,
    pub uri: &'a str,
    pub host: &'a str,
    /// `1.0`, `1.1`, `2`, `3`.
    pub http_version: &'a str,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: &'a [u8],
}

/// Why the daemon answered what it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// AppSec's verdict.
    Verdict = 0,
    /// No verdict (401, 5xx, timeout): `appsec_fail` decided.
    Failed = 1,
    /// The body was over the limit and `appsec_fail` is `closed`.
    BodyTooLarge = 2,
    /// AppSec is off in this daemon (no `appsec_url`): allow, and clients MAY stop
    /// asking for a while.
    Off = 3,
}

/// The answer (`0x85`): `remediation` allow, ban or captcha.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppsecAnswer {
    pub id: u32,
    pub remediation: Remediation,
    pub reason: Reason,
}

/// Appends a request. Strings over 65535 bytes and more than 65535 headers are cut.
pub fn encode_request(req: &AppsecRequest<'_>, out: &mut BytesMut) {
    let start = out.len();
    out.put_u16(DECLARED_LEN);
    out.put_u8(VERSION);
    out.put_u8(KIND_APPSEC);
    out.put_u32(req.id);
    out.put_u32(0); // size, filled in below
    out.put_u8(if req.truncated { TRUNCATED } else { 0 });
    match req.ip {
        IpAddr::V4(a) => {
            out.put_u8(4);
            out.put_slice(&a.octets());
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => {
                out.put_u8(4);
                out.put_slice(&v4.octets());
            }
            None => {
                out.put_u8(6);
                out.put_slice(&a.octets());
            }
        },
    }
    for s in [req.method, req.uri, req.host, req.http_version] {
        put16(out, s.as_bytes());
    }
    let n = req.headers.len().min(usize::from(u16::MAX));
    out.put_u16(n as u16);
    for (name, value) in &req.headers[..n] {
        put16(out, name.as_bytes());
        put16(out, value);
    }
    out.put_u32(req.body.len() as u32);
    out.put_slice(req.body);
    let size = (out.len() - start - HEAD) as u32;
    out[start + 8..start + 12].copy_from_slice(&size.to_be_bytes());
}

fn put16(out: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(usize::from(u16::MAX))];
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// When the next frame in `input` is an AppSec request: `Ok(Some(frame))` once it is
/// complete (removed from `input`), `Ok(None)` while it is not, an error for a `size`
/// over [`MAX_SIZE`] (known from the first 12 bytes, before the rest is read).
pub fn take_request(input: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    if input.len() < LEN_PREFIX + HEADER_LEN
        || input[3] != KIND_APPSEC
        || input[2] != VERSION
        || u16::from_be_bytes([input[0], input[1]]) != DECLARED_LEN
    {
        return Ok(None);
    }
    if input.len() < HEAD {
        return Ok(None);
    }
    let id = u32::from_be_bytes([input[4], input[5], input[6], input[7]]);
    let size = u32::from_be_bytes([input[8], input[9], input[10], input[11]]) as usize;
    if size > MAX_SIZE {
        return Err(FrameError::BadValue {
            id,
            field: "size",
            value: 0xff,
        });
    }
    if input.len() < HEAD + size {
        return Ok(None);
    }
    Ok(Some(input.split_to(HEAD + size)))
}

/// True when `input` starts with (a part of) an AppSec request, so a server waits for
/// more instead of handing it to the ordinary decoder.
pub fn starts_request(input: &[u8]) -> bool {
    input.len() >= 4 && input[3] == KIND_APPSEC && input[2] == VERSION
}

/// Reads a frame returned by [`take_request`].
pub fn parse_request(frame: &[u8]) -> Result<AppsecRequest<'_>, FrameError> {
    let id = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let bad = FrameError::Truncated {
        id,
        kind: KIND_APPSEC,
    };
    let mut p = &frame[HEAD..];
    if p.len() < 2 {
        return Err(bad);
    }
    let truncated = p.get_u8() & TRUNCATED != 0;
    let ip = match p.get_u8() {
        4 if p.len() >= 4 => {
            let a: [u8; 4] = p[..4].try_into().expect("4 bytes");
            p.advance(4);
            IpAddr::from(a)
        }
        6 if p.len() >= 16 => {
            let a: [u8; 16] = p[..16].try_into().expect("16 bytes");
            p.advance(16);
            let v6 = std::net::Ipv6Addr::from(a);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        4 | 6 => return Err(bad),
        family => return Err(FrameError::BadFamily { id, family }),
    };
    let method = text16(&mut p, id)?;
    let uri = text16(&mut p, id)?;
    let host = text16(&mut p, id)?;
    let http_version = text16(&mut p, id)?;
    if p.len() < 2 {
        return Err(bad);
    }
    let n = p.get_u16();
    let mut headers = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let name = text16(&mut p, id)?;
        let value = bytes16(&mut p, id)?;
        headers.push((name, value));
    }
    if p.len() < 4 {
        return Err(bad);
    }
    let body_len = p.get_u32() as usize;
    if p.len() != body_len {
        return Err(bad);
    }
    Ok(AppsecRequest {
        id,
        truncated,
        ip,
        method,
        uri,
        host,
        http_version,
        headers,
        body: p,
    })
}

fn bytes16<'a>(p: &mut &'a [u8], id: u32) -> Result<&'a [u8], FrameError> {
    let bad = FrameError::Truncated {
        id,
        kind: KIND_APPSEC,
    };
    if p.len() < 2 {
        return Err(bad);
    }
    let n = usize::from(p.get_u16());
    if p.len() < n {
        return Err(bad);
    }
    let (s, rest) = p.split_at(n);
    *p = rest;
    Ok(s)
}

fn text16<'a>(p: &mut &'a [u8], id: u32) -> Result<&'a str, FrameError> {
    let s = bytes16(p, id)?;
    std::str::from_utf8(s).map_err(|_| FrameError::BadUtf8 {
        id,
        field: "appsec",
    })
}

/// Appends an answer: 10 bytes (`len` 8): remediation, reason.
pub fn encode_answer(a: &AppsecAnswer, out: &mut BytesMut) {
    out.put_u16((HEADER_LEN + 2) as u16);
    out.put_u8(VERSION);
    out.put_u8(KIND_APPSEC_ANSWER);
    out.put_u32(a.id);
    out.put_u8(a.remediation as u8);
    out.put_u8(a.reason as u8);
}

/// Reads an answer frame (10 bytes, as [`encode_answer`] writes it).
pub fn parse_answer(frame: &[u8]) -> Option<AppsecAnswer> {
    if frame.len() != 10 || frame[2] != VERSION || frame[3] != KIND_APPSEC_ANSWER {
        return None;
    }
    let reason = match frame[9] {
        0 => Reason::Verdict,
        1 => Reason::Failed,
        2 => Reason::BodyTooLarge,
        3 => Reason::Off,
        _ => return None,
    };
    Some(AppsecAnswer {
        id: u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
        remediation: Remediation::from_u8(frame[8])?,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: &[u8]) -> AppsecRequest<'_> {
        AppsecRequest {
            id: 7,
            truncated: true,
            ip: "2001:db8::1".parse().unwrap(),
            method: "POST",
            uri: "/form?a=1",
            host: "example.com",
            http_version: "1.1",
            headers: vec![("Content-Type", b"text/plain"), ("X-A", b"\xff")],
            body,
        }
    }

    #[test]
    fn a_request_round_trips_and_arrives_in_pieces() {
        let body = vec![b'x'; 5000];
        let mut wire = BytesMut::new();
        encode_request(&sample(&body), &mut wire);
        encode_answer(
            &AppsecAnswer {
                id: 1,
                remediation: Remediation::Ban,
                reason: Reason::Verdict,
            },
            &mut wire,
        );
        let mut input = BytesMut::new();
        input.extend_from_slice(&wire[..100]);
        assert!(starts_request(&input));
        assert_eq!(take_request(&mut input).unwrap(), None);
        input.extend_from_slice(&wire[100..]);
        let frame = take_request(&mut input).unwrap().expect("complete");
        assert_eq!(parse_request(&frame).unwrap(), sample(&body));
        let answer = parse_answer(&input).expect("the answer follows");
        assert_eq!(answer.remediation, Remediation::Ban);
        assert_eq!(answer.id, 1);
    }

    #[test]
    fn an_oversized_request_is_refused_from_its_head() {
        let mut input = BytesMut::new();
        input.put_u16(DECLARED_LEN);
        input.put_u8(VERSION);
        input.put_u8(KIND_APPSEC);
        input.put_u32(3);
        input.put_u32(MAX_SIZE as u32 + 1);
        assert!(matches!(
            take_request(&mut input),
            Err(FrameError::BadValue { id: 3, .. })
        ));
    }

    #[test]
    fn a_short_payload_is_truncated() {
        let mut wire = BytesMut::new();
        encode_request(&sample(b"abc"), &mut wire);
        let mut frame = wire.clone();
        // Claim one body byte more than the frame holds.
        let n = frame.len();
        frame[n - 4] = 0xff;
        assert!(matches!(
            parse_request(&frame[..]),
            Err(FrameError::Truncated { id: 7, .. })
        ));
    }
}
