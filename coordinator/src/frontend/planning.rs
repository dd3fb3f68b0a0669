//! The second job of the front-end: plan the SQL with DataFusion against the union of the
//! sites' catalogues (empty tables with the right schemas), on threads of its own with a time
//! limit, after checking every table it names against the catalogue.

use super::convert::convert;
use super::text::check_sql_text;
use super::{FederatedPlan, Unsupported, refuse};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_query::literal::data_type_of;
use verbund_query::validate::{CheckedGrouping, check};

/// Longest a query may take to plan; planning runs off the runtime that serves the links.
const PLANNING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
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
        return refuse("no site has announced any dataset yet; check the connected sites with `verbund sites`");
    }
    let state = ctx.state();
    let cannot_plan =
        |e: datafusion::error::DataFusionError| Unsupported(format!("cannot plan the query: {}", planning_error(&e)));
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(cannot_plan)?;
    // Every dataset the query names must be in the catalogue: said here, in our words,
    // rather than read out of the planner's error.
    for table in state.resolve_table_references(&statement).map_err(cannot_plan)? {
        if !catalogue.datasets.iter().any(|d| d.name == table.table()) {
            let names: Vec<&str> = catalogue.datasets.iter().map(|d| d.name.as_str()).collect();
            return refuse(format!("unknown dataset '{}'; the sites offer: {}", table.table(), names.join(", ")));
        }
    }
    let plan = state.statement_to_plan(statement).await.map_err(cannot_plan)?;
    let mut federated = convert(&plan)?;
    // The same complete check every node makes, so that mistakes surface before fan-out.
    let checked = check(&federated.request, catalogue).map_err(|e| Unsupported(e.0))?;
    federated.group_types = checked
        .groupings
        .iter()
        .map(|g| match g {
            CheckedGrouping::Column { column_type, .. } => *column_type,
            // A bin's key is its lower edge.
            CheckedGrouping::Bins { .. } => pb::ColumnType::Float64,
        })
        .collect();
    Ok(federated)
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
