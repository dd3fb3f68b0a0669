//! Bar charts of grouped counts and histograms, drawn on the server as SVG: no script, no
//! chart library, and the numbers drawn are exactly the table's.

use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Groups drawn at most; a longer answer is a table only.
const MAX_BARS: usize = 60;
const LABEL_WIDTH: u32 = 220;
const PLOT_WIDTH: u32 = 560;
const ROW_HEIGHT: u32 = 26;

pub struct Bar {
    pub label: String,
    /// The value as the table shows it, or "withheld".
    pub value: String,
    pub y: u32,
    pub width: u32,
    pub withheld: bool,
}

pub struct Chart {
    pub title: String,
    pub bars: Vec<Bar>,
    pub label_width: u32,
    pub width: u32,
    pub height: u32,
}

impl Chart {
    /// A chart of the last numeric column against the others, where the answer is grouped
    /// (two to [`MAX_BARS`] rows, at least one group column) and no value is negative.
    pub fn of(batch: &RecordBatch) -> Option<Chart> {
        let rows = batch.num_rows();
        if !(2..=MAX_BARS).contains(&rows) {
            return None;
        }
        let schema = batch.schema();
        let value_column = (0..batch.num_columns()).rev().find(|&i| schema.field(i).data_type().is_numeric())?;
        // Histogram columns (lists of bin counts) are charts of their own.
        let label_columns: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| i != value_column && !matches!(schema.field(i).data_type(), DataType::List(_)))
            .collect();
        if label_columns.is_empty() {
            return None;
        }
        let values = cast(batch.column(value_column), &DataType::Float64).ok()?;
        let values = values.as_any().downcast_ref::<Float64Array>()?;
        let options = FormatOptions::default().with_null("–");
        let formatters: Vec<ArrayFormatter> = label_columns
            .iter()
            .map(|&i| ArrayFormatter::try_new(batch.column(i).as_ref(), &options))
            .collect::<Result<_, _>>()
            .ok()?;
        let shown = ArrayFormatter::try_new(batch.column(value_column).as_ref(), &options).ok()?;
        let max = (0..rows).filter(|&r| values.is_valid(r)).map(|r| values.value(r)).fold(0.0_f64, f64::max);
        if (0..rows).any(|r| values.is_valid(r) && (values.value(r) < 0.0 || !values.value(r).is_finite())) {
            return None;
        }
        let bars = (0..rows)
            .map(|r| {
                let label: Vec<String> = formatters.iter().map(|f| f.value(r).to_string()).collect();
                let withheld = values.is_null(r);
                let width = if withheld || max <= 0.0 {
                    0
                } else {
                    ((values.value(r) / max) * f64::from(PLOT_WIDTH)).round().max(1.0) as u32
                };
                Bar {
                    label: label.join(" · "),
                    value: if withheld { "withheld".into() } else { shown.value(r).to_string() },
                    y: r as u32 * ROW_HEIGHT,
                    width,
                    withheld,
                }
            })
            .collect();
        let groups: Vec<&str> = label_columns.iter().map(|&i| schema.field(i).name().as_str()).collect();
        Some(Chart {
            title: format!("{} by {}", schema.field(value_column).name(), groups.join(" and ")),
            bars,
            label_width: LABEL_WIDTH,
            // Room for the value's text right of the longest bar.
            width: LABEL_WIDTH + PLOT_WIDTH + 120,
            height: rows as u32 * ROW_HEIGHT,
        })
    }
}

/// Histograms drawn at most (one per group row and histogram column).
const MAX_HISTOGRAMS: usize = 12;

/// One chart per histogram cell (a list of bin counts) of the first groups. The bins' bounds
/// come from `histogram(col, start, width, count)` in `sql`, where it can be read; otherwise
/// the bins are numbered.
pub fn histograms(batch: &RecordBatch, sql: &str) -> Vec<Chart> {
    let schema = batch.schema();
    let list_columns: Vec<usize> =
        (0..batch.num_columns()).filter(|&i| matches!(schema.field(i).data_type(), DataType::List(_))).collect();
    let specs = histogram_specs(sql);
    let options = FormatOptions::default().with_null("–");
    let label_columns: Vec<usize> = (0..batch.num_columns()).filter(|i| !list_columns.contains(i)).collect();
    let Ok(formatters) = label_columns
        .iter()
        .map(|&i| ArrayFormatter::try_new(batch.column(i).as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
    else {
        return Vec::new();
    };
    let mut charts = Vec::new();
    for (n, &column) in list_columns.iter().enumerate() {
        let lists = batch.column(column).as_list::<i32>();
        for row in 0..batch.num_rows() {
            if charts.len() == MAX_HISTOGRAMS || lists.is_null(row) {
                break;
            }
            let Ok(counts) = cast(&lists.value(row), &DataType::Float64) else { continue };
            let counts = counts.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            let spec = specs.get(n).copied().filter(|s| s.2 == counts.len());
            let max = counts.iter().flatten().fold(0.0_f64, f64::max);
            let bars = (0..counts.len())
                .map(|bin| {
                    let label = match spec {
                        Some((start, width, _)) => {
                            format!("[{}, {})", start + width * bin as f64, start + width * (bin + 1) as f64)
                        }
                        None => format!("bin {}", bin + 1),
                    };
                    let withheld = counts.is_null(bin);
                    let value = if withheld { 0.0 } else { counts.value(bin) };
                    Bar {
                        label,
                        value: if withheld { "withheld".into() } else { format!("{value}") },
                        y: bin as u32 * ROW_HEIGHT,
                        width: if withheld || max <= 0.0 {
                            0
                        } else {
                            ((value / max) * f64::from(PLOT_WIDTH)).round() as u32
                        },
                        withheld,
                    }
                })
                .collect::<Vec<_>>();
            let group: Vec<String> = formatters.iter().map(|f| f.value(row).to_string()).collect();
            let title = if group.is_empty() {
                format!("{} (histogram)", schema.field(column).name())
            } else {
                format!("{} for {} (histogram)", schema.field(column).name(), group.join(" · "))
            };
            charts.push(Chart {
                title,
                height: bars.len() as u32 * ROW_HEIGHT,
                bars,
                label_width: LABEL_WIDTH,
                width: LABEL_WIDTH + PLOT_WIDTH + 120,
            });
        }
    }
    charts
}

/// `(start, width, count)` of each `histogram(col, start, width, count)` in `sql`, in order.
fn histogram_specs(sql: &str) -> Vec<(f64, f64, usize)> {
    let lower = sql.to_ascii_lowercase();
    let mut specs = Vec::new();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("histogram(") {
        rest = &rest[at + "histogram(".len()..];
        let Some(end) = rest.find(')') else { break };
        let args: Vec<&str> = rest[..end].split(',').map(str::trim).collect();
        if let [_, start, width, count] = args[..]
            && let (Ok(start), Ok(width), Ok(count)) = (start.parse(), width.parse(), count.parse())
        {
            specs.push((start, width, count));
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn batch(labels: Vec<Option<&str>>, counts: Vec<Option<i64>>) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("sex", Arc::new(StringArray::from(labels)) as Arc<dyn Array>),
            ("n", Arc::new(Int64Array::from(counts)) as Arc<dyn Array>),
        ])
        .unwrap()
    }

    #[test]
    fn grouped_counts_are_drawn_to_scale() {
        let chart = Chart::of(&batch(vec![Some("female"), Some("male")], vec![Some(200), Some(100)])).unwrap();
        assert_eq!(chart.title, "n by sex");
        assert_eq!(chart.bars[0].width, PLOT_WIDTH);
        assert_eq!(chart.bars[1].width, PLOT_WIDTH / 2);
        assert_eq!(chart.bars[1].value, "100");
    }

    #[test]
    fn a_withheld_cell_has_no_bar() {
        let chart = Chart::of(&batch(vec![Some("a"), Some("b")], vec![Some(50), None])).unwrap();
        assert!(chart.bars[1].withheld);
        assert_eq!(chart.bars[1].width, 0);
        assert_eq!(chart.bars[1].value, "withheld");
    }

    #[test]
    fn histogram_bins_are_labelled_from_the_sql() {
        use datafusion::arrow::array::ListArray;
        use datafusion::arrow::datatypes::Int64Type;
        let list = ListArray::from_iter_primitive::<Int64Type, _, _>([Some(vec![Some(10), None, Some(5)])]);
        let batch = RecordBatch::try_from_iter(vec![
            ("sex", Arc::new(StringArray::from(vec!["female"])) as Arc<dyn Array>),
            ("h", Arc::new(list) as Arc<dyn Array>),
        ])
        .unwrap();
        let charts = histograms(&batch, "SELECT sex, histogram(age, 0, 5, 3) AS h FROM patients GROUP BY sex");
        assert_eq!(charts.len(), 1);
        let labels: Vec<&str> = charts[0].bars.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["[0, 5)", "[5, 10)", "[10, 15)"]);
        assert!(charts[0].bars[1].withheld);
        assert_eq!(charts[0].bars[2].width, PLOT_WIDTH / 2);
        assert_eq!(charts[0].title, "h for female (histogram)");
        // Bounds that do not match the bins are not guessed.
        let numbered = histograms(&batch, "SELECT histogram(age, 0, 5, 20) AS h FROM patients");
        assert_eq!(numbered[0].bars[0].label, "bin 1");
    }

    #[test]
    fn single_numbers_and_ungrouped_answers_are_not_charted() {
        assert!(Chart::of(&batch(vec![Some("a")], vec![Some(5)])).is_none());
        let only_numbers =
            RecordBatch::try_from_iter(vec![("n", Arc::new(Int64Array::from(vec![1, 2])) as Arc<dyn Array>)]).unwrap();
        assert!(Chart::of(&only_numbers).is_none());
    }
}
