//! The second job of the front-end: check what the parsed statement refers to (datasets,
//! functions, the types of aggregated columns) against the catalogue and verbund's own
//! function list, before DataFusion plans it. Refusals are said here, in our words, instead
//! of being read out of the planner's error messages.

use super::Unsupported;
use datafusion::common::TableReference;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart, visit_expressions,
};
use std::ops::ControlFlow;
use verbund_proto::v1 as pb;
use verbund_query::literal::{is_numeric, type_name};
use verbund_query::validate::InvalidRequest;

/// Every function a federated query may call. Anything else is refused before planning.
const FUNCTIONS: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "var",
    "var_samp",
    "var_sample",
    "var_pop",
    "var_population",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "histogram",
    "histogram_edges",
    "bin",
    "bin_edges",
];

/// The functions whose first argument must be a numeric column, with the name the refusal
/// uses (as the node's own check words it).
const NUMERIC_FIRST_ARGUMENT: &[(&str, &str)] = &[
    ("sum", "sum()"),
    ("avg", "avg()"),
    ("mean", "avg()"),
    ("var", "a variance or standard deviation"),
    ("var_samp", "a variance or standard deviation"),
    ("var_sample", "a variance or standard deviation"),
    ("var_pop", "a variance or standard deviation"),
    ("var_population", "a variance or standard deviation"),
    ("stddev", "a variance or standard deviation"),
    ("stddev_samp", "a variance or standard deviation"),
    ("stddev_pop", "a variance or standard deviation"),
    ("histogram", "histogram()"),
    ("histogram_edges", "histogram()"),
    ("bin", "binning"),
    ("bin_edges", "binning"),
];

/// Checks the datasets `tables` (as the planner resolved them) and every function call of
/// `statement`.
pub(super) fn check_references(
    statement: &DfStatement,
    tables: &[TableReference],
    catalogue: &pb::Catalogue,
) -> Result<(), Unsupported> {
    let mut datasets = Vec::with_capacity(tables.len());
    for table in tables {
        match catalogue.datasets.iter().find(|d| d.name == table.table()) {
            Some(d) => datasets.push(d),
            None => {
                return Err(Unsupported::UnknownDataset {
                    dataset: table.table().to_string(),
                    offered: catalogue.datasets.iter().map(|d| d.name.clone()).collect(),
                });
            }
        }
    }
    // Other statements (EXPLAIN, DDL) are refused by their shape after planning.
    let DfStatement::Statement(statement) = statement else { return Ok(()) };
    let checked = visit_expressions(statement.as_ref(), |e| match e {
        Expr::Function(f) => match check_function(f, &datasets) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        },
        _ => ControlFlow::Continue(()),
    });
    match checked {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn check_function(f: &Function, datasets: &[&pb::DatasetInfo]) -> Result<(), Unsupported> {
    let name = match f.name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => ident.value.to_ascii_lowercase(),
        _ => f.name.to_string(),
    };
    if !FUNCTIONS.contains(&name.as_str()) {
        return Err(Unsupported::UnknownFunction { name });
    }
    let Some((_, role)) = NUMERIC_FIRST_ARGUMENT.iter().find(|(n, _)| *n == name) else { return Ok(()) };
    let FunctionArguments::List(list) = &f.args else { return Ok(()) };
    let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))) = list.args.first() else { return Ok(()) };
    let ident = match arg {
        Expr::Identifier(ident) => ident,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(ident) => ident,
            None => return Ok(()),
        },
        // Expressions (a * b, casts) are for the planner and the shape check.
        _ => return Ok(()),
    };
    // Unquoted names are case-insensitive, as the planner treats them.
    let column = if ident.quote_style.is_none() { ident.value.to_ascii_lowercase() } else { ident.value.clone() };
    // A column unknown here is named by the planner; one of another type is ours to explain.
    let found = datasets.iter().flat_map(|d| d.columns.iter()).find(|c| c.name == column);
    if let Some(c) = found
        && !is_numeric(c.r#type())
    {
        return Err(InvalidRequest::NotNumeric { column, role, column_type: type_name(c.r#type()) }.into());
    }
    Ok(())
}
