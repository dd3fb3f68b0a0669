//! Lays out a complete demo network in a directory: synthetic data per site, the network's
//! PKI, a development identity provider (signing key, JWKS, a researcher token), site
//! policies, and configuration files for the coordinator and every node.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;
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
    pub policy_files: Vec<PathBuf>,
}

/// Writes data, PKI, identity provider, policies and the researcher token under `dir`.
pub fn write_network(
    dir: &Path,
    seed: u64,
    scale: f64,
    format: verbund_synth::Format,
    coordinator_names: &[String],
) -> anyhow::Result<NetworkLayout> {
    let sites = verbund_synth::write_all(&dir.join("data"), seed, scale, format)?;
    let pki = dir.join("pki");
    let ca = NetworkCa::create("verbund demo", Validity::days(365))?;
    let (ca_path, _) = ca.write(&pki)?;
    let (cert, key) = ca.issue_coordinator(coordinator_names, Validity::days(90))?.write(&pki, "coordinator")?;
    let coordinator_tls = TlsFiles { ca: ca_path.clone(), cert, key };
    let mut site_tls = Vec::new();
    let mut policy_files = Vec::new();
    for site in &sites {
        let (cert, key) = ca.issue_site(&site.site, Validity::days(90))?.write(&pki, &site.site)?;
        site_tls.push(TlsFiles { ca: ca_path.clone(), cert, key });
        let policy = dir.join("data").join(&site.site).join("policy.toml");
        std::fs::write(&policy, demo_policy()).with_context(|| format!("cannot write {}", policy.display()))?;
        policy_files.push(policy);
    }

    let auth_dir = dir.join("auth");
    std::fs::create_dir_all(&auth_dir)?;
    let issuer = DevIssuer::generate("dev-1", DEV_ISSUER, AUDIENCE)?;
    let key_path = auth_dir.join("dev-signing.key");
    std::fs::write(&key_path, &issuer.key_pem)?;
    restrict(&key_path)?;
    let auth = issuer.write_jwks(&auth_dir.join("jwks.json"))?;
    let token = issuer.issue("demo-researcher", &[DEMO_PROJECT], &["researcher"], Duration::from_secs(12 * 3600));
    let token_file = auth_dir.join("researcher.token");
    std::fs::write(&token_file, &token)?;
    restrict(&token_file)?;
    Ok(NetworkLayout {
        dir: dir.to_path_buf(),
        sites,
        ca: ca_path,
        coordinator_tls,
        site_tls,
        auth,
        token_file,
        policy_files,
    })
}

fn restrict(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let _ = path;
    Ok(())
}

pub fn demo_policy() -> String {
    format!(
        "# Site policy for the demo network.\nmin_cell_size = 5\n\n[[project]]\nname = \"{DEMO_PROJECT}\"\nroles = [\"researcher\"]\ndatasets = [\"*\"]\n"
    )
}

fn quote(p: &Path) -> String {
    format!("\"{}\"", p.display().to_string().replace('\\', "\\\\").replace('"', "\\\""))
}

impl NetworkLayout {
    /// A path as written into a configuration file that lives in the layout's directory:
    /// relative to it, so the directory can move as a whole.
    fn path(&self, p: &Path) -> String {
        quote(p.strip_prefix(&self.dir).unwrap_or(p))
    }
}

/// A node configuration for a generated site, to be written into the layout's directory.
pub fn node_config_toml(layout: &NetworkLayout, index: usize, coordinator: &str) -> String {
    let site = &layout.sites[index];
    let tls = &layout.site_tls[index];
    let mut out = format!(
        "# verbund node configuration for {name}\nsite = \"{name}\"\ncoordinator = \"{coordinator}\"\npolicy = {policy}\n\n\
         [tls]\nca = {ca}\ncert = {cert}\nkey = {key}\n\n[auth]\nissuer = \"{iss}\"\naudience = \"{aud}\"\njwks_file = {jwks}\n",
        name = site.site,
        policy = layout.path(&layout.policy_files[index]),
        ca = layout.path(&tls.ca),
        cert = layout.path(&tls.cert),
        key = layout.path(&tls.key),
        iss = layout.auth.issuer,
        aud = layout.auth.audience,
        jwks = layout.path(layout.auth.jwks_file.as_deref().unwrap_or(Path::new("jwks.json"))),
    );
    for t in &site.tables {
        let columns: Vec<String> = t.columns.iter().map(|c| format!("\"{c}\"")).collect();
        out.push_str(&format!(
            "\n[[dataset]]\nname = \"{}\"\npath = {}\npatient_key = \"{}\"\ncolumns = [{}]\n",
            t.name,
            layout.path(&t.path),
            t.patient_key,
            columns.join(", ")
        ));
    }
    out
}

/// The coordinator's configuration for a generated network, to be written into its directory.
pub fn coordinator_config_toml(layout: &NetworkLayout, node_listen: &str, api_listen: &str) -> String {
    let sites: Vec<String> = layout.sites.iter().map(|s| format!("\"{}\"", s.site)).collect();
    format!(
        "# verbund coordinator configuration\nnode_listen = \"{node_listen}\"\napi_listen = \"{api_listen}\"\nsites = [{sites}]\n\n\
         [tls]\nca = {ca}\ncert = {cert}\nkey = {key}\n\n[auth]\nissuer = \"{iss}\"\naudience = \"{aud}\"\njwks_file = {jwks}\n",
        sites = sites.join(", "),
        ca = layout.path(&layout.coordinator_tls.ca),
        cert = layout.path(&layout.coordinator_tls.cert),
        key = layout.path(&layout.coordinator_tls.key),
        iss = layout.auth.issuer,
        aud = layout.auth.audience,
        jwks = layout.path(layout.auth.jwks_file.as_deref().unwrap_or(Path::new("jwks.json"))),
    )
}

/// Adds `key = "value"` to a generated configuration's top-level keys (before its first table).
pub fn with_top_level_key(toml: &str, key: &str, value: &str) -> String {
    let line = format!("{key} = \"{}\"\n", value.replace('\\', "\\\\").replace('"', "\\\""));
    match toml.find("\n[") {
        Some(i) => format!("{}{line}{}", &toml[..=i], &toml[i + 1..]),
        None => format!("{toml}{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verbund_node::NodeConfig;

    #[test]
    fn generated_configs_are_valid() {
        verbund_security::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let layout = write_network(dir.path(), 1, 0.01, verbund_synth::Format::Csv, &names).unwrap();
        for i in 0..layout.sites.len() {
            let path = dir.path().join(format!("node-{i}.toml"));
            assert!(
                !node_config_toml(&layout, i, "https://localhost:7070").contains(&dir.path().display().to_string())
            );
            std::fs::write(&path, node_config_toml(&layout, i, "https://localhost:7070")).unwrap();
            let config = NodeConfig::load(&path).unwrap();
            assert_eq!(config.site, layout.sites[i].site);
            assert!(config.datasets.iter().all(|d| d.path.exists()));
            assert!(config.tls.cert.exists() && config.auth.jwks_file.as_ref().is_some_and(|p| p.exists()));
        }
        let path = dir.path().join("coordinator.toml");
        let text = coordinator_config_toml(&layout, "127.0.0.1:7070", "127.0.0.1:7071");
        std::fs::write(&path, with_top_level_key(&text, "ops_listen", "0.0.0.0:9090")).unwrap();
        let config = verbund_coordinator::CoordinatorConfig::load(&path).unwrap();
        assert_eq!(config.sites.len(), 3);
        assert_eq!(config.ops_listen, Some("0.0.0.0:9090".parse().unwrap()));
        let text =
            with_top_level_key(&node_config_toml(&layout, 0, "https://localhost:7070"), "ops_listen", "[::]:9090");
        std::fs::write(dir.path().join("node-ops.toml"), text).unwrap();
        let config = NodeConfig::load(&dir.path().join("node-ops.toml")).unwrap();
        assert_eq!(config.ops_listen, Some("[::]:9090".parse().unwrap()));
    }
}
