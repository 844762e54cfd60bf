//! Maintenance windows as plain arithmetic over instants: is a window open at this instant,
//! and if not, when does the next one open. The rollout (`rollout.rs`) asks at every run and
//! hands the answer to the plan (`plan::within_window`); nothing here reads a clock.
//!
//! A window opens on each of its days at `start` local time and closes at `end`, on the same
//! day or, when `end` is not after `start`, on the next. Local times become instants with the
//! zone's rules on that very date (jiff's "compatible" choice): a start inside a spring-forward
//! gap opens at the end of the gap, a start inside a fall-back fold opens at its first
//! occurrence. So a window is always a span of real time, and DST only moves it.
//!
//! Time zones come from the tz database embedded in the binary (jiff's `tzdb-bundle-always`),
//! not /usr/share/zoneinfo, which the debian-slim runtime image does not have.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use rehydrator_config::WindowSettings;

/// One window, its zone resolved.
#[derive(Debug, Clone)]
pub struct Window {
    days: Vec<Weekday>,
    start: Time,
    end: Time,
    tz: TimeZone,
}

/// The configured windows; none means the rollout may step at any time.
#[derive(Debug, Clone, Default)]
pub struct Windows(Vec<Window>);

/// What the windows say about one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowState {
    /// Steps may be taken (no windows configured, or one is open).
    Open,
    /// No window is open; the next opens at this instant, written in RFC 3339 with the offset
    /// of its own zone (None only if no window ever opens again, which valid settings exclude).
    Closed { next_open: Option<String> },
}

/// A window's zone is unknown to the embedded tz database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {0:?}")]
pub struct UnknownZone(pub String);

impl Window {
    pub fn new(
        days: Vec<Weekday>,
        start: Time,
        end: Time,
        time_zone: &str,
    ) -> Result<Self, UnknownZone> {
        let tz = TimeZone::get(time_zone).map_err(|_| UnknownZone(time_zone.to_owned()))?;
        Ok(Self {
            days,
            start,
            end,
            tz,
        })
    }

    /// The span of real time this window covers when it opens on `date`, if it opens that day.
    fn span_from(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        if !self.days.contains(&date.weekday()) {
            return None;
        }
        let close_date = if self.end > self.start {
            date
        } else {
            date.tomorrow().ok()?
        };
        let open = self.instant(date, self.start)?;
        let close = self.instant(close_date, self.end)?;
        Some((open, close))
    }

    fn instant(&self, date: Date, time: Time) -> Option<Timestamp> {
        date.to_datetime(time)
            .to_zoned(self.tz.clone())
            .ok()
            .map(|z| z.timestamp())
    }

    /// Whether the window is open at `now`, else when it opens next (within the next 8 days:
    /// every day of the week is looked at, and the day before for a span past midnight).
    fn at(&self, now: Timestamp) -> Result<(), Option<Zoned>> {
        let today = now.to_zoned(self.tz.clone()).date();
        let mut next: Option<Timestamp> = None;
        let mut day = today.yesterday().unwrap_or(today);
        for _ in 0..9 {
            if let Some((open, close)) = self.span_from(day) {
                if open <= now && now < close {
                    return Ok(());
                }
                if open > now && next.is_none_or(|n| n > open) {
                    next = Some(open);
                }
            }
            match day.tomorrow() {
                Ok(d) => day = d,
                Err(_) => break,
            }
        }
        Err(next.map(|t| t.to_zoned(self.tz.clone())))
    }
}

impl Windows {
    pub fn new(windows: Vec<Window>) -> Self {
        Self(windows)
    }

    /// The windows of `[rollout] windows`. Validation has checked every zone against the same
    /// embedded database; should one still be unknown, its hours are read in UTC rather than
    /// the window dropped, which would let steps run at any time.
    pub fn from_settings(settings: &[WindowSettings]) -> Self {
        Self(
            settings
                .iter()
                .map(|w| {
                    Window::new(w.days.clone(), w.start, w.end, &w.time_zone).unwrap_or_else(|e| {
                        tracing::error!(error = %e, "Maintenance window read in UTC.");
                        Window {
                            days: w.days.clone(),
                            start: w.start,
                            end: w.end,
                            tz: TimeZone::UTC,
                        }
                    })
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a step may be taken at `now_ms` (Unix milliseconds).
    pub fn state_at(&self, now_ms: u64) -> WindowState {
        if self.0.is_empty() {
            return WindowState::Open;
        }
        let Ok(now) = Timestamp::from_millisecond(i64::try_from(now_ms).unwrap_or(i64::MAX)) else {
            return WindowState::Open;
        };
        let mut next: Option<Zoned> = None;
        for w in &self.0 {
            match w.at(now) {
                Ok(()) => return WindowState::Open,
                Err(Some(z)) if next.as_ref().is_none_or(|n| z.timestamp() < n.timestamp()) => {
                    next = Some(z)
                }
                Err(_) => {}
            }
        }
        WindowState::Closed {
            next_open: next.map(|z| z.timestamp().display_with_offset(z.offset()).to_string()),
        }
    }
}

impl WindowState {
    /// Why the rollout waits, for its record and `rehydrator status`.
    pub fn reason(&self) -> Option<String> {
        match self {
            WindowState::Open => None,
            WindowState::Closed {
                next_open: Some(at),
            } => Some(format!(
                "outside the maintenance window; the next opens at {at}"
            )),
            WindowState::Closed { next_open: None } => {
                Some("outside the maintenance window; none opens again".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jiff::civil::time;

    const WEEKNIGHTS: [Weekday; 5] = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
    ];

    fn at(rfc3339: &str) -> u64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    fn windows(days: &[Weekday], start: (i8, i8), end: (i8, i8), tz: &str) -> Windows {
        Windows::new(vec![Window::new(
            days.to_vec(),
            time(start.0, start.1, 0, 0),
            time(end.0, end.1, 0, 0),
            tz,
        )
        .unwrap()])
    }

    fn closed_until(s: WindowState) -> String {
        match s {
            WindowState::Closed { next_open: Some(t) } => t,
            other => panic!("expected closed, got {other:?}"),
        }
    }

    #[test]
    fn no_windows_is_always_open() {
        assert_eq!(
            Windows::default().state_at(at("2026-01-01T00:00:00Z")),
            WindowState::Open
        );
    }

    #[test]
    fn open_inside_closed_outside_with_the_next_opening() {
        let w = windows(&WEEKNIGHTS, (2, 0), (5, 0), "Europe/Berlin");
        // Tuesday 2026-11-24, 03:00 Berlin (UTC+1) is 02:00Z: open.
        assert_eq!(w.state_at(at("2026-11-24T02:00:00Z")), WindowState::Open);
        // The start is inclusive, the end exclusive.
        assert_eq!(w.state_at(at("2026-11-24T01:00:00Z")), WindowState::Open);
        assert_eq!(
            closed_until(w.state_at(at("2026-11-24T04:00:00Z"))),
            "2026-11-25T02:00:00+01:00"
        );
        // Friday after the window: next is Monday.
        assert_eq!(
            closed_until(w.state_at(at("2026-11-27T10:00:00Z"))),
            "2026-11-30T02:00:00+01:00"
        );
        // Saturday night: still Monday.
        assert_eq!(
            closed_until(w.state_at(at("2026-11-28T23:59:00Z"))),
            "2026-11-30T02:00:00+01:00"
        );
    }

    #[test]
    fn a_window_ending_before_it_starts_runs_past_midnight() {
        // Saturday 22:00 to Sunday 06:00 in New York (UTC-5 in November).
        let w = windows(&[Weekday::Saturday], (22, 0), (6, 0), "America/New_York");
        // Sunday 2026-11-29 01:00 local = 06:00Z: open, though Sunday is not a listed day.
        assert_eq!(w.state_at(at("2026-11-29T06:00:00Z")), WindowState::Open);
        // Saturday 23:00 local.
        assert_eq!(w.state_at(at("2026-11-29T04:00:00Z")), WindowState::Open);
        // Sunday 06:00 local: closed, next Saturday 22:00.
        assert_eq!(
            closed_until(w.state_at(at("2026-11-29T11:00:00Z"))),
            "2026-12-05T22:00:00-05:00"
        );
        // Saturday 21:59 local: opens in a minute.
        assert_eq!(
            closed_until(w.state_at(at("2026-11-29T02:59:00Z"))),
            "2026-11-28T22:00:00-05:00"
        );
        // Friday 23:00 local is not inside (the window belongs to Saturday).
        assert!(matches!(
            w.state_at(at("2026-11-28T04:00:00Z")),
            WindowState::Closed { .. }
        ));
    }

    #[test]
    fn spring_forward_moves_the_window_with_the_clock() {
        // Europe/Berlin springs forward on Sunday 2026-03-29 at 02:00 -> 03:00.
        let w = windows(&[Weekday::Sunday], (1, 0), (4, 0), "Europe/Berlin");
        // 01:30 CET = 00:30Z: open.
        assert_eq!(w.state_at(at("2026-03-29T00:30:00Z")), WindowState::Open);
        // 03:30 CEST = 01:30Z: still open; the window lasted two real hours that night.
        assert_eq!(w.state_at(at("2026-03-29T01:30:00Z")), WindowState::Open);
        // 04:00 CEST = 02:00Z: closed; the next opens a week later in summer time.
        assert_eq!(
            closed_until(w.state_at(at("2026-03-29T02:00:00Z"))),
            "2026-04-05T01:00:00+02:00"
        );
        // Before the change, the next opening is named in winter time.
        assert_eq!(
            closed_until(w.state_at(at("2026-03-28T12:00:00Z"))),
            "2026-03-29T01:00:00+01:00"
        );
    }

    #[test]
    fn a_start_inside_the_gap_opens_when_the_gap_ends() {
        // 02:30 does not exist in Berlin on 2026-03-29: the window opens an hour later, 03:30 CEST.
        let w = windows(&[Weekday::Sunday], (2, 30), (5, 0), "Europe/Berlin");
        assert_eq!(
            closed_until(w.state_at(at("2026-03-28T20:00:00Z"))),
            "2026-03-29T03:30:00+02:00"
        );
        // 03:30 CEST = 01:30Z.
        assert_eq!(w.state_at(at("2026-03-29T01:30:00Z")), WindowState::Open);
        assert!(matches!(
            w.state_at(at("2026-03-29T01:29:00Z")),
            WindowState::Closed { .. }
        ));
    }

    #[test]
    fn fall_back_keeps_the_first_occurrence_and_the_window_grows() {
        // Berlin falls back on Sunday 2026-10-25 at 03:00 CEST -> 02:00 CET. A 02:00-03:00
        // window opens at the first 02:00 (CEST, 00:00Z) and closes at 03:00 CET (02:00Z).
        let w = windows(&[Weekday::Sunday], (2, 0), (3, 0), "Europe/Berlin");
        assert_eq!(
            closed_until(w.state_at(at("2026-10-24T12:00:00Z"))),
            "2026-10-25T02:00:00+02:00"
        );
        assert_eq!(w.state_at(at("2026-10-25T00:00:00Z")), WindowState::Open);
        assert_eq!(w.state_at(at("2026-10-25T01:30:00Z")), WindowState::Open);
        assert!(matches!(
            w.state_at(at("2026-10-25T02:00:00Z")),
            WindowState::Closed { .. }
        ));
    }

    #[test]
    fn the_earliest_of_several_windows_is_the_next() {
        let w = Windows::new(vec![
            Window::new(
                vec![Weekday::Saturday],
                time(2, 0, 0, 0),
                time(3, 0, 0, 0),
                "UTC",
            )
            .unwrap(),
            Window::new(
                vec![Weekday::Thursday],
                time(23, 0, 0, 0),
                time(1, 0, 0, 0),
                "Asia/Tokyo",
            )
            .unwrap(),
        ]);
        // Wednesday 2026-11-25 12:00Z: Thursday 23:00 Tokyo is 14:00Z Thursday, before Saturday.
        assert_eq!(
            closed_until(w.state_at(at("2026-11-25T12:00:00Z"))),
            "2026-11-26T23:00:00+09:00"
        );
        // Inside the Tokyo one, past its midnight: open.
        assert_eq!(w.state_at(at("2026-11-26T15:30:00Z")), WindowState::Open);
        let reason = w.state_at(at("2026-11-26T17:00:00Z")).reason().unwrap();
        assert_eq!(
            reason,
            "outside the maintenance window; the next opens at 2026-11-28T02:00:00+00:00"
        );
    }

    #[test]
    fn an_unknown_zone_is_refused() {
        assert_eq!(
            Window::new(vec![], time(1, 0, 0, 0), time(2, 0, 0, 0), "Europe/Berln").unwrap_err(),
            UnknownZone("Europe/Berln".into())
        );
    }
}
