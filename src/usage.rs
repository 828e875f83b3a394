//! The doors' usage counters (a leaf: no I/O, no imports from the rest of the crate):
//! requests looked up, and requests refused by (origin, remediation). The store's
//! [`Decider`](crate::store::Decider) holds one [`Usage`], so every door reaches it
//! through `decider.usage()`; the pusher in [`crate::lapi::usage`] reads its
//! [`Usage::totals`] and sends the differences to LAPI, `/metrics` and the web console
//! read the same totals.
//!
//! How a door counts a request:
//! - every request it answered (allowed, bypassed or refused): [`Usage::add_processed`]
//!   (or [`Usage::add_processed_n`] for a batch reported by the Caddy module);
//! - every request it refused or challenged: [`Usage::add_dropped`]`(origin, scenario,
//!   remediation)` (or [`Usage::add_dropped_n`]). `origin` is the decision's origin
//!   (`crowdsec`, `cscli`, `CAPI`, `lists` with the list's `scenario`, which is reported
//!   as `lists:<scenario>` the way CrowdSec's own bouncers tell lists apart), or one of
//!   the origins of this module for a refusal that no decision made: [`FAIL_CLOSED_ORIGIN`]
//!   (a ban of `on_lapi_unreachable: closed` while LAPI is stale) and [`APPSEC_ORIGIN`]
//!   (a request the AppSec engine blocked); `scenario` is `""` for all but `lists`.
//!   `remediation` is what the client got: `ban`, `captcha` (a challenge shown), and so
//!   on.
//!
//! Every processed request is one relaxed atomic add; only a refused one takes a short
//! lock to count it by (origin, remediation), with at most 256 distinct pairs (more are
//! counted as (`other`, `other`)).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Origin reported for the bans of `on_lapi_unreachable: closed`.
pub const FAIL_CLOSED_ORIGIN: &str = "fail_closed";
/// Origin reported for the requests the AppSec engine blocked.
pub const APPSEC_ORIGIN: &str = "appsec";
/// Distinct (origin, remediation) pairs counted; more are counted as ("other", "other").
const MAX_DROPPED_KEYS: usize = 256;

struct Dropped {
    /// As reported: `lists:<scenario>` for blocklists.
    origin: Box<str>,
    remediation: Box<str>,
    count: u64,
}

impl Dropped {
    #[inline]
    fn is(&self, origin: &str, scenario: &str, remediation: &str) -> bool {
        if &*self.remediation != remediation {
            return false;
        }
        if origin == "lists" && !scenario.is_empty() {
            self.origin.strip_prefix("lists:") == Some(scenario)
        } else {
            &*self.origin == origin
        }
    }
}

/// Requests seen by the doors since start.
#[derive(Default)]
pub struct Usage {
    processed: AtomicU64,
    dropped: Mutex<Vec<Dropped>>,
}

/// Totals of [`Usage`] at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub processed: u64,
    /// By (origin as reported, remediation).
    pub dropped: BTreeMap<(String, String), u64>,
}

impl Usage {
    /// One request looked up by a door (allowed, bypassed or blocked).
    #[inline]
    pub fn add_processed(&self) {
        self.add_processed_n(1);
    }

    /// `n` requests looked up (reported in a batch by the Caddy module).
    #[inline]
    pub fn add_processed_n(&self, n: u64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }

    /// One request blocked by a decision of `origin` (and `scenario`, which names the
    /// list when `origin` is `lists`) whose type is `remediation`.
    pub fn add_dropped(&self, origin: &str, scenario: &str, remediation: &str) {
        self.add_dropped_n(origin, scenario, remediation, 1);
    }

    /// `n` requests blocked alike (reported in a batch by the Caddy module).
    pub fn add_dropped_n(&self, origin: &str, scenario: &str, remediation: &str, n: u64) {
        let mut list = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = list
            .iter_mut()
            .find(|e| e.is(origin, scenario, remediation))
        {
            e.count += n;
            return;
        }
        let (origin, remediation) = if list.len() >= MAX_DROPPED_KEYS {
            ("other".into(), "other")
        } else {
            (usage_origin(origin, scenario), remediation)
        };
        match list
            .iter_mut()
            .find(|e| *e.origin == *origin && &*e.remediation == remediation)
        {
            Some(e) => e.count += n,
            None => list.push(Dropped {
                origin: origin.into(),
                remediation: remediation.into(),
                count: n,
            }),
        }
    }

    /// What was counted since start (the pusher sends differences of these).
    pub fn totals(&self) -> Totals {
        let processed = self.processed.load(Ordering::Relaxed);
        let list = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = BTreeMap::new();
        for e in list.iter() {
            *dropped
                .entry((e.origin.to_string(), e.remediation.to_string()))
                .or_default() += e.count;
        }
        Totals { processed, dropped }
    }
}

/// The origin label of usage metrics: blocklists are told apart by their scenario.
pub fn usage_origin<'a>(origin: &'a str, scenario: &str) -> Cow<'a, str> {
    if origin == "lists" && !scenario.is_empty() {
        Cow::Owned(format!("lists:{scenario}"))
    } else {
        Cow::Borrowed(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_by_origin_with_lists_apart() {
        let u = Usage::default();
        for _ in 0..3 {
            u.add_processed();
        }
        u.add_dropped("crowdsec", "ssh-bf", "ban");
        u.add_dropped("crowdsec", "http-probing", "ban");
        u.add_dropped("lists", "firehol", "ban");
        u.add_dropped("lists", "tor", "ban");
        u.add_dropped("lists", "tor", "captcha");
        let t = u.totals();
        assert_eq!(t.processed, 3);
        let want: BTreeMap<(String, String), u64> = [
            (("crowdsec", "ban"), 2),
            (("lists:firehol", "ban"), 1),
            (("lists:tor", "ban"), 1),
            (("lists:tor", "captcha"), 1),
        ]
        .into_iter()
        .map(|((o, r), n)| ((o.to_string(), r.to_string()), n))
        .collect();
        assert_eq!(t.dropped, want);
    }

    #[test]
    fn distinct_pairs_are_bounded() {
        let u = Usage::default();
        for i in 0..(MAX_DROPPED_KEYS + 50) {
            u.add_dropped(&format!("origin{i}"), "", "ban");
        }
        let t = u.totals();
        assert_eq!(t.dropped.len(), MAX_DROPPED_KEYS + 1);
        assert_eq!(t.dropped[&("other".into(), "other".into())], 50);
    }
}
