//! The privacy engine's network-level parts (issue 12): the coordinator's own floors and
//! quotas, and the budgets researchers see per site.

use crate::attacks::{SITES, ask, dp_policy, float, k_only_policy, network, network_with_rules, raw_policy};
use verbund_coordinator::config::NetworkRules;
use verbund_proto::v1 as pb;
use verbund_tests::PROJECT;

/// The coordinator's own rules on merged answers: a minimum number of sites per group (which
/// also keeps single-site figures from researchers) and a minimum total ("below threshold").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_rules_leave_out_small_totals_and_single_site_groups() {
    let sql = "SELECT ward, count(*) AS n FROM cohort GROUP BY ward";
    // Without network rules (k-only sites): wards A and B, with their exact totals.
    let (plain, _) = network_with_rules(k_only_policy(), NetworkRules::default()).await;
    let (batch, _) = ask(&plain, sql).await;
    assert_eq!(batch.num_rows(), 2);
    assert_eq!((float(&batch, 1, 0), float(&batch, 1, 1)), (Some(910.0), Some(900.0)));

    let rules = NetworkRules { min_total: 905, ..NetworkRules::default() };
    let (net, _) = network_with_rules(k_only_policy(), rules).await;
    let (batch, response) = ask(&net, sql).await;
    assert_eq!((float(&batch, 1, 0), float(&batch, 1, 1)), (Some(910.0), None), "900 is below the threshold of 905");
    assert!(response.notes.iter().any(|n| n.contains("1 number(s) below threshold")), "{:?}", response.notes);

    // One site alone never makes a group when two are required.
    let rules = NetworkRules { min_sites: 2, ..NetworkRules::default() };
    let (net, _) = network_with_rules(k_only_policy(), rules).await;
    let one_site = pb::ResearchQuery { sql: sql.into(), sites: vec![SITES[0].into()], ..Default::default() };
    let (batch, response) = net.query_with(one_site).await.unwrap();
    assert_eq!(batch.num_rows(), 0, "a single site's figures are not shown");
    assert!(response.notes.iter().any(|n| n.contains("2 group(s) left out")), "{:?}", response.notes);
    let (batch, _) = ask(&net, sql).await;
    assert_eq!(batch.num_rows(), 2, "groups from all three sites are shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn researchers_quotas_say_when_to_retry() {
    let rules = NetworkRules { queries_per_minute: 3, ..NetworkRules::default() };
    let (net, _) = network_with_rules(raw_policy(), rules).await;
    for i in 0..3 {
        ask(&net, &format!("SELECT count(*) AS n FROM cohort WHERE age > {i}")).await;
    }
    let over = net.query("SELECT count(*) AS n FROM cohort").await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted);
    assert!(
        over.message().contains("3 questions in the last minute") && over.message().contains("retry after"),
        "{over:?}"
    );
}

/// `verbund sites` shows what each project has left at each site, from the sites' heartbeats
/// and answers; the budget depends only on the questions asked, so showing it is safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_show_the_projects_remaining_budget() {
    let dp = network(dp_policy(10.0)).await;
    let before = dp.list_sites().await;
    for site in &before.sites {
        assert_eq!(site.profile, "dp");
        let budget = site.budgets.iter().find(|b| b.project == PROJECT).expect("the project's budget");
        assert_eq!((budget.epsilon_left, budget.epsilon, budget.period_days), (10.0, 10.0, 30));
    }
    ask(&dp, "SELECT count(*) AS n FROM cohort").await;
    ask(&dp, "SELECT count(*) AS n FROM cohort WHERE age > 30").await;
    let after = dp.list_sites().await;
    for site in &after.sites {
        let budget = site.budgets.iter().find(|b| b.project == PROJECT).unwrap();
        assert_eq!(budget.epsilon_left, 8.0, "{}: {budget:?}", site.site);
        assert!(budget.renews_at > 0);
    }
}

/// Noise depends on the request, the data and the key, never on how the data is split into
/// batches or partitions (which changes the order rows arrive in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_question_gets_the_same_noise_however_the_data_is_partitioned() {
    let sql =
        "SELECT ward, count(DISTINCT patient_id) AS n, avg(bmi) AS m, var_samp(bmi) AS v FROM cohort GROUP BY ward";
    let one_batch = network(dp_policy(10.0)).await;
    let (expected, _) = ask(&one_batch, sql).await;

    let mut split = verbund_tests::Network::start(&SITES).await;
    for (i, site) in SITES.iter().enumerate() {
        let whole = crate::attacks::cohort(i);
        // Four slices in reverse order: four partitions, rows in another order.
        let n = whole.num_rows();
        let slices: Vec<_> = (0..4).rev().map(|k| whole.slice(k * n / 4, (k + 1) * n / 4 - k * n / 4)).collect();
        let catalogue = verbund_tests::memory_catalogue("cohort", slices, &["ward", "age", "bmi"]);
        let node = split.node_with_noise_key(site, catalogue, dp_policy(10.0), 40 + i as u8);
        split.add_node(node).await;
    }
    let (partitioned, _) = ask(&split, sql).await;
    assert_eq!(partitioned, expected);
    assert!(float(&expected, 2, 0).is_some(), "{expected:?}");
}

/// The feasibility profile: noisy patient counts rounded to 10, "below threshold" under 20,
/// and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feasibility_sites_answer_rounded_patient_counts_only() {
    let policy = verbund_policies::Policy::from_toml(&format!(
        "{}\n[[project]]\nname = \"{PROJECT}\"\ndatasets = [\"*\"]\n",
        "profile = \"feasibility\"\nmin_cell_size = 1\n[dp]\nepsilon_per_query = 0.5\nround_to = 10\nsuppress_below = 20"
    ))
    .unwrap();
    let net = network(policy).await;
    let (batch, response) = ask(&net, "SELECT count(DISTINCT patient_id) AS n FROM cohort WHERE age > 30").await;
    let n = float(&batch, 0, 0).unwrap();
    assert_eq!(n % 10.0, 0.0, "each site's count is rounded to 10: {n}");
    assert!(response.sites.iter().all(|s| s.profile == "feasibility" && s.cost.unwrap().epsilon == 0.5));
    // A handful of patients per site: below threshold everywhere, so no number at all.
    let (batch, _) = ask(&net, "SELECT count(DISTINCT patient_id) AS n FROM cohort WHERE age >= 90").await;
    assert_eq!(float(&batch, 0, 0), None, "{batch:?}");
    let (_, response) = ask(&net, "SELECT avg(bmi) AS m FROM cohort").await;
    assert!(
        response.sites.iter().all(|s| s.message.contains("answers feasibility queries only")),
        "{:?}",
        response.sites
    );
}
