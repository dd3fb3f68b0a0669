//! The privacy engine's price: utility (relative error of noisy answers against the exact
//! ones, at the default ε 1 per question) and the node's time under the dp profile against raw
//! DataFusion on the same Parquet file in the same run.
//!
//! The node runs the research default (`profile = "dp"`, k = 5, at most 5 rows per patient)
//! with bounds declared for the covariates and levels for region and sex; its budget is set
//! high enough for the run. Utility compares patient counts (cells of at least 200 patients)
//! and means of covariates over all rows: the truth is the plain SQL answer, so the error
//! includes both the noise and the bias of counting at most 5 rows per patient.

use crate::exec::{Figures, Query, Setup, measure, node_query};
use crate::sys::{median, round};
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use std::path::Path;
use verbund_policies::{DatasetRule, Level, Policy};
use verbund_proto::v1 as pb;
use verbund_proto::v1::partial_aggregate::State;

fn policy() -> anyhow::Result<Policy> {
    let mut policy = Policy::default().allowing(verbund_tests::PROJECT);
    policy.budget.epsilon = 1e9;
    policy.budget.delta = 1.0;
    let bounds = [("age", [0.0, 110.0]), ("bmi", [10.0, 60.0]), ("hba1c", [3.0, 15.0]), ("sbp", [60.0, 250.0])];
    let regions = ["DE-NW", "DE-BY", "DE-BW", "DE-NI", "DE-HE", "DE-SN", "DE-BE", "DE-HH"];
    let text = |v: &[&str]| v.iter().map(|s| Level::Text(s.to_string())).collect::<Vec<_>>();
    policy.datasets.push(DatasetRule {
        name: crate::data::TABLE.into(),
        bounds: bounds.iter().map(|(c, b)| (c.to_string(), *b)).collect(),
        levels: [("region".to_string(), text(&regions)), ("sex".to_string(), text(&["female", "male", "diverse"]))]
            .into_iter()
            .collect(),
        ..DatasetRule::default()
    });
    policy.validate()?;
    Ok(policy)
}

pub async fn setup(pki: &verbund_tests::Pki, path: &Path, dir: &Path) -> anyhow::Result<Setup> {
    let key = dir.join("noise.key");
    verbund_node::private::write_noise_key(&key)?;
    let privacy = verbund_node::private::Privacy::load(&key, &dir.join("budget.redb")).map_err(anyhow::Error::msg)?;
    crate::exec::setup_with(pki, path, policy()?, Some(privacy)).await
}

/// The execution queries the dp profile answers (the rest need columns without bounds).
pub fn timed_queries() -> Vec<Query> {
    crate::exec::queries()
        .into_iter()
        .filter(|q| ["a_count_filter", "b_grouped_moments", "c_histogram"].contains(&q.id))
        .collect()
}

pub async fn timing(setup: &Setup, iterations: usize) -> anyhow::Result<Vec<Figures>> {
    let mut figures = Vec::new();
    for q in timed_queries() {
        figures.push(measure(setup, &q, iterations, crate::exec::Side::Both).await?);
    }
    Ok(figures)
}

/// One noisy number of a single-site answer, finished as the coordinator finishes it.
fn finished(state: &Option<State>) -> Option<f64> {
    match state {
        Some(State::NoisyCount(c)) => Some(c.count.max(0) as f64),
        Some(State::NoisySum(s)) if s.count > 0 => {
            Some((s.centre * s.count as f64 + s.unit * s.sum as f64) / s.count as f64)
        }
        _ => None,
    }
}

pub struct Utility {
    pub counts: Vec<f64>,
    pub means: Vec<f64>,
    pub withheld: usize,
}

/// `questions` seeded questions: patients per region and mean of a covariate per region,
/// under a random age range; relative errors against the exact SQL answer.
pub async fn utility(setup: &Setup, questions: usize, seed: u64) -> anyhow::Result<Utility> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Utility { counts: vec![], means: vec![], withheld: 0 };
    let catalogue = setup.node.engine().catalogue().clone();
    for i in 0..questions {
        let low: i64 = rng.random_range(18..60);
        let high = low + rng.random_range(10..40);
        let covariate = ["bmi", "hba1c", "sbp"][i % 3];
        let filter = format!("WHERE age BETWEEN {low} AND {high}");
        let sql = format!(
            "SELECT region, count(DISTINCT patient_id) AS n, avg({covariate}) AS m FROM t {filter} GROUP BY region"
        );
        let plan = verbund_coordinator::frontend::plan_sql(&sql, &catalogue).await?;
        let q = node_query(format!("utility-{i}"), &setup.token, plan.request);
        let partial = setup.node.handle(&q).await.map_err(|r| anyhow::anyhow!("node refused {sql}: {r}"))?;
        let truth = setup.raw.sql(&sql.replace(" AS n", "").replace(" AS m", "")).await?.collect().await?;
        for batch in &truth {
            use datafusion::arrow::array::{Array, AsArray};
            use datafusion::arrow::datatypes::{Float64Type, Int64Type};
            // Parquet strings come back as views; one representation for the comparison.
            let regions =
                datafusion::arrow::compute::cast(batch.column(0), &datafusion::arrow::datatypes::DataType::Utf8)?;
            let regions = regions.as_string::<i32>();
            let counts = batch.column(1).as_primitive::<Int64Type>();
            let means = batch.column(2).as_primitive::<Float64Type>();
            for row in 0..batch.num_rows() {
                let key = pb::Literal { value: Some(pb::literal::Value::String(regions.value(row).into())) };
                let group = partial.groups.iter().find(|g| g.keys.first() == Some(&key));
                let Some(group) = group else {
                    out.withheld += 1;
                    continue;
                };
                let true_n = counts.value(row) as f64;
                if let Some(n) = finished(&group.aggregates[0].state)
                    && true_n >= 200.0
                {
                    out.counts.push((n - true_n).abs() / true_n);
                }
                if !means.is_null(row)
                    && let Some(m) = finished(&group.aggregates[1].state)
                {
                    out.means.push((m - means.value(row)).abs() / means.value(row).abs());
                }
            }
        }
    }
    Ok(out)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

pub fn markdown(timing: &[Figures], utility: &Utility, questions: usize) -> String {
    let mut text = String::from("| query | raw DataFusion (ms) | node, dp profile (ms) | ratio |\n|---|---|---|---|\n");
    for f in timing {
        match &f.refused {
            Some(r) => text.push_str(&format!("| {} | | refused: {r} | |\n", f.what)),
            None => text.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.2} |\n",
                f.what,
                median(&f.raw),
                median(&f.node),
                f.ratio()
            )),
        }
    }
    let pct = |v: &[f64], p| round(percentile(v, p) * 100.0, 2);
    text.push_str(&format!(
        "\nUtility over {questions} seeded questions at ε 1 per question (target: ≤ 5 %):\n\n\
         | figure | cells | median relative error | p95 |\n|---|---|---|---|\n\
         | patient counts (cells ≥ 200 patients) | {} | {} % | {} % |\n\
         | means of bmi, hba1c, sbp | {} | {} % | {} % |\n\
         \nCells withheld by the floors: {}.\n",
        utility.counts.len(),
        pct(&utility.counts, 0.5),
        pct(&utility.counts, 0.95),
        utility.means.len(),
        pct(&utility.means, 0.5),
        pct(&utility.means, 0.95),
        utility.withheld
    ));
    text
}

pub fn json(timing: &[Figures], utility: &Utility) -> Value {
    json!({
        "timing": timing.iter().map(Figures::to_json).collect::<Vec<_>>(),
        "utility": {
            "count_cells": utility.counts.len(),
            "count_median_relative_error": percentile(&utility.counts, 0.5),
            "count_p95_relative_error": percentile(&utility.counts, 0.95),
            "mean_cells": utility.means.len(),
            "mean_median_relative_error": percentile(&utility.means, 0.5),
            "mean_p95_relative_error": percentile(&utility.means, 0.95),
            "withheld_cells": utility.withheld,
        }
    })
}
