//! Go's duration syntax ("15s", "1m30s", "200ms") as Consul speaks it in query strings and JSON.
//!
//! Used by the request builders (`wait`, session `TTL`/`LockDelay`) and by the serde types, which
//! must also read the durations Consul sends back as integer nanoseconds (a session's `LockDelay`
//! comes back as `1.5e+10`, not `"15s"`). The syntax itself is `rehydrator_config::go_duration`,
//! shared with the simulator.

use std::time::Duration;

pub use rehydrator_config::go_duration::{format, parse};

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

/// `#[serde(with = "duration::go_signed")]`: like [`go_opt`], where a negative duration means
/// "not known" (None). Consul's autopilot health answers `"LastContact": "-1ns"` for a server
/// it has no contact with (seen on real 1.8.7 for a failed server): one such server must not
/// make the whole answer unreadable, least of all while a server is dead.
pub mod go_signed {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        super::go_opt::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Wire>::deserialize(d)? {
            Some(Wire::Text(s)) => match s.trim().strip_prefix('-') {
                Some(magnitude) => parse(magnitude)
                    .map(|_| None)
                    .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?}"))),
                None => from_wire(Wire::Text(s)),
            },
            Some(Wire::Float(f)) if f.is_finite() && f < 0.0 => Ok(None),
            Some(w) => from_wire(w),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize)]
    struct Holder {
        #[serde(with = "go")]
        d: Duration,
        #[serde(with = "go_opt", default)]
        o: Option<Duration>,
    }

    #[derive(serde::Deserialize)]
    struct Signed {
        #[serde(with = "go_signed", default)]
        d: Option<Duration>,
    }

    #[test]
    fn a_negative_duration_reads_as_unknown_and_garbage_still_fails() {
        let read = |json: &str| serde_json::from_str::<Signed>(json).map(|s| s.d);
        assert_eq!(read(r#"{"d": "-1ns"}"#).unwrap(), None);
        assert_eq!(read(r#"{"d": -1}"#).unwrap(), None);
        assert_eq!(
            read(r#"{"d": "12ms"}"#).unwrap(),
            Some(Duration::from_millis(12))
        );
        assert_eq!(read(r#"{"d": 0}"#).unwrap(), Some(Duration::ZERO));
        assert_eq!(read(r#"{}"#).unwrap(), None);
        assert!(read(r#"{"d": "-soon"}"#).is_err());
        assert!(read(r#"{"d": "soon"}"#).is_err());
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
