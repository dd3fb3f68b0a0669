//! Attacks through model fits (docs/regression-plan.md §3), on the attack suite's three-site
//! cohort with its planted targets (ages 90 and over, BMI 41.5 + i, all at site-a). Each is
//! shown succeeding where nothing defends (test-only-raw), and refused under k-only and dp.
//! The attack on IRLS weights (a crafted β) needs a rogue coordinator: it is in
//! node/tests/models.rs (`r7_refuses_a_beta_that_puts_the_weight_on_one_patient`).

use super::attacks::{dp_policy, k_only_policy, network, raw_policy, target_bmi};
use verbund_policies::Policy;
use verbund_proto::v1 as pb;

/// The intercept of `bmi ~ 1` over the patients aged `age` and older.
fn mean_bmi_model(age: u32) -> pb::ResearchModel {
    pb::ResearchModel {
        dataset: "cohort".into(),
        outcome: "bmi".into(),
        family: pb::ModelFamily::Gaussian as i32,
        condition: format!("age >= {age}"),
        project: verbund_tests::PROJECT.into(),
        ..Default::default()
    }
}

fn intercept(response: &pb::ModelResponse) -> f64 {
    let fit: serde_json::Value = serde_json::from_str(&response.fit_json).unwrap();
    fit["coefficients"][0]["estimate"].as_f64().unwrap()
}

/// Models over a handful of rows are their rows: two intercept-only fits over the 3 and the 2
/// oldest patients give the third-oldest's BMI by differencing (3·m₃ − 2·m₂). Rule R1 (at
/// least max(10, k) complete cases per site) refuses both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_a_handful_of_rows_gives_their_values_away_unless_refused() {
    let raw = network(raw_policy()).await;
    let three = raw.model(mean_bmi_model(97)).await.unwrap();
    let two = raw.model(mean_bmi_model(98)).await.unwrap();
    let recovered = 3.0 * intercept(&three) - 2.0 * intercept(&two);
    assert!((recovered - target_bmi(7)).abs() < 1e-9, "raw: the target's BMI is out: {recovered}");

    let defended: [(&str, Policy); 2] = [("k-only", k_only_policy()), ("dp", dp_policy(10.0))];
    for (profile, policy) in defended {
        let defended = network(policy).await;
        for age in [97, 98] {
            let error = defended.model(mean_bmi_model(age)).await.unwrap_err();
            assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{profile}: {error:?}");
            let message = error.message();
            assert!(message.contains("site-a (refused"), "{profile}: {message}");
            for i in 0..10 {
                assert!(!message.contains(&target_bmi(i).to_string()), "{profile}: {message}");
            }
        }
    }
}
