//! The LAPIs listed in `api_url` and the one in use. The bouncer client's clones and the
//! watcher share one [`Endpoints`], so the stream, the usage push, `/status`, `diagnose`
//! and the watcher's login all follow the same LAPI. The one in use stays until a pull
//! from it fails; then the next in the list takes over (wrapping round). All of them must
//! share one database, so the bouncer's stream cursor carries over to the next.

use super::PullError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tracing::{error, warn};

#[derive(Debug)]
pub struct Endpoints {
    urls: Vec<String>,
    current: AtomicUsize,
    switches: AtomicU64,
}

impl Endpoints {
    /// `urls` in the order of the config; the first one is used first. Never empty.
    pub fn new(urls: Vec<String>) -> anyhow::Result<Endpoints> {
        if urls.is_empty() {
            anyhow::bail!("api_url is not set");
        }
        let e = Endpoints {
            urls,
            current: AtomicUsize::new(0),
            switches: AtomicU64::new(0),
        };
        e.export();
        Ok(e)
    }

    /// The base URL in use.
    pub fn current(&self) -> &str {
        &self.urls[self.position()]
    }

    /// Index of the URL in use in `api_url` (0 is the first).
    pub fn position(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub fn all(&self) -> &[String] {
        &self.urls
    }

    /// How many times the URL in use changed.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// After a pull from `from` (the position it was sent to) failed with `why`: moves
    /// to the next URL and logs the switch. Returns the new position, or `None` with one
    /// URL only, or when another caller already moved on from `from`.
    pub fn fail_over(&self, from: usize, why: &PullError) -> Option<usize> {
        let n = self.urls.len();
        if let PullError::Forbidden(_) = why {
            // A wrong key is a config problem, not an outage: said loudly on each try.
            error!(
                "LAPI #{} of api_url ({}) refused the bouncer credentials: check api_key \
                 (`cscli bouncers list` on that LAPI) and that every LAPI in api_url shares \
                 one database",
                from + 1,
                self.urls[from]
            );
        }
        if n == 1 {
            return None;
        }
        let to = (from + 1) % n;
        self.current
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        self.switches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::LAPI_SWITCHES).increment(1);
        self.export();
        warn!(
            "LAPI #{} ({}) failed ({}): switching to LAPI #{} of api_url ({})",
            from + 1,
            self.urls[from],
            why.reason(),
            to + 1,
            self.urls[to]
        );
        Some(to)
    }

    /// `cerberus_lapi_in_use{url}`: 1 for the URL in use, 0 for the others.
    fn export(&self) {
        let now = self.position();
        for (i, url) in self.urls.iter().enumerate() {
            metrics::gauge!(crate::metrics::LAPI_IN_USE, "url" => url.clone()).set(if i == now {
                1.0
            } else {
                0.0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> PullError {
        PullError::Connect("refused".into())
    }

    #[test]
    fn a_failure_moves_to_the_next_and_wraps_round() {
        let e = Endpoints::new(vec![
            "http://a".into(),
            "http://b".into(),
            "http://c".into(),
        ])
        .unwrap();
        assert_eq!(e.current(), "http://a");
        assert_eq!(e.fail_over(0, &down()), Some(1));
        assert_eq!(e.current(), "http://b");
        // A second report of the same failure does not skip a LAPI.
        assert_eq!(e.fail_over(0, &down()), None);
        assert_eq!(e.current(), "http://b");
        assert_eq!(e.fail_over(1, &down()), Some(2));
        assert_eq!(e.fail_over(2, &down()), Some(0));
        assert_eq!(e.current(), "http://a");
        assert_eq!(e.switches(), 3);
    }

    #[test]
    fn one_url_never_switches() {
        let e = Endpoints::new(vec!["http://a".into()]).unwrap();
        assert_eq!(e.fail_over(0, &PullError::Forbidden("no".into())), None);
        assert_eq!(e.current(), "http://a");
        assert_eq!(e.switches(), 0);
        assert!(Endpoints::new(Vec::new()).is_err());
    }
}
