//! Every federated answer equals DataFusion's answer to the same SQL over the pooled data of
//! the three sites (k = 1, so nothing is withheld).

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
use datafusion::datasource::MemTable;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::sync::Arc;
use verbund_tests::compare::{Expect, assert_same};
use verbund_tests::{Network, Synthetic, memory_catalogue, open_policy, run_sql};

/// (what the answer looks like: leading group columns, or no rows; SQL)
const QUERIES: &[(Expect, &str)] = &[
    (Expect::keys(0), "SELECT count(*) AS n FROM patients"),
    (Expect::keys(1), "SELECT sex, count(*) AS n, count(DISTINCT patient_id) AS patients FROM patients GROUP BY sex"),
    (
        Expect::keys(1),
        "SELECT region, avg(bmi) AS mean_bmi, count(bmi) AS n FROM patients WHERE bmi IS NOT NULL GROUP BY region",
    ),
    (Expect::keys(1), "SELECT sex, count(*) AS missing_bmi FROM patients WHERE bmi IS NULL GROUP BY sex"),
    (
        Expect::keys(1),
        "SELECT icd10_group, count(DISTINCT patient_id) AS patients FROM conditions WHERE age > 65 GROUP BY icd10_group",
    ),
    (
        Expect::keys(1),
        "SELECT sex, sum(age) AS s, avg(age) AS a FROM patients WHERE age >= 18 AND age < 65 GROUP BY sex",
    ),
    (Expect::keys(0), "SELECT count(*) AS n FROM patients WHERE age <= 10 OR age >= 90"),
    (Expect::keys(1), "SELECT region, count(*) AS n FROM patients WHERE region != 'Hamburg' GROUP BY region"),
    (
        Expect::keys(1),
        "SELECT icd10, count(*) AS n FROM conditions WHERE icd10 IN ('E11.9', 'I10.90', 'J45.9') GROUP BY icd10",
    ),
    (
        Expect::keys(1),
        "SELECT icd10_group, count(*) AS n FROM conditions WHERE icd10_group NOT IN ('E11', 'I10') GROUP BY icd10_group",
    ),
    (
        Expect::keys(1),
        "SELECT sex, var_samp(value) AS vs, var_pop(value) AS vp, stddev_samp(value) AS ss, stddev_pop(value) AS sp \
         FROM observations WHERE name = 'hba1c' GROUP BY sex",
    ),
    (
        Expect::keys(1),
        "SELECT bin(age, 0, 10, 10) AS decade, count(DISTINCT patient_id) AS patients FROM patients GROUP BY decade",
    ),
    (
        Expect::keys(2),
        "SELECT bin_edges(age, 0, 18, 40, 65, 80, 120) AS band, sex, avg(bmi) AS bmi FROM patients GROUP BY band, sex",
    ),
    (Expect::keys(1), "SELECT sex, histogram(bmi, 10, 5, 8) AS h FROM patients GROUP BY sex"),
    (Expect::keys(0), "SELECT histogram_edges(value, 4, 5.7, 6.5, 8, 15) AS h FROM observations WHERE name = 'hba1c'"),
    (
        Expect::keys(1),
        "SELECT name, sum(value) AS s, avg(value) AS a FROM observations WHERE age BETWEEN 40 AND 60 GROUP BY name",
    ),
    (Expect::keys(1), "SELECT name, count(*) AS n FROM observations WHERE age NOT BETWEEN 18 AND 80 GROUP BY name"),
    (
        Expect::keys(1),
        "SELECT smoker, count(*) AS n, avg(bmi) AS bmi FROM patients WHERE smoker IS NOT NULL GROUP BY smoker",
    ),
    (Expect::keys(0), "SELECT count(*) AS smokers FROM patients WHERE smoker"),
    (Expect::keys(0), "SELECT count(*) AS n, avg(age) AS a FROM patients WHERE NOT (sex = 'female' OR age < 30)"),
    (
        Expect::keys(1),
        "SELECT icd10_group, count(*) AS n FROM conditions \
         WHERE onset_date >= DATE '2020-01-01' AND onset_date < '2023-06-30' GROUP BY icd10_group",
    ),
    (
        Expect::keys(1),
        "SELECT deceased, count(*) AS n, avg(age) AS a, var_pop(age) AS v FROM patients GROUP BY deceased",
    ),
    (
        Expect::keys(1),
        "SELECT birth_date, count(*) AS n FROM patients WHERE birth_date > '2024-06-01' GROUP BY birth_date",
    ),
    (Expect::keys(0), "SELECT count(*) AS n FROM patients WHERE 65 < age"),
    (Expect::keys(2), "SELECT loinc, unit, count(value) AS n, sum(value) AS s FROM observations GROUP BY loinc, unit"),
    (Expect::keys(0), "SELECT count(*) AS n FROM observations WHERE value > -1 AND age >= 0"),
    (Expect::keys(1), "SELECT p.sex, count(*) AS n FROM patients p WHERE p.age < 18 GROUP BY p.sex"),
    (
        Expect::keys(0),
        "SELECT count(*) AS n, sum(age) AS s, avg(bmi) AS b, var_samp(bmi) AS v FROM patients WHERE age > 200",
    ),
    (Expect::keys(1).empty(), "SELECT sex, count(*) AS n FROM patients WHERE age > 200 GROUP BY sex"),
    // Cross-products for regression (X'X): float*float, int*float, int*int.
    (
        Expect::keys(1),
        "SELECT sex, count(*) AS n, sum(bmi * bmi) AS bb, sum(age * bmi) AS ab, sum(age * age) AS aa \
         FROM patients WHERE bmi IS NOT NULL GROUP BY sex",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_answers_equal_pooled_answers() {
    let data = Synthetic::new(20261123, 0.12).await.unwrap();
    let network = data.network(open_policy(1), &[]).await.unwrap();
    for (expect, sql) in QUERIES {
        let (federated, response) = network.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        for s in &response.sites {
            assert_eq!(s.outcome(), verbund_proto::v1::SiteOutcome::Answered, "{sql}: {} {}", s.site, s.message);
        }
        assert!(!response.notes.iter().any(|n| n.contains("withheld at sites")), "{sql}: k = 1 withholds nothing");
        let pooled = data.pooled(sql).await.unwrap();
        assert_same(sql, &federated, &pooled, *expect);
    }
}

/// Large values with a small spread: a merge of sums of squares loses the variance to
/// cancellation; the (count, shift, mean, M2) merge keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variance_of_large_values_with_small_spread_is_exact() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let noise = Normal::new(0.0, 1.0).unwrap();
    let mut network = Network::start(&["a", "b", "c"]).await;
    let mut all = Vec::new();
    let mut per_site = Vec::new();
    for (site, n) in [("a", 4000), ("b", 2500), ("c", 3100)] {
        let values: Vec<f64> = (0..n).map(|_| 1e9 + noise.sample(&mut rng)).collect();
        let ids: Vec<String> = (0..n).map(|i| format!("{site}-{i}")).collect();
        let batch = RecordBatch::try_from_iter([
            ("patient_id", Arc::new(StringArray::from(ids)) as _),
            ("value", Arc::new(Float64Array::from(values.clone())) as _),
        ])
        .unwrap();
        all.push(batch.clone());
        per_site.push(values);
        let node = network.node(site, memory_catalogue("devices", vec![batch], &["value"]), open_policy(1));
        network.add_node(node).await;
    }
    let sql = "SELECT var_samp(value) AS v, stddev_pop(value) AS s, avg(value) AS m FROM devices";
    let (federated, _) = network.query(sql).await.unwrap();
    let get = |b: &RecordBatch, c: usize| b.column(c).as_any().downcast_ref::<Float64Array>().unwrap().value(0);

    // Exact reference: two passes over differences from the first value (exact in f64).
    let xs: Vec<f64> = per_site.concat();
    let n = xs.len() as f64;
    let ys: Vec<f64> = xs.iter().map(|x| x - xs[0]).collect();
    let mean_y = ys.iter().sum::<f64>() / n;
    let exact = ys.iter().map(|y| (y - mean_y).powi(2)).sum::<f64>() / (n - 1.0);
    let v = get(&federated, 0);
    assert!(((v - exact) / exact).abs() < 1e-9, "federated {v} vs exact {exact}");
    assert!((get(&federated, 2) - (xs[0] + mean_y)).abs() / 1e9 < 1e-12);

    // DataFusion on the pooled data agrees (its single-pass variance carries its own
    // rounding near 1e9, so to a looser tolerance here).
    let pooled_ctx = datafusion::prelude::SessionContext::new();
    let table = MemTable::try_new(all[0].schema(), vec![all]).unwrap();
    pooled_ctx.register_table("devices", Arc::new(table)).unwrap();
    let pooled = run_sql(&pooled_ctx, sql).await.unwrap();
    assert!(((get(&pooled, 0) - exact) / exact).abs() < 1e-6);

    // A merge of per-site (n, Σx, Σx²) gets it badly wrong.
    let (sn, s1, s2) = per_site.iter().fold((0.0, 0.0, 0.0), |(a, b, c), site| {
        (a + site.len() as f64, b + site.iter().sum::<f64>(), c + site.iter().map(|x| x * x).sum::<f64>())
    });
    let naive = (s2 - s1 * s1 / sn) / (sn - 1.0);
    assert!(((naive - exact) / exact).abs() > 1e-2, "sum of squares gave {naive}, exact {exact}");
}
