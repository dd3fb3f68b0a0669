//! Literals and column types: between the wire (`pb::Literal`, `pb::ColumnType`) and Arrow
//! (`ScalarValue`, `DataType`).

use crate::{Error, Result};
use datafusion::arrow::datatypes::DataType;
use datafusion::scalar::ScalarValue;
use verbund_proto::v1 as pb;
use verbund_proto::v1::literal::Value;

/// The catalogue type of an Arrow column, `None` for types verbund does not expose.
pub fn column_type_of(data_type: &DataType) -> Option<pb::ColumnType> {
    use DataType::*;
    Some(match data_type {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 => pb::ColumnType::Int64,
        Float32 | Float64 => pb::ColumnType::Float64,
        Utf8 | LargeUtf8 | Utf8View => pb::ColumnType::String,
        Boolean => pb::ColumnType::Bool,
        Date32 => pb::ColumnType::Date,
        _ => return None,
    })
}

/// The Arrow type that represents a catalogue type in results and in the SQL front-end.
pub fn data_type_of(column_type: pb::ColumnType) -> Option<DataType> {
    Some(match column_type {
        pb::ColumnType::Int64 => DataType::Int64,
        pb::ColumnType::Float64 => DataType::Float64,
        pb::ColumnType::String => DataType::Utf8,
        pb::ColumnType::Bool => DataType::Boolean,
        pb::ColumnType::Date => DataType::Date32,
        pb::ColumnType::Unspecified => return None,
    })
}

pub fn type_name(column_type: pb::ColumnType) -> &'static str {
    match column_type {
        pb::ColumnType::Int64 => "integer",
        pb::ColumnType::Float64 => "float",
        pb::ColumnType::String => "string",
        pb::ColumnType::Bool => "boolean",
        pb::ColumnType::Date => "date",
        pb::ColumnType::Unspecified => "unspecified",
    }
}

pub fn is_numeric(column_type: pb::ColumnType) -> bool {
    matches!(column_type, pb::ColumnType::Int64 | pb::ColumnType::Float64)
}

/// Describes a literal for error messages (its type, never a data value from a node).
pub fn literal_kind(lit: &pb::Literal) -> &'static str {
    match &lit.value {
        None => "NULL",
        Some(Value::Int64(_)) => "integer",
        Some(Value::Float64(_)) => "float",
        Some(Value::String(_)) => "string",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Date(_)) => "date",
    }
}

/// Converts a request literal into a scalar comparable with a column of `column_type`,
/// refusing combinations that make no sense (a string compared with a number, ...).
/// A string literal compared with a date column must be an ISO date (YYYY-MM-DD).
pub fn literal_for_column(lit: &pb::Literal, column_type: pb::ColumnType) -> Result<ScalarValue> {
    use pb::ColumnType as T;
    let mismatch = || {
        Error::InvalidLiteral(format!(
            "a {} literal cannot be compared with a {} column",
            literal_kind(lit),
            type_name(column_type)
        ))
    };
    match (&lit.value, column_type) {
        (None, _) => {
            Err(Error::InvalidLiteral("NULL cannot be compared with '=' or '<'; use IS NULL / IS NOT NULL".into()))
        }
        (Some(Value::Int64(v)), T::Int64) => Ok(ScalarValue::Int64(Some(*v))),
        (Some(Value::Int64(v)), T::Float64) => Ok(ScalarValue::Float64(Some(*v as f64))),
        (Some(Value::Float64(v)), T::Int64 | T::Float64) => {
            if v.is_finite() {
                Ok(ScalarValue::Float64(Some(*v)))
            } else {
                Err(Error::InvalidLiteral("numeric literals must be finite".into()))
            }
        }
        (Some(Value::String(s)), T::String) => Ok(ScalarValue::Utf8(Some(s.clone()))),
        (Some(Value::Bool(b)), T::Bool) => Ok(ScalarValue::Boolean(Some(*b))),
        (Some(Value::Date(d)), T::Date) => Ok(ScalarValue::Date32(Some(*d))),
        (Some(Value::String(s)), T::Date) => parse_date(s).map(|d| ScalarValue::Date32(Some(d))),
        _ => Err(mismatch()),
    }
}

/// Parses an ISO date `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_date(s: &str) -> Result<i32> {
    let bad = || Error::InvalidLiteral(format!("'{s}' is not a date of the form YYYY-MM-DD"));
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return Err(bad()) };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (y, m, d): (i64, u32, u32) =
        (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || d < 1 || d > verbund_calendar::days_in_month(y, m) {
        return Err(bad());
    }
    Ok(verbund_calendar::days_from_civil(y, m, d) as i32)
}

/// A group key or other value leaving a node: Arrow scalar to wire literal.
pub fn scalar_to_literal(value: &ScalarValue) -> Result<pb::Literal> {
    use ScalarValue as S;
    if value.is_null() {
        return Ok(pb::Literal { value: None });
    }
    let v = match value {
        S::Int8(Some(v)) => Value::Int64(i64::from(*v)),
        S::Int16(Some(v)) => Value::Int64(i64::from(*v)),
        S::Int32(Some(v)) => Value::Int64(i64::from(*v)),
        S::Int64(Some(v)) => Value::Int64(*v),
        S::UInt8(Some(v)) => Value::Int64(i64::from(*v)),
        S::UInt16(Some(v)) => Value::Int64(i64::from(*v)),
        S::UInt32(Some(v)) => Value::Int64(i64::from(*v)),
        S::Float32(Some(v)) => Value::Float64(f64::from(*v)),
        S::Float64(Some(v)) => Value::Float64(*v),
        S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) => Value::String(s.clone()),
        S::Boolean(Some(b)) => Value::Bool(*b),
        S::Date32(Some(d)) => Value::Date(*d),
        other => {
            return Err(Error::InvalidLiteral(format!("values of type {} cannot be sent", other.data_type())));
        }
    };
    Ok(pb::Literal { value: Some(v) })
}

/// A wire literal as a scalar of the given result type (used when building result tables).
pub fn literal_to_scalar(lit: &pb::Literal, data_type: &DataType) -> Result<ScalarValue> {
    let plain = match &lit.value {
        None => return ScalarValue::try_from(data_type).map_err(|e| Error::InvalidLiteral(e.to_string())),
        Some(Value::Int64(v)) => ScalarValue::Int64(Some(*v)),
        Some(Value::Float64(v)) => ScalarValue::Float64(Some(*v)),
        Some(Value::String(s)) => ScalarValue::Utf8(Some(s.clone())),
        Some(Value::Bool(b)) => ScalarValue::Boolean(Some(*b)),
        Some(Value::Date(d)) => ScalarValue::Date32(Some(*d)),
    };
    if &plain.data_type() == data_type {
        return Ok(plain);
    }
    plain.cast_to(data_type).map_err(|e| Error::InvalidLiteral(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: Value) -> pb::Literal {
        pb::Literal { value: Some(v) }
    }

    #[test]
    fn dates_parse_to_days_since_epoch() {
        assert_eq!(parse_date("1970-01-01").unwrap(), 0);
        assert_eq!(parse_date("2000-03-01").unwrap(), 11017);
        assert_eq!(parse_date("1969-12-31").unwrap(), -1);
        assert_eq!(parse_date("2024-02-29").unwrap(), 19782);
        assert!(parse_date("2023-02-29").is_err());
        assert!(parse_date("2023-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
        assert!(parse_date("2023-1-01").is_err());
    }

    #[test]
    fn literals_are_type_checked_against_columns() {
        use pb::ColumnType as T;
        assert_eq!(literal_for_column(&lit(Value::Int64(3)), T::Float64).unwrap(), ScalarValue::Float64(Some(3.0)));
        assert!(literal_for_column(&lit(Value::String("x".into())), T::Int64).is_err());
        assert!(literal_for_column(&lit(Value::Int64(1)), T::String).is_err());
        assert!(literal_for_column(&lit(Value::Bool(true)), T::Int64).is_err());
        assert!(literal_for_column(&lit(Value::Float64(f64::NAN)), T::Float64).is_err());
        assert!(literal_for_column(&pb::Literal { value: None }, T::Int64).is_err());
        assert_eq!(
            literal_for_column(&lit(Value::String("1970-01-02".into())), T::Date).unwrap(),
            ScalarValue::Date32(Some(1))
        );
    }

    #[test]
    fn scalars_round_trip_through_literals() {
        for s in [
            ScalarValue::Int64(Some(-5)),
            ScalarValue::Float64(Some(2.5)),
            ScalarValue::Utf8(Some("female".into())),
            ScalarValue::Boolean(Some(true)),
            ScalarValue::Date32(Some(19000)),
            ScalarValue::Int64(None),
        ] {
            let l = scalar_to_literal(&s).unwrap();
            assert_eq!(literal_to_scalar(&l, &s.data_type()).unwrap(), s);
        }
        let l = scalar_to_literal(&ScalarValue::Int32(Some(7))).unwrap();
        assert_eq!(l.value, Some(Value::Int64(7)));
    }
}
