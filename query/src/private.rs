//! Functions the node uses to bound what one patient contributes under differential privacy:
//!
//! * `dp_units(x, low, high, centre, unit)`: x clipped to [low, high], minus `centre`, in
//!   whole `unit`s (Int64; NULL and NaN stay NULL). Summing these integers is exact and does
//!   not depend on the order rows arrive in, so the true value behind the noise is the same
//!   every time the question is asked.
//! * `row_order(a, b, ...)`: a 64-bit hash of a row's values with a fixed seed, to pick
//!   which of a patient's rows count when there are more than the policy allows, in an order
//!   that depends only on the rows' contents (not on files or threads).

use datafusion::arrow::array::{Array, ArrayRef, Int64Builder, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use std::sync::Arc;

pub const DP_UNITS: &str = "dp_units";
pub const ROW_ORDER: &str = "row_order";

pub fn dp_units_udf() -> ScalarUDF {
    ScalarUDF::from(DpUnits { signature: Signature::variadic_any(Volatility::Immutable) })
}

pub fn row_order_udf() -> ScalarUDF {
    ScalarUDF::from(RowOrder { signature: Signature::variadic_any(Volatility::Immutable) })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DpUnits {
    signature: Signature,
}

impl ScalarUDFImpl for DpUnits {
    fn name(&self) -> &str {
        DP_UNITS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if t.is_numeric() || t.is_null() => Ok(DataType::Int64),
            _ => plan_err!("dp_units() takes a numeric column"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [x, low, high, centre, unit] = args.args.as_slice() else {
            return exec_err!("dp_units() takes a column, low, high, centre and unit");
        };
        let constant = |v: &ColumnarValue| match v {
            ColumnarValue::Scalar(s) => crate::functions::scalar_as_f64(s),
            ColumnarValue::Array(_) => None,
        };
        let (Some(low), Some(high), Some(centre), Some(unit)) =
            (constant(low), constant(high), constant(centre), constant(unit))
        else {
            return exec_err!("dp_units() bounds, centre and unit must be numeric constants");
        };
        if !(low <= high && unit > 0.0) {
            return exec_err!("dp_units() needs low <= high and a positive unit");
        }
        let values = cast(&x.to_array(args.number_rows)?, &DataType::Float64)?;
        let values = values.as_any().downcast_ref::<datafusion::arrow::array::PrimitiveArray<Float64Type>>();
        let Some(values) = values else { return exec_err!("dp_units() could not read its column as numbers") };
        let mut out = Int64Builder::with_capacity(values.len());
        for v in values.iter() {
            out.append_option(v.filter(|v| !v.is_nan()).map(|v| ((v.clamp(low, high) - centre) / unit).round() as i64));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RowOrder {
    signature: Signature,
}

impl ScalarUDFImpl for RowOrder {
    fn name(&self) -> &str {
        ROW_ORDER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| a.to_array(args.number_rows)).collect::<Result<_>>()?;
        let mut hashes = vec![0u64; args.number_rows];
        create_hashes(&arrays, &RandomState::with_seed(0x7665_7262), &mut hashes)?;
        Ok(ColumnarValue::Array(Arc::new(UInt64Array::from(hashes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Float64Array};
    use datafusion::arrow::datatypes::{Field, Int64Type};
    use datafusion::common::ScalarValue;
    use datafusion::common::config::ConfigOptions;

    fn call(udf: &ScalarUDF, args: Vec<ColumnarValue>, rows: usize) -> ArrayRef {
        let arg_fields = args.iter().map(|a| Arc::new(Field::new("a", a.data_type(), true))).collect();
        let return_type = udf.return_type(&args.iter().map(|a| a.data_type()).collect::<Vec<_>>()).unwrap();
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: rows,
                return_field: Arc::new(Field::new("r", return_type, true)),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        out.to_array(rows).unwrap()
    }

    #[test]
    fn values_are_clipped_centred_and_counted_in_units() {
        let x = ColumnarValue::Array(Arc::new(Float64Array::from(vec![
            Some(25.04),
            Some(5.0),
            Some(200.0),
            None,
            Some(f64::NAN),
        ])));
        let f = |v: f64| ColumnarValue::Scalar(ScalarValue::Float64(Some(v)));
        let out = call(&dp_units_udf(), vec![x, f(10.0), f(80.0), f(45.0), f(0.1)], 5);
        let out = out.as_primitive::<Int64Type>();
        assert_eq!(out.value(0), -200, "25.04 - 45 = -19.96 → -200 tenths");
        assert_eq!(out.value(1), -350, "5 is clipped to 10");
        assert_eq!(out.value(2), 350, "200 is clipped to 80");
        assert!(out.is_null(3) && out.is_null(4), "NULL and NaN contribute nothing");
    }

    #[test]
    fn row_order_depends_on_values_only() {
        let a = ColumnarValue::Array(Arc::new(Float64Array::from(vec![1.0, 2.0, 1.0])));
        let out = call(&row_order_udf(), vec![a], 3);
        let out = out.as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!(out.value(0), out.value(2));
        assert_ne!(out.value(0), out.value(1));
    }
}
