//! Go's duration syntax ("15s", "1m30s", "200ms") as Consul speaks it in query strings and JSON.
//!
//! Used by the request builders (`wait`, session `TTL`/`LockDelay`) and by the serde types, which
//! must also read the durations Consul sends back as integer nanoseconds (a session's `LockDelay`
//! comes back as `1.5e+10`, not `"15s"`). The simulator has its own copy: the client must not
//! depend on the simulator crate.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a Go duration ("10s", "1.5h", "1m30s", "250ms", "0"); negative values are refused
/// because nothing in Consul's API means a negative duration.
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut total: u128 = 0;
    let mut rest = s;
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
            return None;
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        total = total.checked_add(whole.checked_mul(unit)?)?;
        // Fractions beyond nanosecond precision are dropped, as Go does.
        let mut scale = unit;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            total = total.checked_add(u128::from(digit - b'0') * scale)?;
        }
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).ok()?;
    let nanos = u32::try_from(total % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, nanos))
}

/// Formats a duration as Go's `Duration.String()` does ("15s", "1m0s", "200ms", "0s"), which
/// every Consul version parses back.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < NANOS_PER_SEC {
        // Go picks the largest unit that shows the value exactly.
        let (ms, sub_ms) = (nanos / 1_000_000, nanos % 1_000_000);
        let (us, sub_us) = (nanos / 1_000, nanos % 1_000);
        return if sub_ms == 0 {
            format!("{ms}ms")
        } else if sub_us == 0 {
            format!("{us}us")
        } else {
            format!("{nanos}ns")
        };
    }
    let total_secs = d.as_secs();
    let (h, m, s) = (total_secs / 3600, (total_secs % 3600) / 60, total_secs % 60);
    let frac = d.subsec_nanos();
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let digits = format!("{frac:09}");
        format!("{s}.{}s", digits.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// A duration from a JSON number of nanoseconds; Consul encodes Go's `time.Duration` that way
/// where the field is not a `ReadableDuration`, sometimes in exponent form (`1.5e+10`).
fn from_nanos_f64(n: f64) -> Option<Duration> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(n / 1e9).ok()
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Wire {
    Text(String),
    Int(u64),
    Float(f64),
}

fn from_wire<E: serde::de::Error>(w: Wire) -> Result<Option<Duration>, E> {
    match w {
        Wire::Text(s) if s.trim().is_empty() => Ok(None),
        Wire::Text(s) => parse(&s)
            .map(Some)
            .ok_or_else(|| E::custom(format!("invalid duration {s:?}"))),
        Wire::Int(n) => Ok(Some(Duration::from_nanos(n))),
        Wire::Float(f) => from_nanos_f64(f)
            .map(Some)
            .ok_or_else(|| E::custom(format!("invalid duration {f}"))),
    }
}

/// `#[serde(with = "duration::go")]`: written as a Go string, read from a string or nanoseconds.
pub mod go {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(from_wire(Wire::deserialize(d)?)?.unwrap_or_default())
    }
}

/// `#[serde(with = "duration::go_opt")]`: like [`go`], with null and `""` meaning "not set"
/// (a session without a TTL answers `"TTL": ""`).
pub mod go_opt {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Wire>::deserialize(d)? {
            Some(w) => from_wire(w),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
        assert_eq!(parse("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1h2m3.004s"), Some(Duration::new(3723, 4_000_000)));
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in ["", "10", "s", "-5s", "5x", "1..5s", "."] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_secs(15)), "15s");
        assert_eq!(format(Duration::from_secs(60)), "1m0s");
        assert_eq!(format(Duration::from_secs(300)), "5m0s");
        assert_eq!(format(Duration::from_millis(200)), "200ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(3723)), "1h2m3s");
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

    #[derive(serde::Deserialize, serde::Serialize)]
    struct Holder {
        #[serde(with = "go")]
        d: Duration,
        #[serde(with = "go_opt", default)]
        o: Option<Duration>,
    }

    #[test]
    fn serde_reads_strings_and_nanoseconds() {
        let h: Holder = serde_json::from_str(r#"{"d": 1.5e+10, "o": "30s"}"#).unwrap();
        assert_eq!(h.d, Duration::from_secs(15));
        assert_eq!(h.o, Some(Duration::from_secs(30)));
        let h: Holder = serde_json::from_str(r#"{"d": 15000000000, "o": ""}"#).unwrap();
        assert_eq!(h.d, Duration::from_secs(15));
        assert_eq!(h.o, None);
        let h: Holder = serde_json::from_str(r#"{"d": "12ms", "o": null}"#).unwrap();
        assert_eq!(h.d, Duration::from_millis(12));
        assert_eq!(h.o, None);
        assert!(serde_json::from_str::<Holder>(r#"{"d": "soon"}"#).is_err());
        let out = serde_json::to_value(Holder {
            d: Duration::from_secs(10),
            o: None,
        })
        .unwrap();
        assert_eq!(out, serde_json::json!({"d": "10s", "o": null}));
    }
}
