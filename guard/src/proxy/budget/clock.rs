//! UTC calendar windows from Unix seconds: the day, the month and where each ends. Budgets reset
//! at UTC midnight and on the first of the month, whatever the host's time zone.

pub const DAY: u64 = 86_400;

/// Days since 1970-01-01 of `(year, month, day)` (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month)` of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The UTC day of `now`.
pub fn day(now: u64) -> u64 {
    now / DAY
}

/// The UTC month of `now`, as `year * 12 + month - 1`.
pub fn month(now: u64) -> u64 {
    let (year, month) = civil_from_days((now / DAY) as i64);
    (year * 12 + i64::from(month) - 1).max(0) as u64
}

/// Seconds from `now` to the next UTC midnight.
pub fn to_next_day(now: u64) -> u64 {
    DAY - now % DAY
}

/// Seconds from `now` to the first of the next UTC month.
pub fn to_next_month(now: u64) -> u64 {
    let (year, month) = civil_from_days((now / DAY) as i64);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let start = days_from_civil(year, month, 1).max(0) as u64 * DAY;
    start.saturating_sub(now).max(1)
}

/// `now` as RFC 3339.
pub fn rfc3339(now: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(now))
        .to_string()
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        // 2026-12-01T11:00:00Z, 2024-02-29T23:59:59Z, 2026-12-31T23:00:00Z.
        let dec1 = 1_796_122_800;
        assert_eq!(month(dec1), 2026 * 12 + 11);
        assert_eq!(to_next_month(dec1), 30 * DAY + 13 * 3600);
        assert_eq!(to_next_day(dec1), 13 * 3600);
        let leap = 1_709_251_199;
        assert_eq!(month(leap), 2024 * 12 + 1);
        assert_eq!(to_next_month(leap), 1);
        assert_eq!(month(leap + 1), 2024 * 12 + 2);
        let new_year = 1_798_758_000;
        assert_eq!(to_next_month(new_year), 3600);
        for days in [-1000, 0, 59, 365, 20_000] {
            let (y, m) = civil_from_days(days);
            assert!(days_from_civil(y, m, 1) <= days);
        }
    }
}
