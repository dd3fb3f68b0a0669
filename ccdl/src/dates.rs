//! Calendar arithmetic on days since 1970-01-01 (proleptic Gregorian), and ages as
//! `birth_date` bounds.
//!
//! Age in a unit is the number of *completed* units: a person born 2004-02-29 is 17 years old
//! on 2022-02-28 and 18 on 2022-03-01; 0 months old on 2024-02-29 when born 2024-01-30. With
//! `L(n)` = today minus n units (a month or year step that lands on a missing day, such as
//! 2023-02-29, goes to the last day of that month), `age >= n` holds exactly when
//! `birth_date <= L(n)`; every comparison is built from that.

use verbund_proto::v1 as pb;

pub use verbund_calendar::{civil_from_days, days_from_civil, days_in_month};

/// Parses an RFC 3339 full-date `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_date(text: &str) -> Option<i32> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let digits = |s: &str| -> Option<u32> { if s.bytes().all(|c| c.is_ascii_digit()) { s.parse().ok() } else { None } };
    let year = digits(text.get(0..4)?)?;
    let month = digits(text.get(5..7)?)?;
    let day = digits(text.get(8..10)?)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
        return None;
    }
    i32::try_from(days_from_civil(i64::from(year), month, day)).ok()
}

/// Formats a day number as `YYYY-MM-DD` (for messages and tests).
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(i64::from(days));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `day` minus `months` calendar months; a missing day becomes the month's last day. `None`
/// outside years 1..=9999.
pub fn sub_months(day: i32, months: i64) -> Option<i32> {
    let (y, m, d) = civil_from_days(i64::from(day));
    let index = y.checked_mul(12)?.checked_add(i64::from(m) - 1)?.checked_sub(months)?;
    let year = index.div_euclid(12);
    let month = u32::try_from(index.rem_euclid(12)).ok()? + 1;
    if !(1..=9999).contains(&year) {
        return None;
    }
    let day_of_month = d.min(days_in_month(year, month));
    i32::try_from(days_from_civil(year, month, day_of_month)).ok()
}

/// The unit an age is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeUnit {
    Years,
    Months,
    Weeks,
    Days,
}

impl AgeUnit {
    /// UCUM codes (`a`, `mo`, `wk`, `d`) and the spelled-out forms the MII queries use.
    pub fn from_code(code: &str) -> Option<AgeUnit> {
        match code {
            "a" | "year" | "years" => Some(AgeUnit::Years),
            "mo" | "month" | "months" => Some(AgeUnit::Months),
            "wk" | "week" | "weeks" => Some(AgeUnit::Weeks),
            "d" | "day" | "days" => Some(AgeUnit::Days),
            _ => None,
        }
    }
}

/// The latest birth date of someone at least `n` units old on `today`.
pub fn latest_birth_date(today: i32, n: i64, unit: AgeUnit) -> Option<i32> {
    let day = match unit {
        AgeUnit::Years => return sub_months(today, n.checked_mul(12)?),
        AgeUnit::Months => return sub_months(today, n),
        AgeUnit::Weeks => i64::from(today).checked_sub(n.checked_mul(7)?)?,
        AgeUnit::Days => i64::from(today).checked_sub(n)?,
    };
    let (year, _, _) = civil_from_days(day);
    if !(1..=9999).contains(&year) {
        return None;
    }
    i32::try_from(day).ok()
}

/// An age comparison on a birth-date column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AgeTest {
    Compare(pb::CompareOp, f64),
    Range(f64, f64),
}

fn date_cmp(column: &str, op: pb::CompareOp, day: i32) -> pb::Filter {
    pb::Filter {
        kind: Some(pb::filter::Kind::Compare(pb::Comparison {
            column: column.to_string(),
            op: op as i32,
            value: Some(pb::Literal { value: Some(pb::literal::Value::Date(day)) }),
        })),
    }
}

fn and(a: pb::Filter, b: pb::Filter) -> pb::Filter {
    pb::Filter { kind: Some(pb::filter::Kind::And(pb::Conjunction { operands: vec![a, b] })) }
}

fn or(a: pb::Filter, b: pb::Filter) -> pb::Filter {
    pb::Filter { kind: Some(pb::filter::Kind::Or(pb::Conjunction { operands: vec![a, b] })) }
}

/// Largest age value accepted (in any unit): keeps the arithmetic far from overflow.
const MAX_AGE_VALUE: f64 = 1_000_000.0;

fn whole(v: f64, what: &str) -> Result<i64, String> {
    if !v.is_finite() || !(0.0..=MAX_AGE_VALUE).contains(&v) {
        return Err(format!("age {what} {v} is out of range (0..={MAX_AGE_VALUE})"));
    }
    // In range and finite: the cast is exact for whole numbers.
    Ok(v as i64)
}

/// A filter on `column` (a birth date) for an age test on `today`.
pub fn age_filter(column: &str, test: AgeTest, unit: AgeUnit, today: i32) -> Result<pb::Filter, String> {
    use pb::CompareOp as Op;
    let bound = |n: i64| {
        latest_birth_date(today, n, unit).ok_or_else(|| format!("age {n} {unit:?} is out of the calendar's range"))
    };
    match test {
        AgeTest::Compare(op, v) => {
            let floor = whole(v.floor(), "value")?;
            let ceil = whole(v.ceil(), "value")?;
            let is_whole = floor == ceil;
            match op {
                Op::Ge => Ok(date_cmp(column, Op::Le, bound(ceil)?)),
                Op::Gt => Ok(date_cmp(column, Op::Le, bound(floor + 1)?)),
                Op::Le => Ok(date_cmp(column, Op::Gt, bound(floor + 1)?)),
                Op::Lt => Ok(date_cmp(column, Op::Gt, bound(ceil)?)),
                Op::Eq | Op::Ne if !is_whole => {
                    Err(format!("an age compared with eq or ne must be a whole number, not {v}"))
                }
                Op::Eq => Ok(and(date_cmp(column, Op::Gt, bound(floor + 1)?), date_cmp(column, Op::Le, bound(floor)?))),
                Op::Ne => Ok(or(date_cmp(column, Op::Le, bound(floor + 1)?), date_cmp(column, Op::Gt, bound(floor)?))),
                Op::Unspecified => Err("no comparator".to_string()),
            }
        }
        AgeTest::Range(min, max) => {
            let low = whole(min.ceil(), "minValue")?;
            let high = whole(max.floor(), "maxValue")?;
            Ok(and(date_cmp(column, Op::Le, bound(low)?), date_cmp(column, Op::Gt, bound(high + 1)?)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> i32 {
        parse_date(s).expect("test date")
    }

    /// Completed units between a birth date and today, counted the slow way.
    fn age(birth: i32, today: i32, unit: AgeUnit) -> i64 {
        let (by, bm, bd) = civil_from_days(i64::from(birth));
        let (ty, tm, td) = civil_from_days(i64::from(today));
        match unit {
            AgeUnit::Years => ty - by - i64::from((tm, td) < (bm, bd)),
            AgeUnit::Months => (ty - by) * 12 + i64::from(tm) - i64::from(bm) - i64::from(td < bd),
            AgeUnit::Weeks => i64::from(today - birth).div_euclid(7),
            AgeUnit::Days => i64::from(today - birth),
        }
    }

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(d("2000-03-01"), 11_017);
        assert_eq!(d("1969-12-31"), -1);
        for day in -800_000..800_000 {
            let (y, m, dd) = civil_from_days(i64::from(day));
            assert_eq!(days_from_civil(y, m, dd), i64::from(day));
        }
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-02-29"), Some(d("2024-02-28") + 1));
        assert_eq!(format_date(d("2024-02-29")), "2024-02-29");
    }

    #[test]
    fn month_steps_clamp_to_month_end() {
        assert_eq!(format_date(sub_months(d("2024-02-29"), 12).expect("in range")), "2023-02-28");
        assert_eq!(format_date(sub_months(d("2024-03-31"), 1).expect("in range")), "2024-02-29");
        assert_eq!(format_date(sub_months(d("2024-01-15"), 1).expect("in range")), "2023-12-15");
        assert_eq!(format_date(sub_months(d("2024-01-15"), -1).expect("in range")), "2024-02-15");
        assert_eq!(sub_months(d("2024-01-15"), 12 * 2100), None);
    }

    #[test]
    fn age_bounds_match_completed_units() {
        // L(n) is the latest birth date with age >= n, for every unit and many todays.
        let todays = ["2022-02-28", "2024-02-29", "2023-03-01", "2024-03-31", "2024-12-31", "2025-01-01"];
        for today in todays.map(d) {
            for unit in [AgeUnit::Years, AgeUnit::Months, AgeUnit::Weeks, AgeUnit::Days] {
                for n in [0, 1, 2, 17, 18, 65] {
                    let l = latest_birth_date(today, n, unit).expect("in range");
                    assert!(age(l, today, unit) >= n, "{unit:?} {n} at {}", format_date(today));
                    assert!(age(l + 1, today, unit) < n, "{unit:?} {n} at {}", format_date(today));
                }
            }
        }
    }

    #[test]
    fn leap_day_birthdays() {
        // Born 2004-02-29: 17 on 2022-02-28, 18 on 2022-03-01.
        let born = d("2004-02-29");
        assert!(born > latest_birth_date(d("2022-02-28"), 18, AgeUnit::Years).expect("in range"));
        assert!(born <= latest_birth_date(d("2022-03-01"), 18, AgeUnit::Years).expect("in range"));
        // On a leap day, one year back is 02-28.
        assert_eq!(format_date(latest_birth_date(d("2024-02-29"), 1, AgeUnit::Years).expect("in range")), "2023-02-28");
    }

    fn cmp_of(f: &pb::Filter) -> (pb::CompareOp, i32) {
        match &f.kind {
            Some(pb::filter::Kind::Compare(c)) => match c.value.as_ref().and_then(|l| l.value.as_ref()) {
                Some(pb::literal::Value::Date(day)) => (pb::CompareOp::try_from(c.op).expect("op"), *day),
                other => panic!("not a date: {other:?}"),
            },
            other => panic!("not a comparison: {other:?}"),
        }
    }

    /// Evaluates an age filter for one birth date.
    fn eval(f: &pb::Filter, birth: i32) -> bool {
        match &f.kind {
            Some(pb::filter::Kind::And(c)) => c.operands.iter().all(|o| eval(o, birth)),
            Some(pb::filter::Kind::Or(c)) => c.operands.iter().any(|o| eval(o, birth)),
            Some(pb::filter::Kind::Compare(_)) => {
                let (op, day) = cmp_of(f);
                match op {
                    pb::CompareOp::Le => birth <= day,
                    pb::CompareOp::Lt => birth < day,
                    pb::CompareOp::Gt => birth > day,
                    pb::CompareOp::Ge => birth >= day,
                    pb::CompareOp::Eq => birth == day,
                    pb::CompareOp::Ne => birth != day,
                    pb::CompareOp::Unspecified => panic!("unspecified"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn age_filters_agree_with_counted_age() {
        use pb::CompareOp as Op;
        let today = d("2024-02-29");
        for unit in [AgeUnit::Years, AgeUnit::Months, AgeUnit::Days] {
            for v in [0.0, 1.0, 18.0, 18.5, 20.0] {
                for op in [Op::Ge, Op::Gt, Op::Le, Op::Lt, Op::Eq, Op::Ne] {
                    let Ok(f) = age_filter("birth_date", AgeTest::Compare(op, v), unit, today) else {
                        assert!(matches!(op, Op::Eq | Op::Ne) && v.fract() != 0.0);
                        continue;
                    };
                    for birth in (today - 8000)..=today {
                        let a = age(birth, today, unit) as f64;
                        let want = match op {
                            Op::Ge => a >= v,
                            Op::Gt => a > v,
                            Op::Le => a <= v,
                            Op::Lt => a < v,
                            Op::Eq => a == v,
                            Op::Ne => a != v,
                            Op::Unspecified => unreachable!(),
                        };
                        assert_eq!(eval(&f, birth), want, "{unit:?} {op:?} {v} born {}", format_date(birth));
                    }
                }
            }
            let f = age_filter("birth_date", AgeTest::Range(2.0, 3.0), unit, today).expect("range");
            for birth in (today - 3000)..=today {
                let a = age(birth, today, unit);
                assert_eq!(eval(&f, birth), (2..=3).contains(&a));
            }
        }
    }

    #[test]
    fn age_over_18_years_exact_boundary() {
        // age > 18 on 2024-06-15 means 19 or older: born on or before 2005-06-15.
        let f = age_filter("birth_date", AgeTest::Compare(pb::CompareOp::Gt, 18.0), AgeUnit::Years, d("2024-06-15"))
            .expect("filter");
        assert_eq!(cmp_of(&f), (pb::CompareOp::Le, d("2005-06-15")));
        let f = age_filter("birth_date", AgeTest::Compare(pb::CompareOp::Ge, 18.0), AgeUnit::Years, d("2024-06-15"))
            .expect("filter");
        assert_eq!(cmp_of(&f), (pb::CompareOp::Le, d("2006-06-15")));
        assert!(age_filter("birth_date", AgeTest::Compare(pb::CompareOp::Ge, -1.0), AgeUnit::Years, 0).is_err());
        assert!(age_filter("birth_date", AgeTest::Compare(pb::CompareOp::Ge, 9000.0), AgeUnit::Years, 0).is_err());
    }
}
