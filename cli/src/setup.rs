//! Lays out a complete demo network in a directory: synthetic data per site, the network's
//! PKI, a development identity provider (signing key, JWKS, a researcher token), site
//! policies, and configuration files for the coordinator and every node.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Uri;
use verbund_audit::remote::AUDITOR_ROLE;
use verbund_coordinator::CoordinatorConfig;
use verbund_node::NodeConfig;
use verbund_node::config::{DatasetConfig, NodeTls};
use verbund_policies::{DatasetRule, Level, Policy, ProjectRule};
use verbund_security::files::{Overwrite, write_secret};
use verbund_security::pki::{NetworkCa, Validity};
use verbund_security::tls::TlsFiles;
use verbund_security::token::{DevIssuer, TokenConfig};
use verbund_synth::WrittenSite;

pub const DEMO_PROJECT: &str = "demo-study";
pub const DEV_ISSUER: &str = "https://idp.verbund.invalid/dev";
pub const AUDIENCE: &str = "verbund";

pub struct NetworkLayout {
    pub dir: PathBuf,
    pub sites: Vec<WrittenSite>,
    pub ca: PathBuf,
    pub coordinator_tls: TlsFiles,
    pub site_tls: Vec<TlsFiles>,
    pub auth: TokenConfig,
    pub token_file: PathBuf,
    /// A token with the role `auditor`, for reading audit logs (a data-protection officer's).
    pub auditor_token_file: PathBuf,
    pub policy_files: Vec<PathBuf>,
    /// Per site, its clinical datasets: the same population exported as FHIR and imported
    /// with `verbund import` (served as `fhir_<dataset>`).
    pub fhir: Vec<PathBuf>,
}

/// The demo sites serve their FHIR datasets under this prefix: the generated flat tables
/// keep the plain names. Cohorts find them by model (`fhir/patients`).
pub const FHIR_PREFIX: &str = "fhir_";

/// Writes data, PKI, identity provider, policies and the researcher token under `dir`, and
/// the same population as FHIR (fhir-export/<site>/, gzip NDJSON), imported into each site's
/// clinical datasets. A directory that holds a network already (its CA key) is refused: its
/// keys are not replaced.
pub async fn write_network(
    dir: &Path,
    seed: u64,
    scale: f64,
    format: verbund_synth::Format,
    coordinator_names: &[String],
) -> anyhow::Result<NetworkLayout> {
    let pki = dir.join("pki");
    if pki.join("ca.key").exists() {
        bail!(
            "{} holds a network already (its CA key {}); its keys are never replaced: \
             delete the directory to generate it anew, or choose another one",
            dir.display(),
            pki.join("ca.key").display()
        );
    }
    let sites = verbund_synth::write_all(&dir.join("data"), seed, scale, format)?;
    let population = verbund_synth::generate(seed, scale)?;
    let exports = verbund_synth::fhir::write_fhir(
        &dir.join("fhir-export"),
        &population,
        verbund_synth::fhir::FhirLayout::NdjsonGzip,
    )?;
    let mut fhir = Vec::new();
    for export in &exports {
        let out = dir.join("data").join(&export.site).join("fhir");
        let input = dir.join("fhir-export").join(&export.site);
        let summary = verbund_fhir::import(&verbund_fhir::ImportOptions::new(vec![input], out.clone()))
            .await
            .with_context(|| format!("importing the FHIR export of {}", export.site))?;
        if summary.issues > 0 {
            bail!("the generated FHIR of {} has {} issue(s): {summary}", export.site, summary.issues);
        }
        fhir.push(out);
    }
    let ca = NetworkCa::create("verbund demo", Validity::days(365))?;
    let (ca_path, _) = ca.write(&pki)?;
    let (cert, key) =
        ca.issue_coordinator(coordinator_names, Validity::days(90))?.write(&pki, "coordinator", Overwrite::Refuse)?;
    let coordinator_tls = TlsFiles { ca: ca_path.clone(), cert, key };
    let mut site_tls = Vec::new();
    let mut policy_files = Vec::new();
    let policy = demo_policy().to_toml()?;
    for site in &sites {
        let (cert, key) = ca.issue_site(&site.site, Validity::days(90))?.write(&pki, &site.site, Overwrite::Refuse)?;
        site_tls.push(TlsFiles { ca: ca_path.clone(), cert, key });
        let path = dir.join("data").join(&site.site).join("policy.toml");
        std::fs::write(&path, &policy).with_context(|| format!("cannot write {}", path.display()))?;
        policy_files.push(path);
        // Each site's own secret for differential-privacy noise, readable by its owner only.
        let privacy = dir.join("privacy");
        std::fs::create_dir_all(&privacy).with_context(|| format!("cannot create {}", privacy.display()))?;
        let key = privacy.join(format!("{}-noise.key", site.site));
        verbund_node::private::write_noise_key(&key).with_context(|| format!("cannot write {}", key.display()))?;
    }

    let auth_dir = dir.join("auth");
    std::fs::create_dir_all(&auth_dir).with_context(|| format!("cannot create {}", auth_dir.display()))?;
    let issuer = DevIssuer::generate("dev-1", DEV_ISSUER, AUDIENCE)?;
    write_secret(&auth_dir.join("dev-signing.key"), issuer.key_pem.as_bytes(), Overwrite::Refuse)?;
    let auth = issuer.write_jwks(&auth_dir.join("jwks.json"))?;
    let token = issuer.issue("demo-researcher", &[DEMO_PROJECT], &["researcher"], Duration::from_secs(12 * 3600));
    let token_file = auth_dir.join("researcher.token");
    write_secret(&token_file, token.as_bytes(), Overwrite::Refuse)?;
    let auditor = issuer.issue("demo-auditor", &[], &[AUDITOR_ROLE], Duration::from_secs(12 * 3600));
    let auditor_token_file = auth_dir.join("auditor.token");
    write_secret(&auditor_token_file, auditor.as_bytes(), Overwrite::Refuse)?;
    Ok(NetworkLayout {
        dir: dir.to_path_buf(),
        sites,
        ca: ca_path,
        coordinator_tls,
        site_tls,
        auth,
        token_file,
        auditor_token_file,
        policy_files,
        fhir,
    })
}

/// The demo sites' policy: the research default (differential privacy with a budget per
/// project, minimum cell size 5), the demo project may ask about everything, with clipping
/// bounds and public levels declared for the generated datasets.
pub fn demo_policy() -> Policy {
    // The demo hospitals let auditors read their audit logs through the coordinator.
    let mut policy = Policy { remote_audit_reads: true, ..Policy::default() };
    policy.projects.push(ProjectRule { roles: vec!["researcher".into()], ..ProjectRule::everything(DEMO_PROJECT) });
    policy.datasets = demo_dataset_rules();
    policy
}

/// Bounds and levels of the generated data, from the generator's own definitions.
fn demo_dataset_rules() -> Vec<DatasetRule> {
    use verbund_synth::model::{CONDITIONS, OBSERVATIONS, SITES};
    let text = |values: &mut dyn Iterator<Item = &str>| {
        let mut v: Vec<String> = values.map(str::to_string).collect();
        v.sort();
        v.dedup();
        v.into_iter().map(Level::Text).collect::<Vec<_>>()
    };
    let sexes = text(&mut ["female", "male", "diverse"].into_iter());
    let yes_no = vec![Level::Bool(false), Level::Bool(true)];
    let age = ("age".to_string(), [0.0, 110.0]);
    let rule = |name: &str, bounds: Vec<(String, [f64; 2])>, levels: Vec<(&str, Vec<Level>)>| DatasetRule {
        name: name.into(),
        bounds: bounds.into_iter().collect(),
        levels: levels.into_iter().map(|(c, l)| (c.to_string(), l)).collect(),
        ..DatasetRule::default()
    };
    let mut patients = rule(
        "patients",
        vec![age.clone(), ("bmi".into(), [10.0, 60.0])],
        vec![
            ("sex", sexes.clone()),
            ("region", text(&mut SITES.iter().flat_map(|s| s.regions.iter().map(|(r, _)| *r)))),
            ("smoker", yes_no.clone()),
            ("deceased", yes_no),
        ],
    );
    patients.one_row_per_patient = true;
    let conditions = rule(
        "conditions",
        vec![age.clone()],
        vec![
            ("sex", sexes.clone()),
            ("icd10", text(&mut CONDITIONS.iter().map(|c| c.icd10))),
            ("icd10_group", text(&mut CONDITIONS.iter().map(|c| &c.icd10[..3]))),
            ("snomed", text(&mut CONDITIONS.iter().map(|c| c.snomed))),
            ("description", text(&mut CONDITIONS.iter().map(|c| c.description))),
        ],
    );
    let observations = rule(
        "observations",
        vec![age, ("value".into(), [0.0, 400.0])],
        vec![
            ("sex", sexes),
            ("name", text(&mut OBSERVATIONS.iter().map(|o| o.name))),
            ("loinc", text(&mut OBSERVATIONS.iter().map(|o| o.loinc))),
            ("unit", text(&mut OBSERVATIONS.iter().map(|o| o.unit))),
        ],
    );
    // The imported FHIR observations: lab values and vital signs share one value column.
    let fhir_observations = rule(&format!("{FHIR_PREFIX}observations"), vec![("value".into(), [0.0, 400.0])], vec![]);
    // FHIR administrative-gender codes, for grouping by the patient's gender.
    let genders = text(&mut ["female", "male", "other", "unknown"].into_iter());
    let fhir_patients = rule(&format!("{FHIR_PREFIX}patients"), vec![], vec![("gender", genders)]);
    vec![patients, conditions, observations, fhir_observations, fhir_patients]
}

impl NetworkLayout {
    /// A path as written into a configuration file that lives in the layout's directory:
    /// relative to it, so the directory can move as a whole.
    fn path(&self, p: &Path) -> PathBuf {
        p.strip_prefix(&self.dir).unwrap_or(p).to_path_buf()
    }

    fn tls(&self, files: &TlsFiles) -> TlsFiles {
        TlsFiles { ca: self.path(&files.ca), cert: self.path(&files.cert), key: self.path(&files.key) }
    }

    /// The token settings, with the JWKS file relative to the layout's directory.
    fn auth(&self) -> TokenConfig {
        let mut auth = self.auth.clone();
        auth.jwks_file = auth.jwks_file.as_deref().map(|p| self.path(p));
        auth
    }
}

/// A node configuration for a generated site, to be written into the layout's directory
/// (with [`NodeConfig::to_toml`]).
pub fn node_config(layout: &NetworkLayout, index: usize, coordinator: &Uri) -> NodeConfig {
    let site = &layout.sites[index];
    let files = layout.tls(&layout.site_tls[index]);
    let tls = NodeTls { ca: files.ca, cert: files.cert, key: files.key, coordinator_name: None };
    let mut config = NodeConfig::new(&site.site, coordinator.clone(), tls, layout.auth());
    config.policy = Some(layout.path(&layout.policy_files[index]));
    // Every service its own log and key: the configs share one directory.
    config.audit.dir = PathBuf::from("audit").join(&site.site);
    config.audit.key = PathBuf::from("audit").join(format!("{}-signing.key", site.site));
    config.noise_key = PathBuf::from("privacy").join(format!("{}-noise.key", site.site));
    config.ledger = PathBuf::from("privacy").join(format!("{}-budget.redb", site.site));
    config.datasets = site
        .tables
        .iter()
        .map(|t| DatasetConfig {
            name: t.name.clone(),
            path: layout.path(&t.path),
            format: None,
            patient_key: t.patient_key.clone(),
            columns: t.columns.clone(),
            model: None,
        })
        .collect();
    let fhir = &layout.fhir[index];
    config.datasets.extend(verbund_fhir::DATASETS.iter().zip(verbund_fhir::COLUMNS.iter()).map(|(name, columns)| {
        DatasetConfig {
            name: format!("{FHIR_PREFIX}{name}"),
            path: layout.path(&fhir.join(name).join("current")),
            format: Some(verbund_node::config::FileFormat::Parquet),
            patient_key: "patient_id".into(),
            columns: columns.iter().map(|(c, _)| c.to_string()).collect(),
            model: Some(format!("fhir/{name}")),
        }
    }));
    config
}

/// The coordinator's configuration for a generated network, to be written into its directory
/// (with [`CoordinatorConfig::to_toml`]).
pub fn coordinator_config(
    layout: &NetworkLayout,
    node_listen: SocketAddr,
    api_listen: SocketAddr,
) -> CoordinatorConfig {
    let sites = layout.sites.iter().map(|s| s.site.clone()).collect();
    let mut config = CoordinatorConfig::new(sites, layout.tls(&layout.coordinator_tls), layout.auth());
    config.node_listen = node_listen;
    config.api_listen = api_listen;
    config.audit.dir = PathBuf::from("audit").join("coordinator");
    config.audit.key = PathBuf::from("audit").join("coordinator-signing.key");
    // Beside the audit log: the one writable place of every deployment form (compose mounts
    // a volume at audit/).
    config.queries.store = PathBuf::from("audit").join("coordinator-queries").join("queries.redb");
    config
}

/// Writes a configuration file.
pub fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generated_configs_are_valid_and_read_back_as_written() {
        verbund_security::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let layout = write_network(dir.path(), 1, 0.01, verbund_synth::Format::Csv, &names).await.unwrap();
        let coordinator: Uri = "https://localhost:7070".parse().unwrap();
        for i in 0..layout.sites.len() {
            let mut written = node_config(&layout, i, &coordinator);
            if i == 0 {
                written.ops_listen = Some("[::]:9090".parse().unwrap());
            }
            let text = written.to_toml().unwrap();
            assert!(!text.contains(&dir.path().display().to_string()), "paths are relative:\n{text}");
            assert_eq!(NodeConfig::from_toml(&text).unwrap(), written, "{text}");

            let path = dir.path().join(format!("node-{i}.toml"));
            write_config(&path, &text).unwrap();
            let config = NodeConfig::load(&path).unwrap();
            let mut expected = written.clone();
            expected.resolve_paths(dir.path());
            assert_eq!(config, expected);
            assert_eq!(config.site, layout.sites[i].site);
            assert!(config.datasets.iter().all(|d| d.path.exists()));
            assert!(config.tls.cert.exists() && config.auth.jwks_file.as_ref().is_some_and(|p| p.exists()));
            let policy = std::fs::read_to_string(config.policy.as_ref().unwrap()).unwrap();
            assert_eq!(Policy::from_toml(&policy).unwrap(), demo_policy());
        }
        let first = NodeConfig::load(&dir.path().join("node-0.toml")).unwrap();
        assert_eq!(first.ops_listen, Some("[::]:9090".parse().unwrap()));

        let mut written =
            coordinator_config(&layout, "127.0.0.1:7070".parse().unwrap(), "127.0.0.1:7071".parse().unwrap());
        written.ops_listen = Some("0.0.0.0:9090".parse().unwrap());
        let text = written.to_toml().unwrap();
        assert!(!text.contains(&dir.path().display().to_string()), "paths are relative:\n{text}");
        assert_eq!(CoordinatorConfig::from_toml(&text, Path::new("")).unwrap(), written, "{text}");
        let path = dir.path().join("coordinator.toml");
        write_config(&path, &text).unwrap();
        let config = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(config, CoordinatorConfig::from_toml(&text, dir.path()).unwrap());
        assert_eq!(config.sites.len(), 3);
        assert_eq!(config.ops_listen, Some("0.0.0.0:9090".parse().unwrap()));
        assert!(config.tls.key.exists());

        // The directory holds a network now: generating into it again replaces no key.
        let e = write_network(dir.path(), 2, 0.01, verbund_synth::Format::Csv, &names).await.err().unwrap().to_string();
        assert!(e.contains("holds a network already"), "{e}");
    }
}
