//! The third job of the front-end: plan the SQL with DataFusion against the union of the
//! sites' catalogues (empty tables with the right schemas), on threads of its own with a time
//! limit, once its references have been checked.

use super::convert::convert;
use super::references::check_references;
use super::text::check_sql_text;
use super::{Complexity, FederatedPlan, Unsupported};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_query::literal::data_type_of;
use verbund_query::validate::{CheckedGrouping, check};

/// Longest a query may take to plan; planning runs off the runtime that serves the links.
pub(super) const PLANNING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Stack of a planning thread: deep (bounded) expressions never overflow it.
const PLANNING_STACK_BYTES: usize = 64 * 1024 * 1024;
/// Queries planned at once; more wait (each within its timeout).
const MAX_CONCURRENT_PLANNING: usize = 4;

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
    let planned = async {
        let permit = PLANNING_SLOTS
            .acquire()
            .await
            .map_err(|_| Unsupported::PlannerUnavailable("it is shutting down".into()))?;
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
            .map_err(|e| Unsupported::PlannerUnavailable(format!("cannot start a planning thread: {e}")))?;
        rx.await.map_err(|_| Unsupported::PlannerUnavailable("planning stopped unexpectedly".into()))?
    };
    tokio::time::timeout(PLANNING_TIMEOUT, planned).await.map_err(|_| Complexity::PlanningTime)?
}

/// A planning session with the catalogue's datasets as empty tables.
fn planning_context(catalogue: &pb::Catalogue) -> Result<SessionContext, Unsupported> {
    let ctx = SessionContext::new();
    verbund_query::functions::register_all(&ctx);
    for d in &catalogue.datasets {
        let fields: Vec<Field> =
            d.columns.iter().filter_map(|c| data_type_of(c.r#type()).map(|t| Field::new(&c.name, t, true))).collect();
        let schema = Arc::new(Schema::new(fields));
        let table =
            MemTable::try_new(schema, vec![vec![]]).map_err(|e| Unsupported::PlannerUnavailable(e.to_string()))?;
        ctx.register_table(d.name.as_str(), Arc::new(table))
            .map_err(|e| Unsupported::PlannerUnavailable(e.to_string()))?;
    }
    Ok(ctx)
}

/// Plans researchers' SQL, keeping a planning session per catalogue (each project sees its
/// own) while it stays the same: building one costs about as much as planning a query.
#[derive(Default)]
pub struct Planner {
    cached: parking_lot::Mutex<Vec<(pb::Catalogue, SessionContext)>>,
}

/// Planning sessions kept (most recently built last).
const CACHED_SESSIONS: usize = 8;

impl Planner {
    pub async fn plan(&self, sql: &str, catalogue: &pb::Catalogue) -> Result<FederatedPlan, Unsupported> {
        check_sql_text(sql)?;
        let cached = {
            let guard = self.cached.lock();
            guard.iter().find(|(c, _)| c == catalogue).map(|(_, ctx)| ctx.clone())
        };
        let ctx = match cached {
            Some(ctx) => ctx,
            None => {
                let ctx = planning_context(catalogue)?;
                let mut guard = self.cached.lock();
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
        return Err(Unsupported::NoDatasets);
    }
    let state = ctx.state();
    let cannot_plan = |e: DataFusionError| Unsupported::Sql(planner_message(&e));
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(cannot_plan)?;
    let tables = state.resolve_table_references(&statement).map_err(cannot_plan)?;
    check_references(&statement, &tables, catalogue)?;
    let plan = state.statement_to_plan(statement).await.map_err(cannot_plan)?;
    let mut federated = convert(&plan, catalogue)?;
    // The same complete check every node makes, so that mistakes surface before fan-out.
    let checked = check(&federated.request, catalogue)?;
    federated.group_types = checked
        .groupings
        .iter()
        .map(|g| match g {
            CheckedGrouping::Column { column_type, .. } | CheckedGrouping::Patient { column_type, .. } => *column_type,
            // A bin's key is its lower edge.
            CheckedGrouping::Bins { .. } => pb::ColumnType::Float64,
        })
        .collect();
    Ok(federated)
}

/// The planner's own message, without the wrapping of its error type. Which errors get here
/// is up to the planner (unknown columns, ambiguous names, type mismatches in conditions).
fn planner_message(e: &DataFusionError) -> String {
    match e.find_root() {
        DataFusionError::Plan(message) => message.clone(),
        DataFusionError::SQL(error, _) => error.to_string(),
        DataFusionError::SchemaError(error, _) => error.to_string(),
        DataFusionError::NotImplemented(message) => format!("not supported by the SQL planner: {message}"),
        other => other.to_string(),
    }
}
