//! The two doors Caddy knocks on: the Unix socket speaking the binary protocol of
//! `bouncer-api` (for the Caddy module) and an HTTP endpoint for Caddy's stock
//! `forward_auth` directive. Both ask the same [`Decider`] and count what they answer;
//! a captcha verdict goes on to the captcha flow through [`captcha`].

pub mod captcha;
pub mod fds;
pub mod forward_auth;
pub mod http;
pub mod segments;
pub mod socket;
mod stall;

use crate::decision::Remediation;
pub use crate::ready::Readiness;
use crate::store::{Hit, Source};
use bouncer_api::{Flags, LookupAnswer, Status};

/// The wire remediation for a decision's remediation.
pub fn wire_remediation(r: Remediation) -> bouncer_api::Remediation {
    match r {
        Remediation::Ban => bouncer_api::Remediation::Ban,
        Remediation::Captcha => bouncer_api::Remediation::Captcha,
        Remediation::Throttle => bouncer_api::Remediation::Throttle,
        Remediation::Other => bouncer_api::Remediation::Other,
    }
}

/// The answer for one lookup, borrowing its strings from the snapshot: `Bypassed` is
/// allow with the bypassed flag, `FailClosed` a ban with the fail-closed flag, a hit its
/// remediation, origin, scenario, type and the seconds left (rounded up: the expiry is a
/// whole second and `now` the current one).
#[inline]
pub fn lookup_answer<'a>(
    source: Source,
    hit: Option<Hit<'a>>,
    now: u32,
    ready: bool,
) -> LookupAnswer<&'a str> {
    let status = if ready { Status::Ok } else { Status::NotReady };
    match (source, hit) {
        (Source::Bypassed, _) => LookupAnswer {
            status,
            flags: Flags::BYPASSED,
            ..LookupAnswer::allow()
        },
        (Source::FailClosed, _) => LookupAnswer {
            status,
            remediation: bouncer_api::Remediation::Ban,
            flags: Flags::FAIL_CLOSED,
            ..LookupAnswer::allow()
        },
        (_, Some(hit)) => LookupAnswer {
            status,
            remediation: wire_remediation(hit.remediation()),
            flags: Flags::NONE,
            expires_in_s: hit.verdict.expires_at().saturating_sub(now),
            origin: &hit.meta.origin,
            scenario: &hit.meta.scenario,
            decision_type: &hit.meta.type_name,
        },
        (_, None) => LookupAnswer {
            status,
            ..LookupAnswer::allow()
        },
    }
}

/// Label values for `cerberus_lookups_total{remediation}`: the wire remediations in their
/// wire order, then `bypassed` (allowed because protection is off).
pub const REMEDIATION_LABELS: [&str; 6] =
    ["allow", "ban", "captcha", "throttle", "other", "bypassed"];

/// Index of `bypassed` in [`REMEDIATION_LABELS`].
pub const BYPASSED: usize = 5;

/// Counts one answered lookup for the usage metrics and returns its index in
/// [`REMEDIATION_LABELS`]. An allow is one atomic add; only a blocked answer takes the
/// usage lock (to count it by origin and remediation).
#[inline]
pub fn count_lookup(
    usage: &crate::usage::Usage,
    source: Source,
    hit: Option<Hit<'_>>,
    remediation: bouncer_api::Remediation,
) -> usize {
    usage.add_processed();
    if source == Source::Bypassed {
        return BYPASSED;
    }
    if remediation != bouncer_api::Remediation::Allow && !crate::captcha::counts(remediation) {
        match (source, hit) {
            (Source::FailClosed, _) => {
                usage.add_dropped(crate::usage::FAIL_CLOSED_ORIGIN, "", "ban")
            }
            (_, Some(hit)) => {
                usage.add_dropped(&hit.meta.origin, &hit.meta.scenario, &hit.meta.type_name)
            }
            (_, None) => usage.add_dropped("unknown", "", remediation.as_str()),
        }
    }
    remediation as usize
}

/// After a failed accept (out of file descriptors and the like): waits instead of
/// spinning, doubling from 5 ms up to 1 s. Returns true when shutdown was asked meanwhile.
pub(crate) async fn back_off_after_accept_error(
    door: &str,
    e: &std::io::Error,
    backoff: &mut std::time::Duration,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    use std::time::Duration;
    *backoff = (*backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
    tracing::warn!(
        "{door}: accept failed ({e}); retrying in {} ms",
        backoff.as_millis()
    );
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(*backoff) => false,
    }
}
