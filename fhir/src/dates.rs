//! FHIR dates as Arrow `Date32` intervals (docs/fhir-datasets.md, Conventions): the calendar
//! date as written (no time-zone shift), partial dates widened.

/// Days since 1970-01-01 of a calendar date; four-digit years keep it well inside i32.
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i32 {
    verbund_calendar::days_from_civil(i64::from(year), month, day) as i32
}

fn days_in_month(year: i32, month: u32) -> u32 {
    verbund_calendar::days_in_month(i64::from(year), month)
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A FHIR `date`, `dateTime` or `instant` as the interval of days it covers: `2021` →
/// (2021-01-01, 2021-12-31), `2021-03` → the month, a full date or dateTime → that day twice.
pub fn parse_interval(value: &str) -> Result<(i32, i32), String> {
    let bad = || format!("invalid date {value:?}");
    let date = value.split('T').next().unwrap_or_default();
    let mut parts = date.split('-');
    let year_text = parts.next().unwrap_or_default();
    if year_text.len() != 4 {
        return Err(bad());
    }
    let year = digits(year_text).ok_or_else(bad)? as i32;
    let month = parts.next();
    let day = parts.next();
    if parts.next().is_some() {
        return Err(bad());
    }
    // A time is only allowed after a full date.
    if value.contains('T') && day.is_none() {
        return Err(bad());
    }
    match (month, day) {
        (None, _) => Ok((days_from_civil(year, 1, 1), days_from_civil(year, 12, 31))),
        (Some(m), None) => {
            let m = digits(m).filter(|m| (1..=12).contains(m)).ok_or_else(bad)?;
            Ok((days_from_civil(year, m, 1), days_from_civil(year, m, days_in_month(year, m))))
        }
        (Some(m), Some(d)) => {
            let (Some(m), Some(d)) = (digits(m), digits(d)) else {
                return Err(bad());
            };
            if !(1..=12).contains(&m) || d == 0 || d > days_in_month(year, m) {
                return Err(bad());
            }
            let day = days_from_civil(year, m, d);
            Ok((day, day))
        }
    }
}

/// An optional date element as an interval; absent → (None, None).
pub fn interval(value: Option<&str>) -> Result<(Option<i32>, Option<i32>), String> {
    match value {
        None => Ok((None, None)),
        Some(v) => parse_interval(v).map(|(s, e)| (Some(s), Some(e))),
    }
}

/// A Period: the start's first day, the end's last day; a missing end stays open (NULL).
pub fn period(start: Option<&str>, end: Option<&str>) -> Result<(Option<i32>, Option<i32>), String> {
    let s = start.map(parse_interval).transpose()?.map(|(s, _)| s);
    let e = end.map(parse_interval).transpose()?.map(|(_, e)| e);
    Ok((s, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn partial_dates_widen() {
        assert_eq!(parse_interval("1962"), Ok((days_from_civil(1962, 1, 1), days_from_civil(1962, 12, 31))));
        assert_eq!(parse_interval("2024-02"), Ok((days_from_civil(2024, 2, 1), days_from_civil(2024, 2, 29))));
        let d = days_from_civil(2010, 8, 5);
        assert_eq!(parse_interval("2010-08-05T23:16:58-05:00"), Ok((d, d)));
        assert!(parse_interval("2010-02-30").is_err());
        assert!(parse_interval("2010-13").is_err());
        assert!(parse_interval("yesterday").is_err());
        assert!(parse_interval("2010T10:00").is_err());
    }

    #[test]
    fn open_period() {
        assert_eq!(period(Some("2024-02"), None), Ok((Some(days_from_civil(2024, 2, 1)), None)));
        assert_eq!(period(None, Some("2024")), Ok((None, Some(days_from_civil(2024, 12, 31)))));
    }
}
