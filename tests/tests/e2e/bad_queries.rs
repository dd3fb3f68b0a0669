//! Each kind of bad query gets a clear error that says what was wrong.

use verbund_proto::v1 as pb;
use verbund_tests::{Synthetic, open_policy, status};

/// (SQL, words the error must contain)
const BAD: &[(&str, &[&str])] = &[
    ("SELECT patient_id, age FROM patients WHERE age > 90", &["row-level"]),
    ("SELECT * FROM patients", &["row-level"]),
    (
        "SELECT p.sex, count(*) FROM patients p JOIN conditions c ON p.patient_id = c.patient_id GROUP BY p.sex",
        &["joins"],
    ),
    ("SELECT count(*) FROM (SELECT * FROM patients WHERE age > 3) t", &["subqueries"]),
    ("SELECT count(*) FROM patients WHERE age > (SELECT avg(age) FROM patients)", &["subqueries"]),
    ("SELECT count(*) FROM patients WHERE agee > 3", &["agee"]),
    ("SELECT count(*) FROM patient", &["unknown dataset 'patient'", "patients"]),
    ("SELECT count(*) FROM patients WHERE age = 'old'", &["string", "integer"]),
    ("SELECT sum(sex) FROM patients", &["sum() needs a numeric column", "'sex' is a string column"]),
    ("SELECT sum(age * 2) FROM patients", &["sum(a * b)", "column"]),
    ("SELECT sum(age + bmi) FROM patients", &["sum()", "column"]),
    ("SELECT count(DISTINCT region) FROM patients", &["distinct", "patient key"]),
    ("SELECT sex, count(*) FROM patients GROUP BY patient_id, sex", &["patient key"]),
    ("SELECT sex, count(*) FROM patients GROUP BY sex ORDER BY sex", &["ORDER BY"]),
    ("SELECT sex, count(*) FROM patients GROUP BY sex HAVING count(*) > 3", &["HAVING"]),
    ("SELECT count(*) * 2 FROM patients", &["computes on aggregates"]),
    ("SELECT count(*) FROM conditions WHERE icd10 LIKE 'E11%'", &["LIKE"]),
    ("SELECT count(*) FROM patients WHERE upper(sex) = 'MALE'", &["functions", "upper"]),
    ("SELECT my_udf(age) FROM patients", &["my_udf"]),
    ("SELECT median(age) FROM patients", &["median", "not supported"]),
    ("SELECT bin(age, 0, -1, 5) AS b, count(*) FROM patients GROUP BY b", &["width"]),
    ("SELECT histogram_edges(age, 5, 1) FROM patients", &["increasing"]),
    ("DROP TABLE patients", &["only SELECT"]),
    ("SELEC count(*) FROM patients", &["cannot plan"]),
    ("SELECT count(*) FROM patients LIMIT 1", &["LIMIT"]),
    ("SELECT DISTINCT sex FROM patients", &["not supported"]),
    ("SELECT count(*) FROM patients WHERE birth_date > '2020-31-01'", &["YYYY-MM-DD"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_clear_errors() {
    let data = Synthetic::new(5, 0.02).await.unwrap();
    let network = data.network(open_policy(5), &[]).await.unwrap();
    for (sql, words) in BAD {
        let status = network.query(sql).await.expect_err(sql);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{sql}: {}", status.message());
        for w in *words {
            assert!(
                status.message().to_lowercase().contains(&w.to_lowercase()),
                "{sql}: error '{}' should mention '{w}'",
                status.message()
            );
        }
    }

    let unknown_site = pb::ResearchQuery {
        sql: "SELECT count(*) FROM patients".into(),
        sites: vec!["nowhere".into()],
        ..Default::default()
    };
    let status = network.query_with(unknown_site).await.expect_err("unknown site");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("nowhere") && status.message().contains("uniklinik-nord"));

    let bad_id =
        pb::ResearchQuery { sql: "SELECT count(*) FROM patients".into(), query_id: "a b".into(), ..Default::default() };
    assert_eq!(network.query_with(bad_id).await.expect_err("bad id").code(), tonic::Code::InvalidArgument);
}

/// A node refuses on its own what its data cannot answer, and the others still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_missing_a_column_refuses_and_the_rest_answer() {
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use std::sync::Arc;
    let data = Synthetic::new(5, 0.02).await.unwrap();
    let mut network = data.network(open_policy(1), &["practice"]).await.unwrap();
    // A fourth site whose patients table has no bmi column.
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(vec!["x1", "x2"])) as _),
        ("sex", Arc::new(StringArray::from(vec!["female", "male"])) as _),
    ])
    .unwrap();
    let node =
        network.node("practice", verbund_tests::memory_catalogue("patients", vec![batch], &["sex"]), open_policy(1));
    network.add_node(node).await;

    let (_, response) = network.query("SELECT avg(bmi) AS b FROM patients").await.unwrap();
    let practice = status(&response, "practice");
    assert_eq!(practice.outcome(), pb::SiteOutcome::Refused);
    assert!(practice.message.contains("unknown column 'bmi'"), "{}", practice.message);
    assert_eq!(status(&response, "klinikum-sued").outcome(), pb::SiteOutcome::Answered);
}
