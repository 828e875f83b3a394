//! Go-style duration strings (`4h`, `3h59m55.5s`, `1.5ms`, `20µs`, `-1m3s`) as LAPI and our
//! config write them.

use std::time::Duration;

/// A parsed duration in milliseconds, negative for LAPI's `deleted` entries.
pub type Millis = i64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected Go syntax such as 10s, 1m30s, 4h or 1.5ms")]
pub struct DurationError(pub String);

/// Parses Go's `time.Duration` string form into signed milliseconds (fractions of a
/// millisecond are rounded toward zero). `0` alone is accepted, as Go does.
pub fn parse_go_millis(input: &str) -> Result<Millis, DurationError> {
    let err = || DurationError(input.to_string());
    let s = input.trim();
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    // Accumulate in nanoseconds as f64-free integer math: whole part and fraction apart.
    let mut total_nanos: i128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let number = &rest[..num_end];
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let unit_nanos: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if whole.is_empty() && frac.is_empty() {
            return Err(err());
        }
        if frac.contains('.') {
            return Err(err());
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err())?
        };
        total_nanos = total_nanos
            .checked_add(whole.checked_mul(unit_nanos).ok_or_else(err)?)
            .ok_or_else(err)?;
        if !frac.is_empty() {
            // Keep at most 18 fractional digits: beyond that nothing is representable.
            let digits = &frac[..frac.len().min(18)];
            let value: i128 = digits.parse().map_err(|_| err())?;
            let scale = 10i128.pow(digits.len() as u32);
            total_nanos = total_nanos
                .checked_add(value * unit_nanos / scale)
                .ok_or_else(err)?;
        }
        if total_nanos > i64::MAX as i128 * 1_000_000 {
            return Err(err());
        }
    }
    let millis = (total_nanos / 1_000_000) as i64;
    Ok(if negative { -millis } else { millis })
}

/// Parses a non-negative config duration (`10s`, `5m`, `1h30m`).
pub fn parse_config_duration(input: &str) -> Result<Duration, DurationError> {
    let ms = parse_go_millis(input)?;
    if ms < 0 {
        return Err(DurationError(input.to_string()));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Formats a duration the way Go would print whole seconds (`1h2m3s`), for logs and the CLI.
pub fn format_secs(total: u64) -> String {
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lapi_forms() {
        let cases = [
            ("4h", 4 * 3_600_000),
            ("3h59m55.504364541s", 14_395_504),
            ("1.5ms", 1),
            ("20µs", 0),
            ("20us", 0),
            ("0s", 0),
            ("0", 0),
            ("-1m3s", -63_000),
            ("1h0m0s", 3_600_000),
            ("+2s", 2_000),
            (".5s", 500),
            ("167h59m59s", 604_799_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_millis(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "", "-", "4", "h", "4x", "1.2.3s", "s4", "4h-3m", "1e3s", ".",
        ] {
            assert!(parse_go_millis(text).is_err(), "{text} should fail");
        }
        assert!(parse_config_duration("-5s").is_err());
    }

    #[test]
    fn formats_seconds() {
        assert_eq!(format_secs(5), "5s");
        assert_eq!(format_secs(65), "1m5s");
        assert_eq!(format_secs(3725), "1h2m5s");
    }
}
