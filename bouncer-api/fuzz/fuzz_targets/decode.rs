//! Feeds arbitrary bytes to both decoders, whole and in two pieces, and checks that
//! whatever decodes re-encodes to a frame that decodes to the same value.

#![no_main]

use bouncer_api::{
    decode_request, decode_response, encode_request, encode_response, parse_request,
    parse_response, MAX_FRAME_LEN,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where to split the stream, the rest is the stream.
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(data.len());

    let mut buf = BytesMut::from(&data[..split]);
    let mut fed_all = false;
    loop {
        match decode_request(&mut buf) {
            Ok(Some(req)) => {
                let mut out = BytesMut::new();
                encode_request(&req, &mut out);
                assert!(out.len() <= MAX_FRAME_LEN);
                assert_eq!(parse_request(&out), Ok(Some((req, out.len()))));
            }
            Ok(None) if !fed_all => {
                buf.extend_from_slice(&data[split..]);
                fed_all = true;
            }
            Ok(None) | Err(_) => break,
        }
    }

    let mut buf = BytesMut::from(data);
    while let Ok(Some(resp)) = decode_response(&mut buf) {
        let mut out = BytesMut::new();
        encode_response(&resp, &mut out);
        assert!(out.len() <= MAX_FRAME_LEN);
        let (again, used) = parse_response(&out)
            .expect("re-encoded response decodes")
            .expect("re-encoded response is complete");
        assert_eq!(used, out.len());
        // Equal unless the encoder had to cut an over-long scenario.
        if again != resp {
            let mut twice = BytesMut::new();
            encode_response(&again, &mut twice);
            assert_eq!(twice, out);
        }
    }
});
