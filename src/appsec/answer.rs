//! The AppSec component's answer read into a verdict, or why there is none.
//!
//! crowdsec v1.7.8 `pkg/appsec/appsec.go`, `GenerateResponse`: 200 with
//! `{"action":"allow","http_status":200}`; a blocking rule gives the configured status
//! (403 by default) with the action of the remediation (`ban`, `captcha`, or a custom
//! one). 401 means the key is unknown to its LAPI, 500 a request it could not parse.

use serde::Deserialize;
use std::fmt;

/// What AppSec said about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Ban,
    Captcha,
}

/// Why a call gave no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401: the component does not know the bouncer key.
    Unauthorized,
    /// Any other status that is not a verdict (5xx mostly).
    Status(u16),
    Timeout,
    /// No connection (refused, reset, DNS).
    Unreachable,
    /// A 200/403 whose body is not the documented JSON.
    BadAnswer,
    /// No bouncer key yet (engine mode before the engine gave one).
    NoKey,
    /// A header value that cannot be sent.
    BadRequest,
}

impl Failure {
    /// Label values of `cerberus_appsec_errors_total{reason}`, indexed by [`Failure::index`].
    pub const LABELS: [&'static str; 6] = [
        "unauthorized",
        "status",
        "timeout",
        "unreachable",
        "bad_answer",
        "no_key",
    ];

    pub fn index(self) -> usize {
        match self {
            Failure::Unauthorized => 0,
            Failure::Status(_) => 1,
            Failure::Timeout => 2,
            Failure::Unreachable => 3,
            Failure::BadAnswer | Failure::BadRequest => 4,
            Failure::NoKey => 5,
        }
    }

    pub(super) fn from_reqwest(e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Unreachable
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unauthorized => f.write_str(
                "401: the component does not accept the bouncer key; it must be a bouncer key of the LAPI the AppSec engine reports to",
            ),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::Timeout => f.write_str("timed out (appsec_timeout)"),
            Failure::Unreachable => f.write_str("cannot connect"),
            Failure::BadAnswer => f.write_str("an answer that is not AppSec's JSON"),
            Failure::NoKey => f.write_str("no bouncer key yet"),
            Failure::BadRequest => f.write_str("a header value that cannot be sent"),
        }
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    action: Option<&'a str>,
}

/// Reads one answer.
pub fn read(status: u16, body: &[u8]) -> Result<Verdict, Failure> {
    match status {
        200 => Ok(Verdict::Allow),
        401 => Err(Failure::Unauthorized),
        // A blocking answer's status is configurable in the AppSec config
        // (`blocked_http_code`), 403 by default; its JSON names the action.
        400..=499 => {
            let parsed: Body<'_> = serde_json::from_slice(body).map_err(|_| Failure::BadAnswer)?;
            match parsed.action {
                Some(a) if a.eq_ignore_ascii_case("captcha") => Ok(Verdict::Captcha),
                Some(a) if a.eq_ignore_ascii_case("allow") => Ok(Verdict::Allow),
                // `ban`, and any custom action of a blocking rule, refuse.
                Some(_) => Ok(Verdict::Ban),
                None => Err(Failure::BadAnswer),
            }
        }
        s => Err(Failure::Status(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_crowdsec() {
        assert_eq!(
            read(200, br#"{"action":"allow","http_status":200}"#),
            Ok(Verdict::Allow)
        );
        assert_eq!(
            read(403, br#"{"action":"ban","http_status":403}"#),
            Ok(Verdict::Ban)
        );
        assert_eq!(
            read(403, br#"{"action":"captcha","http_status":403}"#),
            Ok(Verdict::Captcha)
        );
        assert_eq!(
            read(403, br#"{"action":"custom","http_status":403}"#),
            Ok(Verdict::Ban)
        );
        assert_eq!(read(401, b""), Err(Failure::Unauthorized));
        assert_eq!(read(500, b""), Err(Failure::Status(500)));
        assert_eq!(read(503, b"x"), Err(Failure::Status(503)));
        assert_eq!(read(403, b"<html>"), Err(Failure::BadAnswer));
    }
}
