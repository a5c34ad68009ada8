//! Activity windows: days + hours in a time zone, overnight windows and DST days.
//!
//! A window that starts on day D runs from the *start edge* of D to the *end edge* (on D, or
//! on D+1 when the end is not after the start: `23:00-07:00`). An edge is the first instant at
//! which the local clock reads that time or later: a start in the spring-forward gap begins at
//! the jump; an edge in the autumn's repeated hour is its first occurrence, so no window
//! re-opens when the clock goes back.

use std::fmt;

use jiff::{
    Timestamp,
    civil::{Date, Weekday},
    tz::{AmbiguousOffset, TimeZone},
};

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Minutes in a day; an end of `24:00`.
pub const DAY_MINUTES: u16 = 24 * 60;

/// A set of weekdays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaySet(u8);

impl DaySet {
    pub const ALL: DaySet = DaySet(0x7f);
    fn index(day: Weekday) -> u8 {
        day.to_monday_zero_offset() as u8
    }
    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << Self::index(day)) != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses `mon-fri`, `sat,sun`, `fri-mon` (wraps), `all`, `daily`, `weekdays`, `weekends`.
    pub fn parse(s: &str) -> Result<DaySet, String> {
        let day = |t: &str| -> Result<u8, String> {
            let t = t.trim().to_ascii_lowercase();
            DAY_NAMES
                .iter()
                .position(|d| t == *d || t == full_name(d))
                .map(|i| i as u8)
                .ok_or_else(|| format!("`{}` is not a day (mon, tue, ..., sun)", t))
        };
        let mut bits = 0u8;
        for part in s.split(',') {
            let p = part.trim().to_ascii_lowercase();
            match p.as_str() {
                "all" | "daily" | "every day" => bits |= 0x7f,
                "weekdays" => bits |= 0x1f,
                "weekends" => bits |= 0x60,
                _ => match p.split_once('-') {
                    Some((a, b)) => {
                        let (mut i, j) = (day(a)?, day(b)?);
                        loop {
                            bits |= 1 << i;
                            if i == j {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => bits |= 1 << day(&p)?,
                },
            }
        }
        if bits == 0 {
            return Err("no days given".into());
        }
        Ok(DaySet(bits))
    }
}

fn full_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

impl fmt::Display for DaySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0x7f => return f.write_str("daily"),
            0x1f => return f.write_str("mon-fri"),
            0x60 => return f.write_str("sat,sun"),
            _ => {}
        }
        let names: Vec<&str> = (0..7)
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| DAY_NAMES[i])
            .collect();
        f.write_str(&names.join(","))
    }
}

/// Parses `HH:MM` into minutes after midnight; `24:00` only when `allow_24` (an end).
pub fn parse_hhmm(s: &str, allow_24: bool) -> Result<u16, String> {
    let t = s.trim();
    let bad = || format!("`{t}` is not a time of day (HH:MM, 00:00 to 23:59)");
    let (h, m) = t.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !allow_24)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// A checked window.
#[derive(Clone, Debug)]
pub struct Window {
    pub days: DaySet,
    /// Minutes after local midnight, `0..1440`.
    pub start: u16,
    /// Minutes after local midnight, `0..=1440`; `<= start` means the next day.
    pub end: u16,
    pub time_zone_name: String,
    pub time_zone: TimeZone,
}

impl Window {
    /// Parses `HH:MM-HH:MM` hours for `days` in `tz`.
    pub fn parse(days: DaySet, hours: &str, tz_name: &str, tz: TimeZone) -> Result<Window, String> {
        let (a, b) = hours.split_once('-').ok_or_else(|| {
            format!("`{hours}` is not an hour range (HH:MM-HH:MM, e.g. 23:00-07:00)")
        })?;
        let start = parse_hhmm(a, false)?;
        let end = parse_hhmm(b, true)?;
        if start == end {
            return Err(format!(
                "`{hours}` is an empty window; write `00:00-24:00` for a whole day"
            ));
        }
        Ok(Window {
            days,
            start,
            end,
            time_zone_name: tz_name.to_string(),
            time_zone: tz,
        })
    }

    pub fn is_overnight(&self) -> bool {
        self.end <= self.start
    }

    /// Whether `now` lies inside the window.
    pub fn contains(&self, now: Timestamp) -> bool {
        let today = now.to_zoned(self.time_zone.clone()).date();
        let yesterday = today.yesterday().unwrap_or(today);
        [yesterday, today].into_iter().any(|d| {
            self.days.contains(d.weekday())
                && match self.span_of(d) {
                    Some((s, e)) => s <= now && now < e,
                    None => false,
                }
        })
    }

    /// The instants `[start, end)` of the window that starts on local day `day`.
    pub fn span_of(&self, day: Date) -> Option<(Timestamp, Timestamp)> {
        let start = edge(&self.time_zone, day, self.start)?;
        let end_day = if self.is_overnight() {
            day.tomorrow().ok()?
        } else {
            day
        };
        let end = edge(&self.time_zone, end_day, self.end)?;
        Some((start, end))
    }
}

/// The first instant at which the local clock on `day` reads `minutes` or later.
pub fn edge(tz: &TimeZone, day: Date, minutes: u16) -> Option<Timestamp> {
    let (day, minutes) = if minutes >= DAY_MINUTES {
        (day.tomorrow().ok()?, 0)
    } else {
        (day, minutes)
    };
    let dt = day.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0);
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // `after` puts the civil time before the jump; the next transition is the jump.
            let probe = after.to_timestamp(dt).ok()?;
            tz.following(probe).next().map(|t| t.timestamp())
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(
            f,
            "{} {}-{} {}",
            self.days,
            hm(self.start),
            hm(self.end),
            self.time_zone_name
        )
    }
}
