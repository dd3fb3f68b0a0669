//! The third job of the front-end: convert DataFusion's logical plan of an aggregate query
//! into the typed request the sites answer, and the description of the output columns.
//! Anything that is not of a supported shape is refused with the reason.

use super::join::{PatientJoin, patient_join};
use super::{FederatedPlan, SUPPORTED, Source, Unsupported, refuse};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_query::functions::{BIN, BIN_EDGES, BinKind, HISTOGRAM, HISTOGRAM_EDGES, scalar_as_f64};
use verbund_query::literal::{parse_date, scalar_to_literal};

pub(super) fn convert(plan: &LogicalPlan, catalogue: &pb::Catalogue) -> Result<FederatedPlan, Unsupported> {
    let LogicalPlan::Projection(projection) = plan else {
        return refuse(unsupported_reason(plan));
    };
    let aggregate = match projection.input.as_ref() {
        LogicalPlan::Aggregate(a) => a,
        LogicalPlan::Filter(f) if matches!(f.input.as_ref(), LogicalPlan::Aggregate(_)) => {
            return refuse(
                "HAVING is not supported: filter the merged result instead (a site cannot judge a merged total)",
            );
        }
        other => return refuse(unsupported_reason(other)),
    };
    let Rows { dataset, filter, patients } = source(&aggregate.input, catalogue)?;

    let mut group_by = Vec::with_capacity(aggregate.group_expr.len());
    for g in &aggregate.group_expr {
        group_by.push(grouping(g, patients.as_ref())?);
    }
    let mut aggregates = Vec::with_capacity(aggregate.aggr_expr.len());
    for a in &aggregate.aggr_expr {
        if let Some(p) = &patients {
            p.refuse_in(a, "an aggregate")?;
        }
        aggregates.push(aggregate_of(a)?);
    }
    if aggregates.is_empty() {
        return refuse("the query selects no aggregate; add one, e.g. count(DISTINCT patient_id)");
    }
    if let Some(p) = &patients
        && !group_by.iter().any(|g| matches!(g.kind, Some(pb::grouping::Kind::PatientAttribute(_))))
    {
        return refuse(format!(
            "the query joins '{}' but does not group by any of its columns; a join is only for grouping by a patient attribute, so remove it",
            p.dataset
        ));
    }

    let ngroups = aggregate.group_expr.len();
    let mut outputs = Vec::with_capacity(projection.expr.len());
    for e in &projection.expr {
        let inner = unalias(e);
        // The planner refers to aggregate outputs by column, or repeats the expression.
        let index = match inner {
            Expr::Column(c) => aggregate.schema.index_of_column(c).ok(),
            other => aggregate.group_expr.iter().chain(&aggregate.aggr_expr).position(|a| unalias(a) == other),
        };
        let Some(index) = index else {
            return refuse(format!(
                "'{inner}' computes on aggregates; select the aggregates themselves and compute from the merged result"
            ));
        };
        outputs.push(if index < ngroups { Source::Group(index) } else { Source::Aggregate(index - ngroups) });
    }
    let fields: Vec<Field> =
        projection.schema.fields().iter().map(|f| Field::new(f.name(), f.data_type().clone(), true)).collect();
    Ok(FederatedPlan {
        request: pb::AggregateQuery { dataset, filter, group_by, aggregates, cohort: None },
        outputs,
        schema: Arc::new(Schema::new(fields)),
        group_types: Vec::new(),
    })
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

/// Explains why a plan is not of a supported shape.
fn unsupported_reason(plan: &LogicalPlan) -> String {
    let mut reasons = Vec::new();
    let mut has_aggregate = false;
    let mut stack = vec![plan];
    while let Some(p) = stack.pop() {
        let reason = match p {
            LogicalPlan::Join(_) => Some(
                "joins are not supported, except a LEFT JOIN of a patient-level dataset on the patient key to group by a patient attribute",
            ),
            LogicalPlan::Union(_) => Some("UNION is not supported: send the queries separately"),
            LogicalPlan::Sort(_) => Some("ORDER BY is not supported: results come sorted by their group columns"),
            LogicalPlan::Limit(_) => Some("LIMIT is not supported: a federated answer is never cut short"),
            LogicalPlan::Distinct(_) => Some("SELECT DISTINCT is not supported: it lists values without counting them"),
            LogicalPlan::Window(_) => Some("window functions are not supported"),
            LogicalPlan::Subquery(_) => Some("subqueries are not supported"),
            LogicalPlan::SubqueryAlias(s) if !matches!(s.input.as_ref(), LogicalPlan::TableScan(_)) => {
                Some("subqueries are not supported")
            }
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
                Some("a query must read a dataset (FROM <dataset>)")
            }
            LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Statement(_) => {
                Some("only SELECT queries are accepted")
            }
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_) => {
                Some("EXPLAIN and DESCRIBE are not supported; `verbund sites` lists the datasets and columns")
            }
            LogicalPlan::Unnest(_) | LogicalPlan::RecursiveQuery(_) | LogicalPlan::Extension(_) => {
                Some("this kind of query is not supported")
            }
            LogicalPlan::Aggregate(_) => {
                has_aggregate = true;
                None
            }
            _ => None,
        };
        reasons.extend(reason);
        stack.extend(p.inputs());
    }
    if let Some(first) = reasons.first() {
        return format!("{first}. {SUPPORTED}");
    }
    if !has_aggregate {
        return format!("row-level queries are never answered: only aggregates leave a site. {SUPPORTED}");
    }
    format!("this query shape is not supported. {SUPPORTED}")
}

/// What the plan below the aggregate reads.
struct Rows {
    dataset: String,
    /// The WHERE condition.
    filter: Option<pb::Filter>,
    /// The patient-level dataset joined for grouping, if any.
    patients: Option<PatientJoin>,
}

fn source(plan: &LogicalPlan, catalogue: &pb::Catalogue) -> Result<Rows, Unsupported> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            Ok(Rows { dataset: scan.table_name.table().to_string(), filter: None, patients: None })
        }
        LogicalPlan::SubqueryAlias(s) if matches!(s.input.as_ref(), LogicalPlan::TableScan(_)) => {
            source(&s.input, catalogue)
        }
        LogicalPlan::Join(join) => {
            let (dataset, patients) = patient_join(join, catalogue)?;
            Ok(Rows { dataset, filter: None, patients: Some(patients) })
        }
        LogicalPlan::Filter(f) => {
            let rows = source(&f.input, catalogue)?;
            if rows.filter.is_some() {
                return refuse("nested filters are not supported");
            }
            if let Some(p) = &rows.patients {
                p.refuse_in(&f.predicate, "the WHERE condition")?;
            }
            Ok(Rows { filter: Some(filter(&f.predicate)?), ..rows })
        }
        other => refuse(unsupported_reason(other)),
    }
}

fn column_name(e: &Expr, role: &str) -> Result<String, Unsupported> {
    match e {
        Expr::Column(Column { name, .. }) => Ok(name.clone()),
        other => refuse(format!(
            "{role} takes a column, but '{other}' is an expression; compute on columns is not supported"
        )),
    }
}

/// A factor of `sum(a * b)`: a column, possibly cast by the planner to the product's type.
fn factor(e: &Expr) -> Result<String, Unsupported> {
    match e {
        Expr::Cast(c) => factor(&c.expr),
        Expr::TryCast(c) => factor(&c.expr),
        other => column_name(other, "sum(a * b)"),
    }
}

/// A constant in a condition or a bin specification.
fn literal(e: &Expr) -> Result<ScalarValue, Unsupported> {
    match e {
        Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => refuse("subqueries are not supported"),
        Expr::Literal(v, _) => Ok(v.clone()),
        Expr::Negative(inner) => {
            let v = literal(inner)?;
            v.arithmetic_negate().map_err(|_| Unsupported::Shape(format!("cannot negate '{inner}'")))
        }
        Expr::Cast(c) => {
            let v = literal(&c.expr)?;
            match (&v, c.field.data_type()) {
                (ScalarValue::Utf8(Some(s)), datafusion::arrow::datatypes::DataType::Date32) => {
                    parse_date(s).map(|d| ScalarValue::Date32(Some(d))).map_err(|e| Unsupported::Shape(e.to_string()))
                }
                _ => v.cast_to(c.field.data_type()).map_err(|_| Unsupported::Shape(format!("cannot convert '{e}'"))),
            }
        }
        other => refuse(format!("'{other}' is not a constant; conditions compare a column with constants")),
    }
}

fn wire_literal(e: &Expr) -> Result<pb::Literal, Unsupported> {
    let v = literal(e)?;
    scalar_to_literal(&v).map_err(|err| Unsupported::Shape(format!("'{e}': {err}")))
}

/// Converts a WHERE condition. A chain of ANDs (or ORs) is collected into one conjunction
/// with an explicit stack: a long chain costs neither stack depth nor quadratic time, and
/// conversion stops as soon as the conditions exceed the limit. Other nesting is bounded
/// by [`super::check_sql_text`].
fn filter(e: &Expr) -> Result<pb::Filter, Unsupported> {
    let mut budget = verbund_query::validate::MAX_FILTER_NODES;
    filter_within(e, &mut budget)
}

fn filter_within(e: &Expr, budget: &mut usize) -> Result<pb::Filter, Unsupported> {
    use pb::filter::Kind;
    if *budget == 0 {
        return refuse(format!(
            "the query has more than {} conditions; use IN lists or bins instead",
            verbund_query::validate::MAX_FILTER_NODES
        ));
    }
    *budget -= 1;
    let kind = match e {
        Expr::BinaryExpr(BinaryExpr { op: op @ (Operator::And | Operator::Or), .. }) => {
            let mut operands = Vec::new();
            let mut pending = vec![e];
            while let Some(next) = pending.pop() {
                match next {
                    Expr::BinaryExpr(BinaryExpr { left, op: inner, right }) if inner == op => {
                        // Right first, so that the left operand comes out first.
                        pending.push(right);
                        pending.push(left);
                    }
                    other => operands.push(filter_within(other, budget)?),
                }
            }
            let c = pb::Conjunction { operands };
            if *op == Operator::And { Kind::And(c) } else { Kind::Or(c) }
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let Some(compare) = compare_op(*op) else {
                return refuse(format!("the operator '{op}' is not supported in WHERE; use =, !=, <, <=, >, >="));
            };
            // column op constant, or constant op column (flipped).
            let (column, value, op) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), v) => (c.name.clone(), wire_literal(v)?, compare),
                (v, Expr::Column(c)) => (c.name.clone(), wire_literal(v)?, flip(compare)),
                (l, r) => {
                    for side in [l, r] {
                        if let Expr::ScalarFunction(f) = side {
                            return refuse(format!(
                                "functions are not supported in WHERE ({}()); compare columns with constants",
                                f.func.name()
                            ));
                        }
                    }
                    return refuse(format!("'{e}' does not compare a column with a constant"));
                }
            };
            Kind::Compare(pb::Comparison { column, op: op as i32, value: Some(value) })
        }
        Expr::Not(inner) => Kind::Not(Box::new(filter_within(inner, budget)?)),
        Expr::IsNull(inner) => Kind::IsNull(pb::IsNull { column: column_name(inner, "IS NULL")?, negated: false }),
        Expr::IsNotNull(inner) => {
            Kind::IsNull(pb::IsNull { column: column_name(inner, "IS NOT NULL")?, negated: true })
        }
        Expr::InList(list) => Kind::InList(pb::InList {
            column: column_name(&list.expr, "IN")?,
            values: list.list.iter().map(wire_literal).collect::<Result<_, _>>()?,
            negated: list.negated,
        }),
        Expr::Between(b) => Kind::Between(pb::Between {
            column: column_name(&b.expr, "BETWEEN")?,
            low: Some(wire_literal(&b.low)?),
            high: Some(wire_literal(&b.high)?),
            negated: b.negated,
        }),
        // WHERE smoker: a boolean column on its own.
        Expr::Column(c) => Kind::Compare(pb::Comparison {
            column: c.name.clone(),
            op: pb::CompareOp::Eq as i32,
            value: Some(pb::Literal { value: Some(pb::literal::Value::Bool(true)) }),
        }),
        Expr::Like(_) | Expr::SimilarTo(_) => {
            return refuse(
                "LIKE is not supported yet; compare whole codes, e.g. icd10_group = 'E11' or icd10 IN ('E11.9', 'E11.8')",
            );
        }
        Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_) | Expr::SetComparison(_) => {
            return refuse("subqueries are not supported");
        }
        Expr::ScalarFunction(f) => {
            return refuse(format!(
                "functions are not supported in WHERE ({}()); compare columns with constants",
                f.func.name()
            ));
        }
        other => return refuse(format!("the condition '{other}' is not supported; {SUPPORTED}")),
    };
    Ok(pb::Filter { kind: Some(kind) })
}

fn compare_op(op: Operator) -> Option<pb::CompareOp> {
    Some(match op {
        Operator::Eq => pb::CompareOp::Eq,
        Operator::NotEq => pb::CompareOp::Ne,
        Operator::Lt => pb::CompareOp::Lt,
        Operator::LtEq => pb::CompareOp::Le,
        Operator::Gt => pb::CompareOp::Gt,
        Operator::GtEq => pb::CompareOp::Ge,
        _ => return None,
    })
}

fn flip(op: pb::CompareOp) -> pb::CompareOp {
    match op {
        pb::CompareOp::Lt => pb::CompareOp::Gt,
        pb::CompareOp::Le => pb::CompareOp::Ge,
        pb::CompareOp::Gt => pb::CompareOp::Lt,
        pb::CompareOp::Ge => pb::CompareOp::Le,
        other => other,
    }
}

/// `bin(col, start, width, count)` / `bin_edges(col, e0, ...)` arguments as bins.
fn bins(name: &str, args: &[Expr], kind: BinKind) -> Result<pb::Bins, Unsupported> {
    let Some((column, params)) = args.split_first() else {
        return refuse(format!("{name}() needs a column and bin parameters"));
    };
    let column = column_name(column, &format!("{name}()"))?;
    let params = params
        .iter()
        .map(|p| literal(p).ok().as_ref().and_then(scalar_as_f64))
        .collect::<Option<Vec<f64>>>()
        .ok_or_else(|| Unsupported::Shape(format!("{name}() bin parameters must be numeric constants")))?;
    let spec = kind.spec(&params).map_err(|e| Unsupported::Shape(format!("{name}(): {e}")))?;
    Ok(spec.to_proto(&column))
}

fn grouping(e: &Expr, patients: Option<&PatientJoin>) -> Result<pb::Grouping, Unsupported> {
    use pb::grouping::Kind;
    let kind = match e {
        Expr::Column(c) => match patients {
            Some(p) if p.owns(c) => {
                Kind::PatientAttribute(pb::PatientAttribute { dataset: p.dataset.clone(), column: c.name.clone() })
            }
            _ => Kind::Column(c.name.clone()),
        },
        Expr::Alias(a) => return grouping(&a.expr, patients),
        _ if patients.is_some_and(|p| p.refuse_in(e, "a grouping").is_err()) => {
            return refuse(
                "a patient attribute is grouped by its values; bins of patient attributes are not supported",
            );
        }
        Expr::ScalarFunction(f) if f.func.name() == BIN => Kind::Bins(bins(BIN, &f.args, BinKind::Fixed)?),
        Expr::ScalarFunction(f) if f.func.name() == BIN_EDGES => Kind::Bins(bins(BIN_EDGES, &f.args, BinKind::Edges)?),
        Expr::GroupingSet(_) => return refuse("GROUPING SETS, ROLLUP and CUBE are not supported"),
        other => {
            return refuse(format!(
                "GROUP BY '{other}' is not supported; group by columns or by bin(col, start, width, count) / bin_edges(col, e0, e1, ...)"
            ));
        }
    };
    Ok(pb::Grouping { kind: Some(kind) })
}

fn aggregate_of(e: &Expr) -> Result<pb::Aggregate, Unsupported> {
    use pb::AggregateKind as K;
    let f = match e {
        Expr::Alias(a) => return aggregate_of(&a.expr),
        Expr::AggregateFunction(f) => f,
        other => return refuse(format!("'{other}' is not a supported aggregate")),
    };
    let name = f.func.name().to_ascii_lowercase();
    let p = &f.params;
    if p.filter.is_some() {
        return refuse(format!("{name}(...) FILTER (WHERE ...) is not supported; use WHERE"));
    }
    if !p.order_by.is_empty() {
        return refuse(format!("ORDER BY inside {name}() is not supported"));
    }
    let single_column = |what: &str| -> Result<String, Unsupported> {
        match p.args.as_slice() {
            [arg] => column_name(arg, what),
            _ => refuse(format!("{what} takes exactly one column")),
        }
    };
    let simple = |kind: K, what: &str| -> Result<pb::Aggregate, Unsupported> {
        if p.distinct {
            return refuse(format!(
                "{what} with DISTINCT is not supported: distinct values cannot be merged across sites"
            ));
        }
        Ok(pb::Aggregate { kind: kind as i32, column: single_column(what)?, bins: None, other_column: String::new() })
    };
    match name.as_str() {
        "count" => match p.args.as_slice() {
            [Expr::Literal(v, _)] if !v.is_null() && !p.distinct => Ok(pb::Aggregate {
                kind: K::CountRows as i32,
                column: String::new(),
                bins: None,
                other_column: String::new(),
            }),
            [arg] if p.distinct => {
                // Whether the column is the patient key is checked against the catalogue.
                Ok(pb::Aggregate {
                    kind: K::CountPatients as i32,
                    column: column_name(arg, "count(DISTINCT ...)")?,
                    ..Default::default()
                })
            }
            _ => simple(K::Count, "count()"),
        },
        "sum" => match p.args.as_slice() {
            [Expr::BinaryExpr(b)] if b.op == datafusion::logical_expr::Operator::Multiply && !p.distinct => {
                Ok(pb::Aggregate {
                    kind: K::SumOfProducts as i32,
                    column: factor(&b.left)?,
                    other_column: factor(&b.right)?,
                    bins: None,
                })
            }
            _ => simple(K::Sum, "sum()"),
        },
        "avg" | "mean" => simple(K::Mean, "avg()"),
        "var" | "var_samp" | "var_sample" => simple(K::VarianceSample, "var_samp()"),
        "var_pop" | "var_population" => simple(K::VariancePopulation, "var_pop()"),
        "stddev" | "stddev_samp" => simple(K::StddevSample, "stddev_samp()"),
        "stddev_pop" => simple(K::StddevPopulation, "stddev_pop()"),
        HISTOGRAM | HISTOGRAM_EDGES => {
            let kind = if name == HISTOGRAM { BinKind::Fixed } else { BinKind::Edges };
            let b = bins(&name, &p.args, kind)?;
            Ok(pb::Aggregate {
                kind: K::Histogram as i32,
                column: b.column.clone(),
                bins: Some(b),
                other_column: String::new(),
            })
        }
        other => refuse(format!("the aggregate {other}() is not supported. {SUPPORTED}")),
    }
}
