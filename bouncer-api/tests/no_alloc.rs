//! The server's hot path (decode_request, encode_lookup_answer / encode_response with
//! borrowed strings) performs no heap allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;

use bouncer_api::{
    decode_request, encode_lookup_answer, encode_request, encode_response, Flags, LookupAnswer,
    Remediation, Request, Response, Status,
};
use bytes::BytesMut;

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn serving_lookups_does_not_allocate() {
    let addrs: Vec<IpAddr> = [
        "192.0.2.1",
        "2001:db8::7",
        "::ffff:198.51.100.3",
        "10.0.0.1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let mut input = BytesMut::with_capacity(64 * 1024);
    for i in 0..1000u32 {
        let addr = addrs[i as usize % addrs.len()];
        encode_request(&Request::Lookup { id: i, addr }, &mut input);
        if i % 100 == 0 {
            encode_request(&Request::Ping { id: i }, &mut input);
        }
    }
    let origin = String::from("crowdsec");
    let scenario = String::from("crowdsecurity/http-probing");
    let mut output = BytesMut::with_capacity(256 * 1024);

    let mut malformed = BytesMut::from(&[0x00u8, 0x01][..]);

    ARMED.with(|a| a.set(true));
    let mut served = 0;
    while let Some(req) = decode_request(&mut input).unwrap() {
        match req {
            Request::Lookup { id, addr } => {
                let answer = if addr.is_ipv4() {
                    LookupAnswer {
                        status: Status::Ok,
                        remediation: Remediation::Ban,
                        flags: Flags::NONE,
                        expires_in_s: 3600,
                        origin: origin.as_str(),
                        scenario: scenario.as_str(),
                        decision_type: "ban",
                    }
                } else {
                    LookupAnswer::allow()
                };
                encode_lookup_answer(id, &answer, &mut output);
                encode_response(&Response::Lookup { id, answer }, &mut output);
            }
            Request::Ping { id } => encode_response(&Response::<&str>::Pong { id }, &mut output),
        }
        served += 1;
    }
    let bad = decode_request(&mut malformed).unwrap_err();
    encode_response(&bad.error_response(), &mut output);
    ARMED.with(|a| a.set(false));

    assert_eq!(served, 1010);
    assert_eq!(COUNT.with(Cell::get), 0, "allocations on the serving path");
}
