//! Compares a federated answer with the pooled reference: same columns, same groups, counts
//! and integer sums exactly, floating-point values to a relative tolerance.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Date(i32),
    List(Vec<Option<i64>>),
}

impl Cell {
    fn sort_key(&self) -> String {
        match self {
            Cell::Null => "~null".into(),
            Cell::Int(v) => format!("i{:+020}", v),
            Cell::Float(v) => format!("f{:+030.10}", v),
            Cell::Str(s) => format!("s{s}"),
            Cell::Bool(b) => format!("b{b}"),
            Cell::Date(d) => format!("d{:+010}", d),
            Cell::List(l) => format!("l{l:?}"),
        }
    }
}

pub fn cell(value: &ScalarValue) -> Cell {
    use ScalarValue as S;
    if value.is_null() {
        return Cell::Null;
    }
    match value {
        S::Int8(Some(v)) => Cell::Int(*v as i64),
        S::Int16(Some(v)) => Cell::Int(*v as i64),
        S::Int32(Some(v)) => Cell::Int(*v as i64),
        S::Int64(Some(v)) => Cell::Int(*v),
        S::UInt64(Some(v)) => Cell::Int(*v as i64),
        S::Float64(Some(v)) => Cell::Float(*v),
        S::Float32(Some(v)) => Cell::Float(*v as f64),
        S::Utf8(Some(s)) | S::Utf8View(Some(s)) | S::LargeUtf8(Some(s)) => Cell::Str(s.clone()),
        S::Boolean(Some(b)) => Cell::Bool(*b),
        S::Date32(Some(d)) => Cell::Date(*d),
        S::List(list) => {
            let values = list.value(0);
            Cell::List(values.as_primitive::<Int64Type>().iter().collect())
        }
        other => panic!("unexpected value {other:?}"),
    }
}

/// Rows of a batch, sorted by their first `keys` cells.
pub fn rows(batch: &RecordBatch, keys: usize) -> Vec<Vec<Cell>> {
    let mut rows: Vec<Vec<Cell>> = (0..batch.num_rows())
        .map(|r| {
            (0..batch.num_columns()).map(|c| cell(&ScalarValue::try_from_array(batch.column(c), r).unwrap())).collect()
        })
        .collect();
    rows.sort_by_key(|row| row[..keys].iter().map(Cell::sort_key).collect::<Vec<_>>());
    rows
}

pub fn close(a: f64, b: f64, rel: f64) -> bool {
    if a == b {
        return true;
    }
    let scale = a.abs().max(b.abs());
    (a - b).abs() <= rel * scale || (a - b).abs() < 1e-12
}

/// What a comparison expects of an answer, stated by the test (never guessed from the SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The number of leading group columns; rows are matched on them.
    pub keys: usize,
    /// The answer has no rows (a group-by nothing matches). Otherwise an empty answer fails:
    /// a test query that returns nothing compares nothing.
    pub empty: bool,
}

impl Expect {
    /// Rows grouped by the first `keys` columns (0: one row of totals).
    pub const fn keys(keys: usize) -> Self {
        Self { keys, empty: false }
    }

    /// No rows at all.
    pub const fn empty(self) -> Self {
        Self { empty: true, ..self }
    }
}

/// Asserts the federated result equals the pooled one, and has rows unless `expect` says
/// it has none.
pub fn assert_same(sql: &str, federated: &RecordBatch, pooled: &RecordBatch, expect: Expect) {
    let Expect { keys, empty } = expect;
    assert_eq!(federated.num_columns(), pooled.num_columns(), "{sql}: column count");
    for (f, p) in federated.schema().fields().iter().zip(pooled.schema().fields()) {
        assert_eq!(f.name(), p.name(), "{sql}: column names");
    }
    let (fr, pr) = (rows(federated, keys), rows(pooled, keys));
    assert_eq!(fr.len(), pr.len(), "{sql}: row count\nfederated {fr:?}\npooled {pr:?}");
    if empty {
        assert!(fr.is_empty(), "{sql}: expected no rows, got {fr:?}");
    } else {
        assert!(!fr.is_empty(), "{sql}: a test query should return rows");
    }
    for (f, p) in fr.iter().zip(&pr) {
        for (i, (a, b)) in f.iter().zip(p).enumerate() {
            let same = match (a, b) {
                (Cell::Float(x), Cell::Float(y)) => close(*x, *y, 1e-9),
                (Cell::Float(x), Cell::Int(y)) | (Cell::Int(y), Cell::Float(x)) => close(*x, *y as f64, 1e-9),
                _ => a == b,
            };
            assert!(same, "{sql}: column {i} differs: federated {a:?}, pooled {b:?}\nrow {f:?}\nvs  {p:?}");
        }
    }
}

/// The values of an Int64 column.
pub fn ints(batch: &RecordBatch, column: usize) -> Vec<Option<i64>> {
    batch.column(column).as_primitive::<Int64Type>().iter().collect()
}

pub fn has_nulls(batch: &RecordBatch) -> bool {
    batch.columns().iter().any(|c| c.null_count() > 0)
}
