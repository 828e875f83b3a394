//! The decision model: LAPI's JSON decisions, checked and normalised into [`Decision`].

use crate::duration::parse_go_millis;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What to do with a client. Declared weakest first so that "strongest wins" is `max`:
/// `Ban > Captcha > Throttle > Other`. Unknown, custom types are `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Remediation {
    Other = 0,
    Throttle = 1,
    Captcha = 2,
    Ban = 3,
}

impl Remediation {
    /// Maps a LAPI decision type (case-insensitive) to its remediation.
    pub fn from_type(type_name: &str) -> Remediation {
        if type_name.eq_ignore_ascii_case("ban") {
            Remediation::Ban
        } else if type_name.eq_ignore_ascii_case("captcha") {
            Remediation::Captcha
        } else if type_name.eq_ignore_ascii_case("throttle") {
            Remediation::Throttle
        } else {
            Remediation::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Remediation::Ban => "ban",
            Remediation::Captcha => "captcha",
            Remediation::Throttle => "throttle",
            Remediation::Other => "other",
        }
    }
}

/// What a decision covers, normalised: the network address of the prefix, and IPv4-mapped
/// IPv6 (`::ffff:a.b.c.d`, `::ffff:0:0/96` and longer) turned into IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    V4 { addr: u32, prefix: u8 },
    V6 { addr: u128, prefix: u8 },
}

const MAPPED_PREFIX: u128 = 0xffff_0000_0000;

impl Target {
    pub fn from_net(net: IpNet) -> Target {
        match net {
            IpNet::V4(n) => Target::v4(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => {
                let addr = u128::from(n.addr());
                let prefix = n.prefix_len();
                if prefix >= 96 && (addr >> 32) == (MAPPED_PREFIX >> 32) {
                    Target::v4(addr as u32, prefix - 96)
                } else {
                    Target::v6(addr, prefix)
                }
            }
        }
    }

    pub fn from_ip(ip: IpAddr) -> Target {
        match normalize_ip(ip) {
            IpAddr::V4(a) => Target::v4(u32::from(a), 32),
            IpAddr::V6(a) => Target::v6(u128::from(a), 128),
        }
    }

    fn v4(addr: u32, prefix: u8) -> Target {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Target::V4 {
            addr: addr & mask,
            prefix,
        }
    }

    fn v6(addr: u128, prefix: u8) -> Target {
        let mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix)
        };
        Target::V6 {
            addr: addr & mask,
            prefix,
        }
    }

    /// True for a single address (/32 or /128).
    pub fn is_single(&self) -> bool {
        matches!(
            self,
            Target::V4 { prefix: 32, .. } | Target::V6 { prefix: 128, .. }
        )
    }

    pub fn scope(&self) -> &'static str {
        if self.is_single() {
            "Ip"
        } else {
            "Range"
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, Target::from_ip(ip)) {
            (Target::V4 { addr, prefix }, Target::V4 { addr: ip, .. }) => {
                Target::v4(ip, *prefix)
                    == Target::V4 {
                        addr: *addr,
                        prefix: *prefix,
                    }
            }
            (Target::V6 { addr, prefix }, Target::V6 { addr: ip, .. }) => {
                Target::v6(ip, *prefix)
                    == Target::V6 {
                        addr: *addr,
                        prefix: *prefix,
                    }
            }
            _ => false,
        }
    }

    /// True when `inner` lies wholly inside this target (equal targets included).
    pub fn contains_target(&self, inner: Target) -> bool {
        match (*self, inner) {
            (Target::V4 { addr, prefix }, Target::V4 { addr: a, prefix: p }) => {
                p >= prefix && Target::v4(a, prefix) == Target::V4 { addr, prefix }
            }
            (Target::V6 { addr, prefix }, Target::V6 { addr: a, prefix: p }) => {
                p >= prefix && Target::v6(a, prefix) == Target::V6 { addr, prefix }
            }
            _ => false,
        }
    }

    pub fn to_net(self) -> IpNet {
        match self {
            Target::V4 { addr, prefix } => {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), prefix).expect("prefix <= 32"))
            }
            Target::V6 { addr, prefix } => {
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), prefix).expect("prefix <= 128"))
            }
        }
    }

    /// Parses an IP or CIDR the way LAPI values come: `1.2.3.4`, `2001:db8::1`,
    /// `10.0.0.0/8`, `::ffff:1.2.3.4`. Host bits in a prefix are cleared.
    pub fn parse(value: &str) -> Option<Target> {
        let value = value.trim();
        if value.contains('/') {
            let net: IpNet = value.parse().ok()?;
            Some(Target::from_net(net))
        } else {
            let ip: IpAddr = value.parse().ok()?;
            Some(Target::from_ip(ip))
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            match self {
                Target::V4 { addr, .. } => write!(f, "{}", Ipv4Addr::from(*addr)),
                Target::V6 { addr, .. } => write!(f, "{}", Ipv6Addr::from(*addr)),
            }
        } else {
            write!(f, "{}", self.to_net())
        }
    }
}

/// Turns an IPv4-mapped IPv6 address into the IPv4 address it carries.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// One decision as LAPI sends it. Every field is optional here so that one bad decision
/// is rejected on its own instead of failing the whole response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawDecision {
    pub id: Option<i64>,
    pub origin: Option<String>,
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    pub scope: Option<String>,
    pub value: Option<String>,
    pub duration: Option<String>,
    pub scenario: Option<String>,
}

/// A checked decision, ready for the store. `expires_at` is in unix seconds, rounded up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    pub target: Target,
    pub type_name: String,
    pub origin: String,
    pub scenario: String,
    pub expires_at: u32,
}

impl Decision {
    pub fn remediation(&self) -> Remediation {
        Remediation::from_type(&self.type_name)
    }
}

/// Why a decision was not taken. Bounded: used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    MissingField,
    BadValue,
    BadDuration,
    UnsupportedScope,
    ScopeMismatch,
    /// Filtered out by the operator's config: counted, not logged as an error.
    FilteredType,
    FilteredOrigin,
    FilteredScenario,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MissingField => "missing_field",
            Rejection::BadValue => "bad_value",
            Rejection::BadDuration => "bad_duration",
            Rejection::UnsupportedScope => "unsupported_scope",
            Rejection::ScopeMismatch => "scope_mismatch",
            Rejection::FilteredType => "filtered_type",
            Rejection::FilteredOrigin => "filtered_origin",
            Rejection::FilteredScenario => "filtered_scenario",
        }
    }

    /// Filters chosen by the operator are expected; the rest are data errors.
    pub fn is_error(self) -> bool {
        !matches!(
            self,
            Rejection::FilteredType | Rejection::FilteredOrigin | Rejection::FilteredScenario
        )
    }
}

/// The operator's filters, applied locally too (LAPI applies most of them as well, but a
/// delete or an old LAPI must not bring in what the operator excluded).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Lower-cased decision types to keep; empty keeps every type.
    pub types: Vec<String>,
    /// Exact origins to keep; empty keeps every origin.
    pub origins: Vec<String>,
    /// Lower-cased substrings: keep a decision whose scenario contains any of them.
    pub scenarios_containing: Vec<String>,
    /// Lower-cased substrings: drop a decision whose scenario contains any of them.
    pub scenarios_not_containing: Vec<String>,
}

impl Filters {
    fn check(&self, type_name: &str, origin: &str, scenario: &str) -> Result<(), Rejection> {
        if !self.types.is_empty() && !self.types.iter().any(|t| t.eq_ignore_ascii_case(type_name)) {
            return Err(Rejection::FilteredType);
        }
        if !self.origins.is_empty() && !self.origins.iter().any(|o| o == origin) {
            return Err(Rejection::FilteredOrigin);
        }
        let lower = scenario.to_ascii_lowercase();
        if !self.scenarios_containing.is_empty()
            && !self.scenarios_containing.iter().any(|s| lower.contains(s))
        {
            return Err(Rejection::FilteredScenario);
        }
        if self
            .scenarios_not_containing
            .iter()
            .any(|s| lower.contains(s))
        {
            return Err(Rejection::FilteredScenario);
        }
        Ok(())
    }
}

/// Checks a decision from the `new` list. `now_ms` is the receipt time in unix ms.
pub fn accept_new(raw: RawDecision, now_ms: i64, filters: &Filters) -> Result<Decision, Rejection> {
    let id = raw.id.ok_or(Rejection::MissingField)?;
    let value = raw.value.ok_or(Rejection::MissingField)?;
    let type_name = raw.type_name.ok_or(Rejection::MissingField)?;
    let duration = raw.duration.ok_or(Rejection::MissingField)?;
    let target = parse_scoped(raw.scope.as_deref(), &value)?;
    let origin = raw.origin.unwrap_or_default();
    let scenario = raw.scenario.unwrap_or_default();
    let millis = parse_go_millis(&duration).map_err(|_| Rejection::BadDuration)?;
    filters.check(&type_name, &origin, &scenario)?;
    Ok(Decision {
        id,
        target,
        type_name,
        origin,
        scenario,
        expires_at: expiry_secs(now_ms, millis),
    })
}

/// Checks a decision from the `deleted` list: only its id and target matter.
pub fn accept_deleted(raw: &RawDecision) -> Result<(i64, Target), Rejection> {
    let id = raw.id.ok_or(Rejection::MissingField)?;
    let value = raw.value.as_deref().ok_or(Rejection::MissingField)?;
    Ok((id, parse_scoped(raw.scope.as_deref(), value)?))
}

fn parse_scoped(scope: Option<&str>, value: &str) -> Result<Target, Rejection> {
    let scope = scope.ok_or(Rejection::MissingField)?;
    if scope.eq_ignore_ascii_case("ip") {
        let target = Target::parse(value).ok_or(Rejection::BadValue)?;
        // An `Ip` decision is one address; a prefix there is a data error upstream.
        if !value.contains('/') || target.is_single() {
            Ok(target)
        } else {
            Err(Rejection::ScopeMismatch)
        }
    } else if scope.eq_ignore_ascii_case("range") {
        Target::parse(value).ok_or(Rejection::BadValue)
    } else {
        Err(Rejection::UnsupportedScope)
    }
}

/// `now + duration`, rounded up to the next whole second, clamped to u32 unix seconds.
pub fn expiry_secs(now_ms: i64, duration_ms: i64) -> u32 {
    let until = now_ms.saturating_add(duration_ms);
    let secs = until.div_euclid(1000) + i64::from(until.rem_euclid(1000) != 0);
    secs.clamp(0, u32::MAX as i64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(scope: &str, value: &str, duration: &str) -> RawDecision {
        RawDecision {
            id: Some(7),
            origin: Some("crowdsec".into()),
            type_name: Some("ban".into()),
            scope: Some(scope.into()),
            value: Some(value.into()),
            duration: Some(duration.into()),
            scenario: Some("crowdsecurity/ssh-bf".into()),
        }
    }

    #[test]
    fn normalises_targets() {
        assert_eq!(
            Target::parse("::ffff:1.2.3.4"),
            Some(Target::V4 {
                addr: 0x01020304,
                prefix: 32
            })
        );
        assert_eq!(
            Target::parse("::ffff:10.0.0.0/104"),
            Some(Target::V4 {
                addr: 0x0a000000,
                prefix: 8
            })
        );
        assert_eq!(
            Target::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Target::parse("2001:db8::1").unwrap().to_string(),
            "2001:db8::1"
        );
        assert!(Target::parse("10.0.0.0/33").is_none());
        assert!(Target::parse("not-an-ip").is_none());
        let range = Target::parse("2001:db8::/32").unwrap();
        assert!(range.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!range.contains("2001:db9::1".parse().unwrap()));
        assert!(!range.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn accepts_scopes_case_insensitively() {
        let f = Filters::default();
        let d = accept_new(raw("ip", "1.2.3.4", "1h"), 1_000_000, &f).unwrap();
        assert!(d.target.is_single());
        assert_eq!(d.expires_at, 1000 + 3600);
        let d = accept_new(raw("RANGE", "10.0.0.0/8", "1.5s"), 1_000_000, &f).unwrap();
        assert_eq!(d.target.scope(), "Range");
        assert_eq!(d.expires_at, 1002);
    }

    #[test]
    fn rejects_bad_decisions_with_reasons() {
        let f = Filters::default();
        let cases = [
            (raw("Country", "FR", "1h"), Rejection::UnsupportedScope),
            (raw("AS", "1234", "1h"), Rejection::UnsupportedScope),
            (raw("Ip", "1.2.3", "1h"), Rejection::BadValue),
            (raw("Ip", "10.0.0.0/8", "1h"), Rejection::ScopeMismatch),
            (raw("Ip", "1.2.3.4", "forever"), Rejection::BadDuration),
            (
                RawDecision {
                    value: None,
                    ..raw("Ip", "", "1h")
                },
                Rejection::MissingField,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(accept_new(input, 0, &f), Err(want));
        }
    }

    #[test]
    fn applies_filters() {
        let f = Filters {
            types: vec!["ban".into()],
            origins: vec!["crowdsec".into(), "cscli".into()],
            scenarios_containing: vec!["ssh".into()],
            scenarios_not_containing: vec!["slow".into()],
        };
        assert!(accept_new(raw("Ip", "1.2.3.4", "1h"), 0, &f).is_ok());
        let mut captcha = raw("Ip", "1.2.3.4", "1h");
        captcha.type_name = Some("captcha".into());
        assert_eq!(accept_new(captcha, 0, &f), Err(Rejection::FilteredType));
        let mut capi = raw("Ip", "1.2.3.4", "1h");
        capi.origin = Some("CAPI".into());
        assert_eq!(accept_new(capi, 0, &f), Err(Rejection::FilteredOrigin));
        let mut slow = raw("Ip", "1.2.3.4", "1h");
        slow.scenario = Some("crowdsecurity/SSH-SLOW-bf".into());
        assert_eq!(accept_new(slow, 0, &f), Err(Rejection::FilteredScenario));
        let mut http = raw("Ip", "1.2.3.4", "1h");
        http.scenario = Some("crowdsecurity/http-probing".into());
        assert_eq!(accept_new(http, 0, &f), Err(Rejection::FilteredScenario));
    }

    #[test]
    fn expiry_rounds_up_and_handles_negative() {
        assert_eq!(expiry_secs(1_000_500, 0), 1001);
        assert_eq!(expiry_secs(1_000_000, 0), 1000);
        assert_eq!(expiry_secs(1_000_000, -63_000), 937);
        assert_eq!(expiry_secs(0, -5000), 0);
    }

    #[test]
    fn remediation_order() {
        assert!(Remediation::Ban > Remediation::Captcha);
        assert!(Remediation::Captcha > Remediation::Throttle);
        assert!(Remediation::Throttle > Remediation::Other);
        assert_eq!(Remediation::from_type("BAN"), Remediation::Ban);
        assert_eq!(Remediation::from_type("mfa"), Remediation::Other);
    }
}
