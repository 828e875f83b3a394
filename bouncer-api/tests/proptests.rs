//! Property tests: the decoders never panic on any input, and encode -> decode is the
//! identity for any valid frames, however the byte stream is split.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bouncer_api::codec::{MAX_MESSAGE_LEN, MAX_ORIGIN_LEN, MAX_SCENARIO_LEN, MAX_TYPE_LEN};
use bouncer_api::{
    decode_request, decode_response, encode_request, encode_response, frame_len, parse_request,
    parse_response, truncate_utf8, ErrorCode, Flags, FrameError, LookupAnswer, Remediation,
    Request, Response, Status, MAX_FRAME_LEN,
};
use bytes::BytesMut;
use proptest::prelude::*;

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        // IPv4-mapped IPv6, sent as family 4.
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        4 => (any::<u32>(), addr()).prop_map(|(id, addr)| Request::Lookup { id, addr }),
        1 => any::<u32>().prop_map(|id| Request::Ping { id }),
    ]
}

/// Strings of any Unicode, sometimes longer than any field (long ones are built by
/// repetition: generating them char by char makes the tests slow).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,40}",
        1 => ("\\PC{1,8}", 0usize..120).prop_map(|(s, n)| s.repeat(n)),
        1 => ("[a-z/_-]{1,4}", 0usize..250).prop_map(|(s, n)| s.repeat(n)),
    ]
}

fn answer() -> impl Strategy<Value = LookupAnswer> {
    (
        prop::sample::select(vec![Status::Ok, Status::NotReady]),
        prop::sample::select(Remediation::ALL.to_vec()),
        any::<u8>(),
        any::<u32>(),
        text(),
        text(),
        text(),
    )
        .prop_map(
            |(status, remediation, flags, expires_in_s, origin, scenario, decision_type)| {
                LookupAnswer {
                    status,
                    remediation,
                    flags: Flags::from_bits(flags),
                    expires_in_s,
                    origin,
                    scenario,
                    decision_type,
                }
            },
        )
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        4 => (any::<u32>(), answer()).prop_map(|(id, answer)| Response::Lookup { id, answer }),
        1 => any::<u32>().prop_map(|id| Response::Pong { id }),
        1 => (any::<u32>(), prop::sample::select(ErrorCode::ALL.to_vec()), text())
            .prop_map(|(id, code, message)| Response::Error { id, code, message }),
    ]
}

/// What the decoder returns for a request that was encoded.
fn canonical_request(r: Request) -> Request {
    match r {
        Request::Lookup { id, addr } => Request::Lookup {
            id,
            addr: addr.to_canonical(),
        },
        ping => ping,
    }
}

/// What the decoder returns for a response that was encoded: strings truncated.
fn canonical_response(r: &Response) -> Response {
    match r {
        Response::Lookup { id, answer } => Response::Lookup {
            id: *id,
            answer: LookupAnswer {
                origin: truncate_utf8(&answer.origin, MAX_ORIGIN_LEN).to_owned(),
                scenario: truncate_utf8(&answer.scenario, MAX_SCENARIO_LEN).to_owned(),
                decision_type: truncate_utf8(&answer.decision_type, MAX_TYPE_LEN).to_owned(),
                ..answer.clone()
            },
        },
        Response::Pong { id } => Response::Pong { id: *id },
        Response::Error { id, code, message } => Response::Error {
            id: *id,
            code: *code,
            message: truncate_utf8(message, MAX_MESSAGE_LEN).to_owned(),
        },
    }
}

/// Cuts `bytes` into chunks whose sizes come from `cuts` (cycled), feeds them one by
/// one and decodes everything that completes.
fn feed<T>(
    bytes: &[u8],
    cuts: &[usize],
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, FrameError>,
) -> Vec<T> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = cuts[i % cuts.len()].min(bytes.len() - pos);
        i += 1;
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        while let Some(v) = decode(&mut buf).expect("valid stream") {
            out.push(v);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

/// Runs a decoder over arbitrary bytes until it stops; checks that it consumes
/// exactly the declared frame sizes.
fn drain<T>(
    bytes: &[u8],
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, FrameError>,
) -> Result<(), FrameError> {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.len();
        let declared = frame_len(&buf);
        match decode(&mut buf)? {
            Some(_) => {
                let size = declared.expect("length ok").expect("frame complete");
                assert!(size <= MAX_FRAME_LEN);
                assert_eq!(before - buf.len(), size);
            }
            None => {
                assert_eq!(buf.len(), before);
                return Ok(());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2100)) {
        let _ = drain(&bytes, decode_request);
        let _ = drain(&bytes, decode_response);
    }

    #[test]
    fn plausible_frames_never_panic(
        len in 0u16..1100,
        version in prop::sample::select(vec![0u8, 1, 2]),
        kind in prop::sample::select(vec![0x00u8, 0x01, 0x02, 0x03, 0x80, 0x81, 0x82, 0xFE, 0xFF]),
        body in prop::collection::vec(any::<u8>(), 0..1100),
    ) {
        // Frames with a believable header and random payload reach the payload
        // parsers far more often than fully random bytes.
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.push(version);
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        let _ = drain(&bytes, decode_request);
        let _ = drain(&bytes, decode_response);
    }

    #[test]
    fn decoded_requests_reencode_to_their_bytes(req in request(), flip in any::<(usize, u8)>()) {
        // Mutate one byte of a valid frame: whatever still decodes re-encodes to the
        // same bytes.
        let mut bytes = Vec::new();
        encode_request(&req, &mut bytes);
        let i = flip.0 % bytes.len();
        bytes[i] ^= flip.1;
        if let Ok(Some((req, used))) = parse_request(&bytes) {
            let mut out = Vec::new();
            encode_request(&req, &mut out);
            // Only a mapped address sent as family 6 has another canonical form.
            if out != bytes[..used] {
                prop_assert_eq!(bytes[8], 6);
                let decoded_v4 = matches!(req, Request::Lookup { addr: IpAddr::V4(_), .. });
                prop_assert!(decoded_v4, "only a mapped address has two encodings");
            }
        }
    }

    #[test]
    fn decoded_responses_reencode_to_their_bytes(resp in response(), flip in any::<(usize, u8)>()) {
        // Mutate one byte of a valid frame: whatever still decodes re-encodes to the
        // same bytes, unless the mutation made the scenario longer than encoders write
        // (decoders accept any length the frame holds).
        let mut bytes = Vec::new();
        encode_response(&resp, &mut bytes);
        let i = flip.0 % bytes.len();
        bytes[i] ^= flip.1;
        if let Ok(Some((decoded, used))) = parse_response(&bytes) {
            let mut out = Vec::new();
            encode_response(&decoded, &mut out);
            let long_scenario = matches!(
                &decoded,
                Response::Lookup { answer, .. } if answer.scenario.len() > MAX_SCENARIO_LEN
            );
            if !long_scenario {
                prop_assert_eq!(&out[..], &bytes[..used]);
            }
        }
    }

    #[test]
    fn requests_round_trip_across_any_split(
        reqs in prop::collection::vec(request(), 1..40),
        cuts in prop::collection::vec(1usize..60, 1..20),
    ) {
        let mut bytes = BytesMut::new();
        for r in &reqs {
            encode_request(r, &mut bytes);
        }
        let got = feed(&bytes, &cuts, decode_request);
        let want: Vec<Request> = reqs.iter().copied().map(canonical_request).collect();
        prop_assert_eq!(got, want);
    }

}

proptest! {
    // Generating many long Unicode strings is slow in debug builds.
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn responses_round_trip_across_any_split(
        resps in prop::collection::vec(response(), 1..20),
        cuts in prop::collection::vec(1usize..1500, 1..20),
    ) {
        let mut bytes = Vec::new();
        for r in &resps {
            let before = bytes.len();
            encode_response(r, &mut bytes);
            prop_assert!(bytes.len() - before <= MAX_FRAME_LEN);
        }
        let got = feed(&bytes, &cuts, decode_response);
        let want: Vec<Response> = resps.iter().map(canonical_response).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn borrowed_and_owned_answers_encode_alike(id in any::<u32>(), answer in answer()) {
        let mut owned = Vec::new();
        encode_response(&Response::Lookup { id, answer: answer.clone() }, &mut owned);
        let mut borrowed = Vec::new();
        bouncer_api::encode_lookup_answer(id, &answer.as_borrowed(), &mut borrowed);
        prop_assert_eq!(owned, borrowed);
    }
}
