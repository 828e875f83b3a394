//! Wire protocol between Caddy and the cerberus daemon's Unix socket.
//!
//! * [`codec`]: frame types, allocation-free encoders, incremental decoders. The
//!   byte layout is specified in `PROTOCOL.md` next to this crate's `Cargo.toml`,
//!   and `testdata/vectors.json` holds shared test vectors.
//! * [`Client`]: async (tokio) pooled, pipelining client.
//! * [`BlockingClient`]: blocking client with pipelined batches.
//!
//! Server side, per connection:
//!
//! ```
//! use bytes::BytesMut;
//! use bouncer_api::{decode_request, encode_lookup_answer, encode_response, LookupAnswer, Remediation, Request, Response};
//!
//! # fn main() -> Result<(), bouncer_api::FrameError> {
//! let mut input = BytesMut::new();
//! bouncer_api::encode_request(&Request::Lookup { id: 7, addr: "192.0.2.1".parse().unwrap() }, &mut input);
//! let mut output = BytesMut::new();
//! while let Some(req) = decode_request(&mut input)? {
//!     match req {
//!         Request::Lookup { id, addr: _ } => {
//!             let answer = LookupAnswer::<&str> { remediation: Remediation::Ban, origin: "crowdsec", ..LookupAnswer::allow() };
//!             encode_lookup_answer(id, &answer, &mut output);
//!         }
//!         Request::Ping { id } => encode_response(&Response::<&str>::Pong { id }, &mut output),
//!     }
//! }
//! assert_eq!(output.len(), 27);
//! # Ok(())
//! # }
//! ```

pub mod appsec;
pub mod blocking;
pub mod captcha;
pub mod client;
pub mod codec;
mod error;
pub mod report;
pub mod segment;

pub use blocking::{BlockingClient, BlockingConfig};
pub use client::{Client, ClientConfig};
pub use codec::{
    decode_request, decode_response, encode_lookup_answer, encode_request, encode_response,
    frame_len, parse_request, parse_response, truncate_utf8, ErrorCode, Flags, FrameError, Kind,
    LookupAnswer, Remediation, Request, Response, Status, MAX_FRAME_LEN, VERSION,
};
pub use error::ClientError;

// Compiles the README's examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
