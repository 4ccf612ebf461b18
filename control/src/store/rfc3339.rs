//! RFC 3339 timestamps in one fixed form: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
//!
//! The audit chain hashes an event's time as text, so the text must be exactly
//! reproducible from the stored `timestamptz`: always UTC (`Z`), always six fractional
//! digits (Postgres keeps microseconds, no more, no fewer), no leap seconds (neither
//! Postgres nor `SystemTime` has them). Written here rather than with a date crate so the
//! form cannot change under us with a dependency upgrade.

use std::time::{SystemTime, UNIX_EPOCH};

const MICROS_PER_SECOND: i128 = 1_000_000;
const SECONDS_PER_DAY: i128 = 86_400;

/// `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, truncated to whole microseconds (toward the
/// past). Years outside 0000–9999 print with more digits or a sign, which RFC 3339 cannot
/// express; Postgres never produces such times from `now()`.
pub fn format_micros(t: SystemTime) -> String {
    let nanos: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    let micros = nanos.div_euclid(1_000);
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let fraction = micros.rem_euclid(MICROS_PER_SECOND);
    let days = seconds.div_euclid(SECONDS_PER_DAY);
    let of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`: shift to eras of 400 years starting on March 1st, where leap days
/// fall at the end of a year).
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    const DAYS_PER_ERA: i128 = 146_097;
    // 1970-01-01 is day 719_468 counted from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z.rem_euclid(DAYS_PER_ERA);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: i64, micros: u32) -> SystemTime {
        let whole = Duration::from_secs(seconds.unsigned_abs());
        let base = if seconds >= 0 {
            UNIX_EPOCH + whole
        } else {
            UNIX_EPOCH - whole
        };
        base + Duration::from_micros(micros.into())
    }

    #[test]
    fn formats_known_instants() {
        // Expected values from `date -u -d @SECONDS`.
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (1_709_210_096, 789_012, "2024-02-29T12:34:56.789012Z"),
            (951_782_400, 1, "2000-02-29T00:00:00.000001Z"),
            (253_402_300_799, 999_999, "9999-12-31T23:59:59.999999Z"),
            (-1, 0, "1969-12-31T23:59:59.000000Z"),
        ];
        for (seconds, micros, expected) in cases {
            assert_eq!(format_micros(at(seconds, micros)), expected, "{seconds}");
        }
    }

    #[test]
    fn truncates_to_microseconds_toward_the_past() {
        assert_eq!(
            format_micros(UNIX_EPOCH + Duration::from_nanos(1_999)),
            "1970-01-01T00:00:00.000001Z"
        );
        assert_eq!(
            format_micros(UNIX_EPOCH - Duration::from_nanos(1)),
            "1969-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn every_day_of_a_leap_cycle_round_trips() {
        // Walk 1600-03-01 ..= 2400-02-29 a day at a time; the date must advance by exactly
        // one day each step (month and year rolling over correctly, Feb 29 only in leap
        // years).
        let mut previous = civil_from_days(-135_080 - 1);
        for days in -135_080..=157_113 {
            let (y, m, d) = civil_from_days(days);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            assert!((1..=month_len).contains(&d), "{y}-{m}-{d}");
            let (py, pm, pd) = previous;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = d == 1 && ((y, m) == (py, pm + 1) || (y, m, pm) == (py + 1, 1, 12));
            assert!(next_day || next_month, "{py}-{pm}-{pd} then {y}-{m}-{d}");
            previous = (y, m, d);
        }
        assert_eq!(civil_from_days(-135_080), (1600, 3, 1));
        assert_eq!(civil_from_days(157_113), (2400, 2, 29));
    }
}
