//! Table and property tests of windows: days, overnight windows, DST days (Europe/Paris).

use jiff::{Timestamp, civil::date, tz::TimeZone};
use proptest::prelude::*;

use super::window::{DaySet, Window, parse_hhmm};

fn paris() -> TimeZone {
    TimeZone::get("Europe/Paris").unwrap()
}

fn win(days: &str, hours: &str, tz: TimeZone) -> Window {
    Window::parse(DaySet::parse(days).unwrap(), hours, "tz", tz).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn day_sets_parse() {
    let table = [
        ("mon-fri", "mon-fri"),
        ("sat,sun", "sat,sun"),
        ("weekends", "sat,sun"),
        ("all", "daily"),
        ("fri-mon", "mon,fri,sat,sun"),
        ("Monday, wed", "mon,wed"),
    ];
    for (input, want) in table {
        assert_eq!(DaySet::parse(input).unwrap().to_string(), want, "{input}");
    }
    for bad in ["", "mon-fry", "funday", "mon--fri", "ù"] {
        assert!(DaySet::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn times_parse() {
    assert_eq!(parse_hhmm("07:30", false), Ok(450));
    assert_eq!(parse_hhmm("24:00", true), Ok(1440));
    for bad in [
        "24:00", "7", "07:3", "25:00", "07:60", "-1:00", "0x:00", "٣:00",
    ] {
        assert!(parse_hhmm(bad, false).is_err(), "{bad}");
    }
}

#[test]
fn seed_windows_table() {
    let banker = win("mon-fri", "08:00-23:00", paris());
    let muse = win("all", "23:00-07:00", paris());
    let fri_night = win("fri", "23:00-07:00", paris());
    // (window, instant, inside?)
    let table: &[(&Window, &str, bool)] = &[
        (&banker, "2026-03-09T07:59:59+01:00", false), // Monday
        (&banker, "2026-03-09T08:00:00+01:00", true),
        (&banker, "2026-03-09T22:59:59+01:00", true),
        (&banker, "2026-03-09T23:00:00+01:00", false),
        (&banker, "2026-03-14T12:00:00+01:00", false), // Saturday
        (&muse, "2026-03-09T23:00:00+01:00", true),
        (&muse, "2026-03-10T06:59:59+01:00", true),
        (&muse, "2026-03-10T07:00:00+01:00", false),
        (&muse, "2026-03-10T12:00:00+01:00", false),
        (&fri_night, "2026-03-14T03:00:00+01:00", true), // Saturday morning belongs to Friday
        (&fri_night, "2026-03-15T03:00:00+01:00", false), // Sunday morning: Saturday's night is not in
        (&fri_night, "2026-03-13T03:00:00+01:00", false), // Friday morning: Thursday's night
    ];
    for (w, at, want) in table {
        assert_eq!(w.contains(ts(at)), *want, "{w} at {at}");
    }
}

#[test]
fn dst_nights_last_exactly_what_the_local_clock_says() {
    let muse = win("all", "23:00-07:00", paris());
    let spring = muse.span_of(date(2026, 3, 28)).unwrap();
    assert_eq!(spring.1.duration_since(spring.0).as_hours(), 7);
    let autumn = muse.span_of(date(2026, 10, 24)).unwrap();
    assert_eq!(autumn.1.duration_since(autumn.0).as_hours(), 9);
    // A start in the spring gap begins at the jump (03:00 CEST = 01:00Z).
    let in_gap = win("sun", "02:30-05:00", paris());
    assert_eq!(
        in_gap.span_of(date(2026, 3, 29)).unwrap().0,
        ts("2026-03-29T01:00:00Z")
    );
    assert!(!in_gap.contains(ts("2026-03-29T00:59:59Z")));
    assert!(in_gap.contains(ts("2026-03-29T01:00:00Z")));
    // An end in the repeated autumn hour is its first pass; the window does not re-open.
    let in_fold = win("sun", "01:00-02:30", paris());
    assert!(in_fold.contains(ts("2026-10-25T00:29:59Z"))); // 02:29:59 CEST
    assert!(!in_fold.contains(ts("2026-10-25T00:30:00Z"))); // 02:30 CEST
    assert!(!in_fold.contains(ts("2026-10-25T01:15:00Z"))); // 02:15 CET, second pass
}

fn minute_of_day(t: Timestamp, tz: &TimeZone) -> (u16, jiff::civil::Weekday, jiff::civil::Weekday) {
    let z = t.to_zoned(tz.clone());
    let m = z.hour() as u16 * 60 + z.minute() as u16;
    let wd = z.weekday();
    (m, wd, wd.wrapping_sub(1))
}

/// The civil-clock model: valid whenever the window's edges are not inside a DST hour.
fn model(days: DaySet, s: u16, e: u16, t: Timestamp, tz: &TimeZone) -> bool {
    let (m, today, yesterday) = minute_of_day(t, tz);
    if e > s {
        days.contains(today) && s <= m && m < e
    } else {
        (days.contains(today) && m >= s) || (days.contains(yesterday) && m < e)
    }
}

fn arb_days() -> impl Strategy<Value = DaySet> {
    (1u8..=0x7f).prop_map(|bits| {
        let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let list: Vec<&str> = (0..7)
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| names[i])
            .collect();
        DaySet::parse(&list.join(",")).unwrap()
    })
}

fn hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// Instants over 2026, with extra weight on the DST weekends.
fn arb_instant() -> impl Strategy<Value = Timestamp> {
    let year = ts("2026-01-01T00:00:00Z").as_second();
    prop_oneof![
        (0i64..365 * 86_400).prop_map(move |s| Timestamp::from_second(year + s).unwrap()),
        (-36i64 * 3600..36 * 3600)
            .prop_map(
                |s| Timestamp::from_second(ts("2026-03-29T01:00:00Z").as_second() + s).unwrap()
            ),
        (-36i64 * 3600..36 * 3600)
            .prop_map(
                |s| Timestamp::from_second(ts("2026-10-25T01:00:00Z").as_second() + s).unwrap()
            ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn utc_windows_follow_the_clock(days in arb_days(), s in 0u16..1440, e in 1u16..=1440, t in arb_instant()) {
        prop_assume!(s != e);
        let w = Window::parse(days, &format!("{}-{}", hhmm(s), hhmm(e)), "UTC", TimeZone::UTC).unwrap();
        prop_assert_eq!(w.contains(t), model(days, s, e % 1440, t, &TimeZone::UTC));
    }

    #[test]
    fn paris_windows_follow_the_clock_across_dst(days in arb_days(), s in 0u16..1440, e in 1u16..=1440, t in arb_instant()) {
        let in_dst_hour = |m: u16| (120..180).contains(&m);
        prop_assume!(s != e && !in_dst_hour(s) && !in_dst_hour(e));
        let w = Window::parse(days, &format!("{}-{}", hhmm(s), hhmm(e)), "Europe/Paris", paris()).unwrap();
        prop_assert_eq!(w.contains(t), model(days, s, e % 1440, t, &paris()));
    }

}

proptest! {
    // Each case scans 60 hours minute by minute: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// Any daily window opens exactly once per start day, DST or not, and each run lasts its
    /// civil length within the hour the clock moved.
    #[test]
    fn dst_never_reopens_a_window(s in 0u16..1440, e in 1u16..=1440, autumn in any::<bool>()) {
        prop_assume!(s != e);
        // An off time that lies wholly in the skipped spring hour never happens: two windows
        // touch and run as one (correct, but not what this property counts).
        prop_assume!(autumn || !(e < s && e >= 120 && s <= 180));
        let w = Window::parse(DaySet::ALL, &format!("{}-{}", hhmm(s), hhmm(e)), "Europe/Paris", paris()).unwrap();
        let center = if autumn { ts("2026-10-25T01:00:00Z") } else { ts("2026-03-29T01:00:00Z") };
        let from = center.as_second() - 30 * 3600;
        let civil = if e > s { (e - s) as i64 } else { (1440 - s + e) as i64 };
        let (mut runs, mut was, mut run_start) = (0, w.contains(Timestamp::from_second(from).unwrap()), from);
        for minute in 1..(60 * 60) {
            let at = from + minute * 60;
            let now = w.contains(Timestamp::from_second(at).unwrap());
            if now && !was {
                runs += 1;
                run_start = at;
            }
            if !now && was && runs > 0 {
                let len = (at - run_start) / 60;
                prop_assert!((len - civil).abs() <= 60, "run of {len} min for civil {civil}");
            }
            was = now;
        }
        prop_assert!(runs <= 3, "{runs} openings in 60 h");
        prop_assert!(runs >= 2, "{runs} openings in 60 h");
    }
}
