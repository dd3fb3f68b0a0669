//! The SQL front-end: a researcher's SQL is parsed and planned by DataFusion against the
//! union of the sites' catalogues (empty tables with the right schemas), and the logical plan
//! is converted into the typed aggregate request plus a description of the output columns.
//! Anything that is not an aggregate query of a supported shape is refused with the reason
//! and what is supported instead.

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use datafusion::prelude::SessionContext;
use std::collections::BTreeMap;
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_query::functions::{BIN, BIN_EDGES, BinKind, HISTOGRAM, HISTOGRAM_EDGES, scalar_as_f64};
use verbund_query::literal::{data_type_of, parse_date, scalar_to_literal};
use verbund_query::validate::check;

/// What the researcher gets told when a query cannot be federated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(msg.into()))
}

const SUPPORTED: &str = "verbund answers aggregate queries over one dataset: SELECT <group columns>, \
<aggregates> FROM <dataset> [WHERE <conditions>] [GROUP BY <columns | bin(col, start, width, count) | \
bin_edges(col, e0, e1, ...)>], with aggregates count(*), count(col), count(DISTINCT <patient key>), \
sum, sum(a * b), avg, var_samp, var_pop, stddev_samp, stddev_pop, histogram(col, start, width, count) and \
histogram_edges(col, e0, e1, ...)";

/// Where an output column comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Group(usize),
    Aggregate(usize),
}

#[derive(Debug, Clone)]
pub struct FederatedPlan {
    pub request: pb::AggregateQuery,
    /// One per output column, in SELECT order.
    pub outputs: Vec<Source>,
    /// The output schema (every field nullable: a merged value can be NULL).
    pub schema: SchemaRef,
}

/// The datasets of all sites together: a column's type is the first site's (a site whose
/// type differs refuses the query itself, with the reason).
pub fn union_catalogue<'a>(catalogues: impl IntoIterator<Item = &'a pb::Catalogue>) -> pb::Catalogue {
    let mut datasets: BTreeMap<String, pb::DatasetInfo> = BTreeMap::new();
    for catalogue in catalogues {
        for d in &catalogue.datasets {
            let entry = datasets.entry(d.name.clone()).or_insert_with(|| pb::DatasetInfo {
                name: d.name.clone(),
                patient_key: d.patient_key.clone(),
                columns: vec![],
            });
            for c in &d.columns {
                if !entry.columns.iter().any(|e| e.name == c.name) {
                    entry.columns.push(c.clone());
                }
            }
        }
    }
    pb::Catalogue { datasets: datasets.into_values().collect() }
}

/// The longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 * 1024;
/// The most tokens (words, constants, symbols) in one query.
pub const MAX_SQL_TOKENS: usize = 20_000;
/// The deepest nesting of parentheses and prefix NOTs. Past its recursion limit the SQL
/// parser backtracks on nested `NOT (`, in time that grows about 2.4-fold per level (40
/// levels took 66 s in a debug build, 30 levels 8 ms); 12 stays far below where that starts.
pub const MAX_SQL_NESTING: usize = 12;
/// Longest a query may take to plan; planning runs off the runtime that serves the links.
const PLANNING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Stack of a planning thread: deep (bounded) expressions never overflow it.
const PLANNING_STACK_BYTES: usize = 64 * 1024 * 1024;
/// Queries planned at once; more wait (each within its timeout).
const MAX_CONCURRENT_PLANNING: usize = 4;

/// Checks the SQL text's size and shape with a linear scan before the parser sees it, so
/// that no text can make parsing or planning take unbounded time or stack.
pub fn check_sql_text(sql: &str) -> Result<(), Unsupported> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > MAX_SQL_BYTES {
        return refuse(format!(
            "the query is too long ({} KiB; at most {} KiB): use IN lists or bins instead of many conditions",
            sql.len().div_ceil(1024),
            MAX_SQL_BYTES / 1024
        ));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Unsupported(format!("cannot plan the query: {e}")))?;
    let words: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    if words.len() > MAX_SQL_TOKENS {
        return refuse(format!("the query is too long ({} tokens; at most {MAX_SQL_TOKENS})", words.len()));
    }
    let keyword = |t: Option<&&Token>| match t {
        Some(Token::Word(w)) => Some(w.keyword),
        _ => None,
    };
    // Nesting: open parentheses, plus prefix NOTs, each of which lasts until the next AND / OR
    // at its level or the parenthesis it stands in closes.
    let mut open_nots: Vec<usize> = vec![0];
    let (mut deepest, mut connectives) = (0usize, 0usize);
    for (i, t) in words.iter().enumerate() {
        match t {
            Token::LParen => open_nots.push(0),
            Token::RParen if open_nots.len() > 1 => {
                open_nots.pop();
            }
            Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR) => {
                connectives += 1;
                // NOT binds tighter than AND / OR: the NOTs before it at this level end here.
                if let Some(n) = open_nots.last_mut() {
                    *n = 0;
                }
            }
            Token::Word(w) if w.keyword == Keyword::NOT => {
                let after_is = i > 0 && keyword(words.get(i - 1)) == Some(Keyword::IS);
                let infix = matches!(
                    keyword(words.get(i + 1)),
                    Some(Keyword::IN | Keyword::BETWEEN | Keyword::LIKE | Keyword::ILIKE | Keyword::SIMILAR)
                );
                if let Some(n) = open_nots.last_mut().filter(|_| !after_is && !infix) {
                    *n += 1;
                }
            }
            _ => {}
        }
        deepest = deepest.max(open_nots.len() - 1 + open_nots.iter().sum::<usize>());
    }
    if deepest > MAX_SQL_NESTING {
        return refuse(format!(
            "the query is nested too deeply ({deepest} levels of parentheses and NOT; at most {MAX_SQL_NESTING}): \
             write conditions flatter, e.g. NOT (a OR b) as NOT a AND NOT b"
        ));
    }
    // BETWEEN's AND is a connective to the scanner, hence the factor 2.
    if connectives > 2 * verbund_query::validate::MAX_FILTER_NODES {
        return refuse(format!(
            "the query has more than {} conditions; use IN lists or bins instead",
            verbund_query::validate::MAX_FILTER_NODES
        ));
    }
    Ok(())
}

/// Plans `sql` against `catalogue` and converts it into a federated plan.
pub async fn plan_sql(sql: &str, catalogue: &pb::Catalogue) -> Result<FederatedPlan, Unsupported> {
    check_sql_text(sql)?;
    plan_off_runtime(planning_context(catalogue)?, sql, catalogue).await
}

static PLANNING_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_PLANNING);

/// Plans on a thread of its own with a large stack and a time limit, so that no request can
/// hold the workers of the runtime that serves the site links.
async fn plan_off_runtime(
    ctx: SessionContext,
    sql: &str,
    catalogue: &pb::Catalogue,
) -> Result<FederatedPlan, Unsupported> {
    let too_slow =
        || Unsupported(format!("the query took longer than {} s to plan; simplify it", PLANNING_TIMEOUT.as_secs()));
    let planned = async {
        let permit = PLANNING_SLOTS.acquire().await.map_err(|_| Unsupported("the planner is shut down".into()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::runtime::Handle::current();
        let (sql, catalogue) = (sql.to_string(), catalogue.clone());
        std::thread::Builder::new()
            .name("verbund-plan".into())
            .stack_size(PLANNING_STACK_BYTES)
            .spawn(move || {
                // The slot stays taken until planning really ends, also after a timeout.
                let _permit = permit;
                let _ = tx.send(handle.block_on(plan_with(&ctx, &sql, &catalogue)));
            })
            .map_err(|e| Unsupported(format!("cannot start planning: {e}")))?;
        rx.await.map_err(|_| Unsupported("planning failed unexpectedly".into()))?
    };
    tokio::time::timeout(PLANNING_TIMEOUT, planned).await.map_err(|_| too_slow())?
}

/// A planning session with the catalogue's datasets as empty tables.
fn planning_context(catalogue: &pb::Catalogue) -> Result<SessionContext, Unsupported> {
    let ctx = SessionContext::new();
    verbund_query::functions::register_all(&ctx);
    for d in &catalogue.datasets {
        let fields: Vec<Field> =
            d.columns.iter().filter_map(|c| data_type_of(c.r#type()).map(|t| Field::new(&c.name, t, true))).collect();
        let schema = Arc::new(Schema::new(fields));
        let table = MemTable::try_new(schema, vec![vec![]]).map_err(|e| Unsupported(e.to_string()))?;
        ctx.register_table(d.name.as_str(), Arc::new(table)).map_err(|e| Unsupported(e.to_string()))?;
    }
    Ok(ctx)
}

/// Plans researchers' SQL, keeping a planning session per catalogue (each project sees its
/// own) while it stays the same: building one costs about as much as planning a query.
#[derive(Default)]
pub struct Planner {
    cached: std::sync::Mutex<Vec<(pb::Catalogue, SessionContext)>>,
}

/// Planning sessions kept (most recently built last).
const CACHED_SESSIONS: usize = 8;

impl Planner {
    pub async fn plan(&self, sql: &str, catalogue: &pb::Catalogue) -> Result<FederatedPlan, Unsupported> {
        check_sql_text(sql)?;
        let cached = {
            let guard = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            guard.iter().find(|(c, _)| c == catalogue).map(|(_, ctx)| ctx.clone())
        };
        let ctx = match cached {
            Some(ctx) => ctx,
            None => {
                let ctx = planning_context(catalogue)?;
                let mut guard = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if guard.len() >= CACHED_SESSIONS {
                    guard.remove(0);
                }
                guard.push((catalogue.clone(), ctx.clone()));
                ctx
            }
        };
        plan_off_runtime(ctx, sql, catalogue).await
    }
}

async fn plan_with(ctx: &SessionContext, sql: &str, catalogue: &pb::Catalogue) -> Result<FederatedPlan, Unsupported> {
    if catalogue.datasets.is_empty() {
        return refuse("no site has announced any dataset yet; check the connected sites with `verbund sites`");
    }
    let plan = ctx.state().create_logical_plan(sql).await.map_err(|e| {
        let message = planning_error(&e);
        if message.starts_with("table '") && message.ends_with("not found") {
            let names: Vec<&str> = catalogue.datasets.iter().map(|d| d.name.as_str()).collect();
            let table = message.trim_start_matches("table '").split('\'').next().unwrap_or_default();
            let table = table.rsplit('.').next().unwrap_or(table);
            return Unsupported(format!("unknown dataset '{table}'; the sites offer: {}", names.join(", ")));
        }
        Unsupported(format!("cannot plan the query: {message}"))
    })?;
    let federated = convert(&plan)?;
    // The same complete check every node makes, so that mistakes surface before fan-out.
    check(&federated.request, catalogue).map_err(|e| Unsupported(e.0))?;
    Ok(federated)
}

fn convert(plan: &LogicalPlan) -> Result<FederatedPlan, Unsupported> {
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
    let (dataset, filter) = source(&aggregate.input)?;

    let mut group_by = Vec::with_capacity(aggregate.group_expr.len());
    for g in &aggregate.group_expr {
        group_by.push(grouping(g)?);
    }
    let mut aggregates = Vec::with_capacity(aggregate.aggr_expr.len());
    for a in &aggregate.aggr_expr {
        aggregates.push(aggregate_of(a)?);
    }
    if aggregates.is_empty() {
        return refuse("the query selects no aggregate; add one, e.g. count(DISTINCT patient_id)");
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
        request: pb::AggregateQuery { dataset, filter, group_by, aggregates },
        outputs,
        schema: Arc::new(Schema::new(fields)),
    })
}

/// DataFusion's planning error, shortened to what a researcher can act on.
fn planning_error(e: &datafusion::error::DataFusionError) -> String {
    let root = e.find_root().to_string();
    const NO_MATCH: &str = "No function matches the given name and argument types '";
    if let Some(start) = root.find(NO_MATCH) {
        let call = root[start + NO_MATCH.len()..].split('\'').next().unwrap_or_default();
        return format!(
            "{call} does not take arguments of these types (sum, avg, variances and histograms need numeric columns)"
        );
    }
    let first = root.split("\nThis issue was likely caused by a bug").next().unwrap_or(&root);
    first.replace("Error during planning: ", "").trim().to_string()
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
            LogicalPlan::Join(_) => Some("joins are not supported yet: each query reads one dataset"),
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

/// The dataset read and the WHERE condition, from the plan below the aggregate.
fn source(plan: &LogicalPlan) -> Result<(String, Option<pb::Filter>), Unsupported> {
    match plan {
        LogicalPlan::TableScan(scan) => Ok((scan.table_name.table().to_string(), None)),
        LogicalPlan::SubqueryAlias(s) if matches!(s.input.as_ref(), LogicalPlan::TableScan(_)) => source(&s.input),
        LogicalPlan::Filter(f) => {
            let (dataset, inner) = source(&f.input)?;
            if inner.is_some() {
                return refuse("nested filters are not supported");
            }
            Ok((dataset, Some(filter(&f.predicate)?)))
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
            v.arithmetic_negate().map_err(|_| Unsupported(format!("cannot negate '{inner}'")))
        }
        Expr::Cast(c) => {
            let v = literal(&c.expr)?;
            match (&v, c.field.data_type()) {
                (ScalarValue::Utf8(Some(s)), datafusion::arrow::datatypes::DataType::Date32) => {
                    parse_date(s).map(|d| ScalarValue::Date32(Some(d))).map_err(|e| Unsupported(e.to_string()))
                }
                _ => v.cast_to(c.field.data_type()).map_err(|_| Unsupported(format!("cannot convert '{e}'"))),
            }
        }
        other => refuse(format!("'{other}' is not a constant; conditions compare a column with constants")),
    }
}

fn wire_literal(e: &Expr) -> Result<pb::Literal, Unsupported> {
    let v = literal(e)?;
    scalar_to_literal(&v).map_err(|err| Unsupported(format!("'{e}': {err}")))
}

/// Converts a WHERE condition. A chain of ANDs (or ORs) is collected into one conjunction
/// with an explicit stack: a long chain costs neither stack depth nor quadratic time, and
/// conversion stops as soon as the conditions exceed the limit. Other nesting is bounded
/// by [`check_sql_text`].
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
        .ok_or_else(|| Unsupported(format!("{name}() bin parameters must be numeric constants")))?;
    let spec = kind.spec(&params).map_err(|e| Unsupported(format!("{name}(): {e}")))?;
    Ok(spec.to_proto(&column))
}

fn grouping(e: &Expr) -> Result<pb::Grouping, Unsupported> {
    use pb::grouping::Kind;
    let kind = match e {
        Expr::Column(c) => Kind::Column(c.name.clone()),
        Expr::Alias(a) => return grouping(&a.expr),
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

#[cfg(test)]
mod tests {
    use super::*;
    use pb::filter::Kind;

    fn catalogue() -> pb::Catalogue {
        let col = |name: &str, t: pb::ColumnType| pb::ColumnInfo { name: name.into(), r#type: t as i32 };
        pb::Catalogue {
            datasets: vec![pb::DatasetInfo {
                name: "patients".into(),
                patient_key: "patient_id".into(),
                columns: vec![
                    col("patient_id", pb::ColumnType::String),
                    col("sex", pb::ColumnType::String),
                    col("age", pb::ColumnType::Int64),
                    col("bmi", pb::ColumnType::Float64),
                ],
            }],
        }
    }

    async fn plan(sql: &str) -> FederatedPlan {
        plan_sql(sql, &catalogue()).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    #[tokio::test]
    async fn the_planner_follows_catalogue_changes() {
        let planner = Planner::default();
        let mut c = catalogue();
        let sql = "SELECT count(*) AS n FROM visits";
        assert!(planner.plan("SELECT avg(bmi) FROM patients", &c).await.is_ok());
        assert!(planner.plan(sql, &c).await.unwrap_err().0.contains("unknown dataset 'visits'"));
        let mut visits = c.datasets[0].clone();
        visits.name = "visits".into();
        c.datasets.push(visits);
        assert_eq!(planner.plan(sql, &c).await.unwrap().request.dataset, "visits");
        c.datasets.truncate(1);
        assert!(planner.plan(sql, &c).await.is_err(), "a site that left takes its dataset along");
    }

    #[tokio::test]
    async fn sql_becomes_a_typed_request() {
        let p = plan(
            "SELECT sex, count(DISTINCT patient_id) AS n, avg(bmi) FROM patients \
             WHERE 65 <= age AND sex IN ('female', 'male') AND bmi BETWEEN 18.5 AND 30 GROUP BY sex",
        )
        .await;
        assert_eq!(p.request.dataset, "patients");
        assert_eq!(p.outputs, vec![Source::Group(0), Source::Aggregate(0), Source::Aggregate(1)]);
        assert_eq!(p.schema.field(1).name(), "n");
        let kinds: Vec<_> = p.request.aggregates.iter().map(|a| a.kind()).collect();
        assert_eq!(kinds, vec![pb::AggregateKind::CountPatients, pb::AggregateKind::Mean]);
        let Some(Kind::And(and)) = p.request.filter.and_then(|f| f.kind) else { panic!("not an AND") };
        assert_eq!(and.operands.len(), 3, "nested ANDs are flattened");
        let Some(Kind::Compare(c)) = &and.operands[0].kind else { panic!("not a comparison") };
        assert_eq!((c.column.as_str(), c.op()), ("age", pb::CompareOp::Ge), "65 <= age flips to age >= 65");
    }

    #[tokio::test]
    async fn bins_become_groupings() {
        let p = plan("SELECT bin(age, 0, 10, 12) AS decade, count(*) FROM patients GROUP BY decade").await;
        let Some(pb::grouping::Kind::Bins(b)) = &p.request.group_by[0].kind else { panic!("not bins") };
        assert_eq!(b.column, "age");
        assert_eq!(
            verbund_query::BinSpec::from_proto(b).unwrap(),
            verbund_query::BinSpec::fixed(0.0, 10.0, 12).unwrap()
        );
        let p = plan("SELECT histogram_edges(bmi, 0, 18.5, 25, 30, 60) AS h FROM patients").await;
        assert_eq!(p.request.aggregates[0].kind(), pb::AggregateKind::Histogram);
    }

    #[tokio::test]
    async fn unsupported_shapes_say_why() {
        for (sql, word) in [
            ("SELECT age FROM patients", "row-level"),
            ("SELECT sex, count(*) FROM patients GROUP BY sex ORDER BY sex", "ORDER BY"),
            ("SELECT count(*) + 1 FROM patients", "computes on aggregates"),
            ("SELECT count(*) FROM patients WHERE sex LIKE 'f%'", "LIKE"),
        ] {
            let e = plan_sql(sql, &catalogue()).await.unwrap_err().0;
            assert!(e.contains(word), "{sql}: {e}");
        }
        let e = plan_sql("SELECT count(*) FROM patients", &pb::Catalogue::default()).await.unwrap_err().0;
        assert!(e.contains("no site"), "{e}");
    }

    fn ors(n: usize) -> String {
        let conditions: Vec<String> = (0..n).map(|i| format!("age = {i}")).collect();
        format!("SELECT count(*) FROM patients WHERE {}", conditions.join(" OR "))
    }

    #[tokio::test]
    async fn long_condition_chains_convert_flat_and_stop_at_the_limit() {
        // 999 comparisons and the OR that joins them: the 1000 filter nodes a site accepts.
        for n in [500, 999] {
            let p = plan(&ors(n)).await;
            let Some(Kind::Or(or)) = p.request.filter.and_then(|f| f.kind) else { panic!("not an OR") };
            assert_eq!(or.operands.len(), n, "one flat OR, not {n} nested ones");
        }
        let e = plan_sql(&ors(1000), &catalogue()).await.unwrap_err().0;
        assert!(e.contains("more than 1000 conditions"), "{e}");
        let e = plan_sql(&ors(12_000), &catalogue()).await.unwrap_err().0;
        assert!(e.contains("conditions") || e.contains("too long"), "{e}");
    }

    #[tokio::test]
    async fn deep_nesting_and_huge_texts_are_refused_before_parsing() {
        let nested = |depth: usize| {
            format!("SELECT count(*) FROM patients WHERE {}age > 3{}", "NOT (".repeat(depth), ")".repeat(depth))
        };
        assert!(plan_sql(&nested(5), &catalogue()).await.is_ok());
        let e = check_sql_text(&nested(40)).unwrap_err().0;
        assert!(e.contains("nested too deeply"), "{e}");
        let parens = format!("SELECT count(*) FROM patients WHERE {}age > 3{}", "(".repeat(13), ")".repeat(13));
        assert!(check_sql_text(&parens).unwrap_err().0.contains("nested"));
        // Many NOT conditions side by side are not nesting.
        let flat: Vec<String> = (0..40).map(|i| format!("NOT age = {i}")).collect();
        assert!(check_sql_text(&format!("SELECT count(*) FROM patients WHERE {}", flat.join(" AND "))).is_ok());
        assert!(check_sql_text("SELECT count(*) FROM patients WHERE age IS NOT NULL AND sex NOT IN ('x')").is_ok());
        let huge = format!("SELECT count(*) FROM patients WHERE sex = '{}'", "x".repeat(MAX_SQL_BYTES));
        assert!(check_sql_text(&huge).unwrap_err().0.contains("too long"));
    }

    #[test]
    fn union_catalogue_merges_sites() {
        let mut other = catalogue();
        other.datasets[0].columns.push(pb::ColumnInfo { name: "region".into(), r#type: pb::ColumnType::String as i32 });
        other.datasets.push(pb::DatasetInfo { name: "labs".into(), patient_key: "pid".into(), columns: vec![] });
        let u = union_catalogue([&catalogue(), &other]);
        assert_eq!(u.datasets.len(), 2);
        assert_eq!(u.datasets[1].columns.len(), 5);
    }
}
