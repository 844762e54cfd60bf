//! Go's duration syntax ("15s", "1m30s", "200ms", "1.5h"), which Consul speaks in query
//! strings, JSON and agent configuration: `time.ParseDuration` and `Duration.String()`, exact to
//! the nanosecond. The one copy: the Consul client reads and writes it, the simulator answers
//! with it (and quotes Go's error texts), so both sides of the contract agree by construction.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Go's `time.ParseDuration`: signed nanoseconds, or Go's error text.
pub fn parse_signed(s: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if body == "0" {
        return Ok(0);
    }
    if body.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        total = whole
            .checked_mul(unit)
            .and_then(|w| total.checked_add(w))
            .ok_or_else(invalid)?;
        // Fractions beyond nanosecond precision are dropped, as Go does.
        let mut scale = unit;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            total += u128::from(digit - b'0') * scale;
        }
        if total > i64::MAX as u128 {
            return Err(invalid());
        }
    }
    let total = i64::try_from(total).map_err(|_| invalid())?;
    Ok(if neg { -total } else { total })
}

/// A Go duration as a `Duration`; negative values are refused, since nothing in Consul's API
/// means a negative duration.
pub fn parse(s: &str) -> Option<Duration> {
    let ns = parse_signed(s.trim()).ok()?;
    u64::try_from(ns).ok().map(Duration::from_nanos)
}

/// Go's `Duration.String()` ("15s", "1m0s", "200ms", "1.5µs", "0s"), which every Consul
/// version parses back.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < NANOS_PER_SEC {
        // Go picks the largest unit below a second and prints the fraction it leaves.
        let (unit, div) = if nanos >= 1_000_000 {
            ("ms", 1_000_000)
        } else if nanos >= 1_000 {
            ("µs", 1_000)
        } else {
            ("ns", 1)
        };
        return format!("{}{unit}", decimal(nanos, div));
    }
    let total_secs = d.as_secs();
    let (h, m, s) = (total_secs / 3600, (total_secs % 3600) / 60, total_secs % 60);
    let secs = format!(
        "{}s",
        decimal(
            u128::from(s) * NANOS_PER_SEC + u128::from(d.subsec_nanos()),
            NANOS_PER_SEC
        )
    );
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// `n / div` in decimal, without trailing zeros after the point.
fn decimal(n: u128, div: u128) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
        assert_eq!(parse("+3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse("10µs"), Some(Duration::from_micros(10)));
        assert_eq!(parse(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1h2m3.004s"), Some(Duration::new(3723, 4_000_000)));
        // Exact where floating point is not: 0.1 + 0.2 of a second.
        assert_eq!(parse("0.1s0.2s"), Some(Duration::from_millis(300)));
        assert_eq!(parse_signed("-1m30s"), Ok(-90_000_000_000));
    }

    #[test]
    fn refuses_what_go_refuses_in_go_s_words() {
        for bad in ["", "10", "s", "-5s", "5x", "1..5s", ".", "ten seconds"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_signed("10"),
            Err("time: missing unit in duration \"10\"".into())
        );
        assert_eq!(
            parse_signed("5x"),
            Err("time: unknown unit \"x\" in duration \"5x\"".into())
        );
        assert_eq!(
            parse_signed("."),
            Err("time: invalid duration \".\"".into())
        );
        assert_eq!(
            parse_signed("9999999999h"),
            Err("time: invalid duration \"9999999999h\"".into())
        );
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_secs(15)), "15s");
        assert_eq!(format(Duration::from_secs(60)), "1m0s");
        assert_eq!(format(Duration::from_secs(300)), "5m0s");
        assert_eq!(format(Duration::from_millis(200)), "200ms");
        assert_eq!(format(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format(Duration::from_nanos(1500)), "1.5µs");
        assert_eq!(format(Duration::from_nanos(7)), "7ns");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(format(Duration::from_secs(86400)), "24h0m0s");
        for d in [
            1u64,
            999,
            1_000,
            1_000_000,
            1_500_000_000,
            86_400_000_000_000,
        ] {
            let d = Duration::from_nanos(d);
            assert_eq!(parse(&format(d)), Some(d), "{d:?}");
        }
    }
}
