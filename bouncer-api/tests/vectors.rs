//! Every vector of testdata/vectors.json: decode the hex to the expected value or
//! error, encode the expected value back to the same (canonical) hex.

use std::collections::BTreeSet;
use std::net::IpAddr;

use bouncer_api::{
    decode_request, decode_response, encode_request, encode_response, parse_request,
    parse_response, ErrorCode, Flags, LookupAnswer, Remediation, Request, Response, Status,
};
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    protocol_version: u8,
    vectors: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    direction: String,
    hex: String,
    valid: bool,
    decoded: Option<Value>,
    canonical_hex: Option<String>,
    #[serde(default)]
    encodes_from: Vec<Value>,
    error: Option<String>,
    error_code: Option<u8>,
    error_id: Option<u32>,
    #[allow(dead_code)]
    note: Option<String>,
}

fn load() -> File {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");
    let text = std::fs::read_to_string(path).expect("read vectors.json");
    serde_json::from_str(&text).expect("parse vectors.json")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn tohex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn int_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn request_from_json(v: &Value) -> Request {
    let id = int_field(v, "id") as u32;
    match str_field(v, "kind") {
        "lookup" => Request::Lookup {
            id,
            addr: str_field(v, "addr").parse::<IpAddr>().expect("address"),
        },
        "ping" => Request::Ping { id },
        k => panic!("unknown request kind {k}"),
    }
}

fn response_from_json(v: &Value) -> Response {
    let id = int_field(v, "id") as u32;
    match str_field(v, "kind") {
        "lookup" => Response::Lookup {
            id,
            answer: LookupAnswer {
                status: Status::from_name(str_field(v, "status")).expect("status"),
                remediation: Remediation::from_name(str_field(v, "remediation"))
                    .expect("remediation"),
                flags: Flags::from_bits(int_field(v, "flags") as u8),
                expires_in_s: int_field(v, "expires_in_s") as u32,
                origin: str_field(v, "origin").to_owned(),
                scenario: str_field(v, "scenario").to_owned(),
                decision_type: str_field(v, "type").to_owned(),
            },
        },
        "pong" => Response::Pong { id },
        "error" => Response::Error {
            id,
            code: ErrorCode::from_name(str_field(v, "code")).expect("error code"),
            message: str_field(v, "message").to_owned(),
        },
        k => panic!("unknown response kind {k}"),
    }
}

/// Decodes `bytes` one byte at a time: `None` until the last byte, then a value.
fn check_bytewise<T: PartialEq + std::fmt::Debug>(
    name: &str,
    bytes: &[u8],
    expected: &T,
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, bouncer_api::FrameError>,
) {
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = decode(&mut buf).unwrap_or_else(|e| panic!("{name}: byte {i}: {e}"));
        if i + 1 < bytes.len() {
            assert!(got.is_none(), "{name}: decoded early at byte {i}");
            assert_eq!(buf.len(), i + 1, "{name}: consumed bytes while incomplete");
        } else {
            assert_eq!(got.as_ref(), Some(expected), "{name}: bytewise");
            assert!(buf.is_empty(), "{name}: frame not consumed");
        }
    }
}

fn check_valid(v: &Vector) {
    let bytes = unhex(&v.hex);
    let canonical = v.canonical_hex.as_deref().unwrap_or(&v.hex);
    let decoded = v.decoded.as_ref().expect("valid vector has decoded");
    match v.direction.as_str() {
        "request" => {
            let expected = request_from_json(decoded);
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(decode_request(&mut buf), Ok(Some(expected)), "{}", v.name);
            assert!(buf.is_empty(), "{}: not consumed", v.name);
            assert_eq!(
                parse_request(&bytes),
                Ok(Some((expected, bytes.len()))),
                "{}",
                v.name
            );
            check_bytewise(&v.name, &bytes, &expected, decode_request);
            let mut out = BytesMut::new();
            encode_request(&expected, &mut out);
            assert_eq!(tohex(&out), canonical, "{}: encode", v.name);
            let mut out_vec = Vec::new();
            encode_request(&expected, &mut out_vec);
            assert_eq!(tohex(&out_vec), canonical, "{}: encode into Vec", v.name);
            for alt in &v.encodes_from {
                let mut out = Vec::new();
                encode_request(&request_from_json(alt), &mut out);
                assert_eq!(tohex(&out), canonical, "{}: encodes_from", v.name);
            }
        }
        "response" => {
            let expected = response_from_json(decoded);
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(
                decode_response(&mut buf),
                Ok(Some(expected.clone())),
                "{}",
                v.name
            );
            assert!(buf.is_empty(), "{}: not consumed", v.name);
            assert_eq!(
                parse_response(&bytes),
                Ok(Some((expected.clone(), bytes.len()))),
                "{}",
                v.name
            );
            check_bytewise(&v.name, &bytes, &expected, decode_response);
            let mut out = BytesMut::new();
            encode_response(&expected, &mut out);
            assert_eq!(tohex(&out), canonical, "{}: encode", v.name);
            for alt in &v.encodes_from {
                let mut out = Vec::new();
                encode_response(&response_from_json(alt), &mut out);
                assert_eq!(tohex(&out), canonical, "{}: encodes_from", v.name);
            }
        }
        d => panic!("{}: unknown direction {d}", v.name),
    }
}

fn check_invalid(v: &Vector) {
    let bytes = unhex(&v.hex);
    let error = v.error.as_deref().expect("invalid vector has error");
    let result = match v.direction.as_str() {
        "request" => {
            let mut buf = BytesMut::from(&bytes[..]);
            let r = decode_request(&mut buf).map(|o| o.map(|_| ()));
            assert_eq!(buf.len(), bytes.len(), "{}: consumed input", v.name);
            assert_eq!(
                parse_request(&bytes).map(|o| o.map(|_| ())),
                r.clone(),
                "{}",
                v.name
            );
            r
        }
        "response" => {
            let mut buf = BytesMut::from(&bytes[..]);
            let r = decode_response(&mut buf).map(|o| o.map(|_| ()));
            assert_eq!(buf.len(), bytes.len(), "{}: consumed input", v.name);
            assert_eq!(
                parse_response(&bytes).map(|o| o.map(|_| ())),
                r.clone(),
                "{}",
                v.name
            );
            r
        }
        d => panic!("{}: unknown direction {d}", v.name),
    };
    if error == "incomplete" {
        assert_eq!(result, Ok(None), "{}: expected incomplete", v.name);
        return;
    }
    let err = match result {
        Err(e) => e,
        Ok(o) => panic!("{}: expected {error}, got {o:?}", v.name),
    };
    assert_eq!(err.name(), error, "{}: {err}", v.name);
    assert_eq!(Some(err.code() as u8), v.error_code, "{}: code", v.name);
    assert_eq!(Some(err.id()), v.error_id, "{}: id", v.name);

    // What a server answers: an error frame carrying that code and id.
    let mut out = BytesMut::new();
    encode_response(&err.error_response(), &mut out);
    match decode_response(&mut out) {
        Ok(Some(Response::Error { id, code, message })) => {
            assert_eq!(id, err.id());
            assert_eq!(code, err.code());
            assert!(!message.is_empty());
            assert!(code.closes_connection());
        }
        other => panic!("{}: error frame decodes to {other:?}", v.name),
    }
}

#[test]
fn every_vector_round_trips() {
    let file = load();
    assert_eq!(file.protocol_version, bouncer_api::VERSION);
    let mut names = BTreeSet::new();
    for v in &file.vectors {
        assert!(names.insert(v.name.clone()), "duplicate name {}", v.name);
        assert_eq!(v.valid, v.decoded.is_some(), "{}", v.name);
        assert_eq!(v.valid, v.error.is_none(), "{}", v.name);
        if v.valid {
            check_valid(v);
        } else {
            check_invalid(v);
        }
    }
}

#[test]
fn vectors_cover_the_protocol() {
    let file = load();
    let mut remediations = BTreeSet::new();
    let mut codes = BTreeSet::new();
    let mut errors = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut flags = BTreeSet::new();
    let mut statuses = BTreeSet::new();
    for v in &file.vectors {
        if let Some(d) = &v.decoded {
            kinds.insert(format!("{}:{}", v.direction, str_field(d, "kind")));
            if v.direction == "response" {
                match response_from_json(d) {
                    Response::Lookup { answer, .. } => {
                        remediations.insert(answer.remediation as u8);
                        flags.insert(answer.flags.bits());
                        statuses.insert(answer.status as u8);
                    }
                    Response::Error { code, .. } => {
                        codes.insert(code as u8);
                    }
                    Response::Pong { .. } => {}
                }
            }
        }
        if let Some(e) = &v.error {
            errors.insert(format!("{}:{e}", v.direction));
        }
    }
    assert_eq!(remediations.len(), Remediation::ALL.len());
    assert_eq!(codes.len(), ErrorCode::ALL.len());
    assert_eq!(statuses.len(), 2);
    for f in [0, 1, 2] {
        assert!(flags.contains(&f), "flags {f}");
    }
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    for e in [
        "request:incomplete",
        "request:bad_length",
        "request:bad_version",
        "request:bad_kind",
        "request:bad_family",
        "request:truncated",
        "request:trailing_bytes",
        "response:incomplete",
        "response:bad_length",
        "response:bad_version",
        "response:bad_kind",
        "response:truncated",
        "response:trailing_bytes",
        "response:bad_utf8",
        "response:bad_value",
    ] {
        assert!(errors.contains(e), "no vector for {e}");
    }
}
