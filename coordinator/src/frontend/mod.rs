//! The SQL front-end: a researcher's SQL is parsed and planned by DataFusion against the
//! union of the sites' catalogues (empty tables with the right schemas), and the logical plan
//! is converted into the typed aggregate request plus a description of the output columns.
//! Anything that is not an aggregate query of a supported shape is refused with the reason
//! and what is supported instead.

mod convert;
mod join;
mod planning;
mod references;
mod text;

pub use planning::{Planner, plan_sql};
pub use text::{MAX_SQL_BYTES, MAX_SQL_NESTING, MAX_SQL_TOKENS, check_sql_text};

use datafusion::arrow::datatypes::SchemaRef;
use std::collections::BTreeMap;
use verbund_proto::v1 as pb;

/// What the researcher gets told when a query cannot be federated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unsupported {
    #[error("no site has announced any dataset yet; check the connected sites with `verbund sites`")]
    NoDatasets,
    #[error("unknown dataset '{dataset}'; the sites offer: {}", offered.join(", "))]
    UnknownDataset { dataset: String, offered: Vec<String> },
    /// A function that is not one of verbund's (DataFusion's own functions included).
    #[error("{name}() is not supported: no functions other than verbund's own are available. {SUPPORTED}")]
    UnknownFunction { name: String },
    /// The SQL text is larger or deeper than the front-end accepts.
    #[error("{0}")]
    TooComplex(Complexity),
    /// The parser's or planner's own account of what is wrong with the SQL.
    #[error("cannot plan the query: {0}")]
    Sql(String),
    /// A construct that parses but cannot be federated; the message says what is supported.
    #[error("{0}")]
    Shape(String),
    /// The request the SQL becomes fails the check every node makes.
    #[error(transparent)]
    Invalid(#[from] verbund_query::validate::InvalidRequest),
    /// Not the query's fault: the planner could not run.
    #[error("the coordinator cannot plan queries right now ({0}); retry in a moment")]
    PlannerUnavailable(String),
}

/// A limit on the SQL text itself, checked before parsing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Complexity {
    #[error(
        "the query is too long ({kib} KiB; at most {} KiB): use IN lists or bins instead of many conditions",
        MAX_SQL_BYTES / 1024
    )]
    Bytes { kib: usize },
    #[error("the query is too long ({tokens} tokens; at most {MAX_SQL_TOKENS})")]
    Tokens { tokens: usize },
    #[error(
        "the query is nested too deeply ({depth} levels of parentheses and NOT; at most {MAX_SQL_NESTING}): \
         write conditions flatter, e.g. NOT (a OR b) as NOT a AND NOT b"
    )]
    Nesting { depth: usize },
    #[error(
        "the query has more than {} conditions; use IN lists or bins instead",
        verbund_query::validate::MAX_FILTER_NODES
    )]
    Conditions,
    #[error("the query took longer than {} s to plan; simplify it", planning::PLANNING_TIMEOUT.as_secs())]
    PlanningTime,
}

impl From<Complexity> for Unsupported {
    fn from(c: Complexity) -> Self {
        Unsupported::TooComplex(c)
    }
}

/// A refusal of the query's shape.
fn refuse<T>(msg: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported::Shape(msg.into()))
}

const SUPPORTED: &str = "verbund answers aggregate queries over one dataset: SELECT <group columns>, \
<aggregates> FROM <dataset> [WHERE <conditions>] [GROUP BY <columns | bin(col, start, width, count) | \
bin_edges(col, e0, e1, ...)>], with aggregates count(*), count(col), count(DISTINCT <patient key>), \
sum, sum(a * b), avg, var_samp, var_pop, stddev_samp, stddev_pop, histogram(col, start, width, count) and \
histogram_edges(col, e0, e1, ...); to group by a patient attribute, LEFT JOIN a patient-level dataset on the \
patient key (... FROM fhir_observations o LEFT JOIN fhir_patients p ON o.patient_id = p.patient_id GROUP BY p.gender)";

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
    /// The wire type of each group key, to check sites' answers against.
    pub group_types: Vec<pb::ColumnType>,
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
                model: d.model.clone(),
            });
            for c in &d.columns {
                match entry.columns.iter_mut().find(|e| e.name == c.name) {
                    // Declared levels are public: a model's levels are their union.
                    Some(e) => {
                        for level in &c.levels {
                            if !e.levels.contains(level) {
                                e.levels.push(level.clone());
                            }
                        }
                    }
                    None => entry.columns.push(c.clone()),
                }
            }
        }
    }
    pb::Catalogue { datasets: datasets.into_values().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::filter::Kind;
    use verbund_query::validate::InvalidRequest;

    fn catalogue() -> pb::Catalogue {
        verbund_query::validate::example_catalogue()
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
        assert!(
            matches!(planner.plan(sql, &c).await, Err(Unsupported::UnknownDataset { dataset, .. }) if dataset == "visits")
        );
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
            let e = plan_sql(sql, &catalogue()).await.unwrap_err();
            assert!(matches!(&e, Unsupported::Shape(m) if m.contains(word)), "{sql}: {e}");
        }
        let e = plan_sql("SELECT count(*) FROM patients", &pb::Catalogue::default()).await.unwrap_err();
        assert_eq!(e, Unsupported::NoDatasets);
        assert!(e.to_string().contains("no site"), "{e}");
    }

    #[tokio::test]
    async fn references_are_checked_before_planning() {
        let e = plan_sql("SELECT median(age) FROM patients", &catalogue()).await.unwrap_err();
        assert_eq!(e, Unsupported::UnknownFunction { name: "median".into() });
        let e = plan_sql("SELECT count(*) FROM patients WHERE upper(sex) = 'MALE'", &catalogue()).await.unwrap_err();
        assert_eq!(e, Unsupported::UnknownFunction { name: "upper".into() });
        let e = plan_sql("SELECT sum(SEX) FROM patients", &catalogue()).await.unwrap_err();
        assert!(
            matches!(&e, Unsupported::Invalid(InvalidRequest::NotNumeric { column, role: "sum()", column_type: "string" }) if column == "sex"),
            "{e}"
        );
        let e = plan_sql("SELECT bin(sex, 0, 1, 2) AS b, count(*) FROM patients GROUP BY b", &catalogue()).await;
        assert!(matches!(e, Err(Unsupported::Invalid(InvalidRequest::NotNumeric { role: "binning", .. }))), "{e:?}");
        let e = plan_sql("SELECT count(*) FROM visits", &catalogue()).await.unwrap_err();
        assert!(
            matches!(&e, Unsupported::UnknownDataset { dataset, offered } if dataset == "visits" && offered == &["patients"])
        );
        // What only the planner knows comes in its words.
        let e = plan_sql("SELECT count(*) FROM patients WHERE agee > 3", &catalogue()).await.unwrap_err();
        assert!(matches!(&e, Unsupported::Sql(m) if m.contains("agee")), "{e}");
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
        let e = plan_sql(&ors(1000), &catalogue()).await.unwrap_err();
        assert!(e.to_string().contains("more than 1000 conditions"), "{e}");
        let e = plan_sql(&ors(12_000), &catalogue()).await.unwrap_err();
        assert!(
            matches!(
                e,
                Unsupported::TooComplex(Complexity::Conditions | Complexity::Tokens { .. } | Complexity::Bytes { .. })
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn deep_nesting_and_huge_texts_are_refused_before_parsing() {
        let nested = |depth: usize| {
            format!("SELECT count(*) FROM patients WHERE {}age > 3{}", "NOT (".repeat(depth), ")".repeat(depth))
        };
        assert!(plan_sql(&nested(5), &catalogue()).await.is_ok());
        let e = check_sql_text(&nested(40)).unwrap_err();
        assert!(e.to_string().contains("nested too deeply"), "{e}");
        let parens = format!("SELECT count(*) FROM patients WHERE {}age > 3{}", "(".repeat(13), ")".repeat(13));
        assert_eq!(check_sql_text(&parens), Err(Complexity::Nesting { depth: 13 }.into()));
        // Many NOT conditions side by side are not nesting.
        let flat: Vec<String> = (0..40).map(|i| format!("NOT age = {i}")).collect();
        assert!(check_sql_text(&format!("SELECT count(*) FROM patients WHERE {}", flat.join(" AND "))).is_ok());
        assert!(check_sql_text("SELECT count(*) FROM patients WHERE age IS NOT NULL AND sex NOT IN ('x')").is_ok());
        let huge = format!("SELECT count(*) FROM patients WHERE sex = '{}'", "x".repeat(MAX_SQL_BYTES));
        assert!(matches!(check_sql_text(&huge), Err(Unsupported::TooComplex(Complexity::Bytes { kib: 65 }))));
    }

    #[test]
    fn union_catalogue_merges_sites() {
        let mut other = catalogue();
        other.datasets[0].columns.push(pb::ColumnInfo {
            name: "region".into(),
            r#type: pb::ColumnType::String as i32,
            levels: Vec::new(),
        });
        other.datasets.push(pb::DatasetInfo { name: "labs".into(), patient_key: "pid".into(), ..Default::default() });
        let u = union_catalogue([&catalogue(), &other]);
        assert_eq!(u.datasets.len(), 2);
        assert_eq!(u.datasets[1].columns.len(), 7);
    }
}
