//! The one join the front-end accepts: a query's dataset LEFT JOINed to a patient-level
//! dataset on the patient key, to group by a patient attribute ("mean HbA1c by sex"):
//!
//! ```sql
//! SELECT p.gender, avg(o.value) FROM fhir_observations o
//!   LEFT JOIN fhir_patients p ON o.patient_id = p.patient_id
//! WHERE o.code = '4548-4' GROUP BY p.gender
//! ```
//!
//! It becomes `Grouping.patient_attribute`: the node joins the attribute itself and gives
//! each patient one value, so a patient's rows fall into one group. The joined dataset may
//! only be grouped by; conditions and aggregates read the query's own dataset.

use super::{Unsupported, refuse};
use datafusion::common::{Column, JoinType};
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator, logical_plan::Join};
use verbund_proto::v1 as pb;

/// The patient-level dataset a query joins, and the name its columns are qualified with.
#[derive(Debug, Clone)]
pub(super) struct PatientJoin {
    pub dataset: String,
    pub qualifier: String,
}

impl PatientJoin {
    /// Whether `c` is a column of the joined dataset.
    pub fn owns(&self, c: &Column) -> bool {
        c.relation.as_ref().is_some_and(|r| r.table() == self.qualifier)
    }

    /// Refuses `e` if it reads a column of the joined dataset (`role` says where it is).
    pub fn refuse_in(&self, e: &Expr, role: &str) -> Result<(), Unsupported> {
        match e.column_refs().into_iter().find(|c| self.owns(c)) {
            Some(c) => refuse(format!(
                "{role} reads '{c}' of the joined dataset '{}'; a joined patient dataset can only be grouped by \
                 (conditions on patients go into a cohort, e.g. a CCDL gender or age criterion)",
                self.dataset
            )),
            None => Ok(()),
        }
    }
}

/// A table of the plan: (dataset, qualifier of its columns).
fn table(plan: &LogicalPlan) -> Option<(String, String)> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let name = scan.table_name.table().to_string();
            Some((name.clone(), name))
        }
        LogicalPlan::SubqueryAlias(s) => match s.input.as_ref() {
            LogicalPlan::TableScan(scan) => Some((scan.table_name.table().to_string(), s.alias.table().to_string())),
            _ => None,
        },
        _ => None,
    }
}

const SHAPE: &str = "joins are supported only as a LEFT JOIN of a patient-level dataset on the patient key, \
to group by a patient attribute: SELECT p.gender, avg(o.value) FROM fhir_observations o \
LEFT JOIN fhir_patients p ON o.patient_id = p.patient_id GROUP BY p.gender";

/// The query's own dataset and the patient dataset of `join`, checked against the catalogue.
pub(super) fn patient_join(join: &Join, catalogue: &pb::Catalogue) -> Result<(String, PatientJoin), Unsupported> {
    if join.join_type != JoinType::Left {
        return refuse(format!(
            "{} JOIN is not supported: {SHAPE} (rows whose patient is missing from the joined dataset form the NULL group, \
             which is what LEFT JOIN means)",
            join.join_type
        ));
    }
    let (Some((dataset, own)), Some((joined, qualifier))) = (table(&join.left), table(&join.right)) else {
        return refuse(format!("joins of subqueries are not supported; {SHAPE}"));
    };
    if own == qualifier {
        return refuse(format!("a dataset cannot be joined to itself; {SHAPE}"));
    }
    let key = |name: &str| catalogue.datasets.iter().find(|d| d.name == name).map(|d| d.patient_key.as_str());
    let (own_key, joined_key) = (key(&dataset).unwrap_or_default(), key(&joined).unwrap_or_default());
    if own_key.is_empty() || joined_key.is_empty() {
        let which = if own_key.is_empty() { &dataset } else { &joined };
        return refuse(format!("dataset '{which}' has no patient key, so it cannot be joined; {SHAPE}"));
    }
    // The planner keeps `ON a = b` as the join's filter; an optimised plan has it in `on`.
    let pair = match (join.on.as_slice(), &join.filter) {
        ([(l, r)], None) => Some((l, r)),
        ([], Some(Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }))) => {
            Some((left.as_ref(), right.as_ref()))
        }
        _ => None,
    };
    let on_keys = match pair {
        Some((Expr::Column(l), Expr::Column(r))) => {
            let side = |c: &Column| c.relation.as_ref().map(|r| r.table().to_string());
            let (l, r) = if side(l).as_deref() == Some(qualifier.as_str()) { (r, l) } else { (l, r) };
            side(l).as_deref() == Some(own.as_str())
                && l.name == own_key
                && side(r).as_deref() == Some(qualifier.as_str())
                && r.name == joined_key
        }
        _ => false,
    };
    if !on_keys {
        return refuse(format!(
            "the join must be ON {own}.{own_key} = {qualifier}.{joined_key} and nothing else (the patient keys); {SHAPE}"
        ));
    }
    Ok((dataset, PatientJoin { dataset: joined, qualifier }))
}
