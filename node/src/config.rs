//! The node's configuration file (TOML). Relative paths are resolved against the directory
//! of the configuration file, so a site's config and data can move together.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use verbund_security::tls::TlsFiles;
use verbund_security::token::TokenConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This site's name, as researchers see it in results.
    pub site: String,
    /// The coordinator's node-link address, e.g. `https://coordinator.example.org:7070`.
    pub coordinator: String,
    /// Outbound HTTP proxy (HTTP CONNECT), e.g. `http://proxy.hospital.local:3128`.
    #[serde(default)]
    pub proxy: Option<String>,
    /// The site policy file; the built-in defaults (minimum cell size 5) when absent.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Seconds between heartbeats on the link.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u64,
    /// Seconds between checks whether the TLS files changed (a renewed certificate is then
    /// used at once).
    #[serde(default = "default_reload")]
    pub tls_reload_seconds: u64,
    /// Mutual TLS with the coordinator.
    pub tls: NodeTls,
    /// How researchers' tokens are verified here.
    pub auth: TokenConfig,
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<DatasetConfig>,
    /// Plain-HTTP address for `/metrics`, `/livez` and `/readyz`; none when absent.
    #[serde(default)]
    pub ops_listen: Option<std::net::SocketAddr>,
    /// On shutdown, how long running queries may take to finish before they are stopped.
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
}

fn default_drain() -> u64 {
    30
}

fn default_reload() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTls {
    /// The network CA that the coordinator's certificate must chain to.
    pub ca: PathBuf,
    /// This site's certificate (it names the site).
    pub cert: PathBuf,
    /// This site's private key.
    pub key: PathBuf,
    /// The name the coordinator's certificate must carry; the host of `coordinator` by default.
    #[serde(default)]
    pub coordinator_name: Option<String>,
}

impl NodeTls {
    pub fn files(&self) -> TlsFiles {
        TlsFiles { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() }
    }
}

fn default_heartbeat() -> u64 {
    15
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Parquet,
    Csv,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Name researchers use in FROM.
    pub name: String,
    /// A Parquet or CSV file (or a directory of them).
    pub path: PathBuf,
    /// Taken from the file extension when absent.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// The column identifying a patient.
    pub patient_key: String,
    /// The columns researchers may use. Nothing else of the file is visible.
    pub columns: Vec<String>,
}

impl DatasetConfig {
    pub fn format(&self) -> Result<FileFormat> {
        if let Some(f) = &self.format {
            return Ok(f.clone());
        }
        match self.path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("parquet") => Ok(FileFormat::Parquet),
            Some("csv") => Ok(FileFormat::Csv),
            _ => Err(Error::Config(format!(
                "dataset '{}': cannot tell the format of {}; set format = \"parquet\" or \"csv\"",
                self.name,
                self.path.display()
            ))),
        }
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read node config {}: {e}", path.display())))?;
        let mut config =
            Self::from_toml(&text).map_err(|e| Error::Config(format!("node config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &PathBuf| if p.is_relative() { base.join(p) } else { p.clone() };
        self.policy = self.policy.as_ref().map(resolve);
        self.tls.ca = resolve(&self.tls.ca);
        self.tls.cert = resolve(&self.tls.cert);
        self.tls.key = resolve(&self.tls.key);
        self.auth.resolve(base);
        for d in &mut self.datasets {
            d.path = resolve(&d.path);
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.site.trim().is_empty() {
            return Err(Error::Config("site must not be empty".into()));
        }
        if !self.coordinator.starts_with("https://") {
            return Err(Error::Config(format!(
                "coordinator must be an https:// address (the link is always mutual TLS), got '{}'",
                self.coordinator
            )));
        }
        if self.datasets.is_empty() {
            return Err(Error::Config("no [[dataset]] declared: a node without data has nothing to answer".into()));
        }
        let mut names = std::collections::HashSet::new();
        for d in &self.datasets {
            if !names.insert(&d.name) {
                return Err(Error::Config(format!("dataset '{}' is declared twice", d.name)));
            }
            if d.columns.is_empty() {
                return Err(Error::Config(format!("dataset '{}' exposes no columns", d.name)));
            }
            d.format()?;
        }
        if self.heartbeat_seconds == 0 || self.tls_reload_seconds == 0 {
            return Err(Error::Config("heartbeat_seconds and tls_reload_seconds must be at least 1".into()));
        }
        Ok(())
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds)
    }

    /// The name the coordinator's certificate must carry.
    pub fn coordinator_name(&self) -> Result<String> {
        if let Some(name) = &self.tls.coordinator_name {
            return Ok(name.clone());
        }
        let uri: http::Uri =
            self.coordinator.parse().map_err(|e| Error::Config(format!("coordinator address: {e}")))?;
        uri.host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(|| Error::Config("the coordinator address has no host".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
site = "uniklinik-nord"
coordinator = "https://127.0.0.1:7070"
policy = "policy.toml"

[tls]
ca = "pki/ca.pem"
cert = "pki/uniklinik-nord.pem"
key = "pki/uniklinik-nord.key"

[auth]
issuer = "https://idp.example.org"
audience = "verbund"
jwks_file = "jwks.json"

[[dataset]]
name = "patients"
path = "data/patients.parquet"
patient_key = "patient_id"
columns = ["patient_id", "sex", "age"]
"#;

    #[test]
    fn parses_and_resolves_relative_paths() {
        let mut c = NodeConfig::from_toml(GOOD).unwrap();
        c.resolve_paths(Path::new("/etc/verbund"));
        assert_eq!(c.datasets[0].path, PathBuf::from("/etc/verbund/data/patients.parquet"));
        assert_eq!(c.policy, Some(PathBuf::from("/etc/verbund/policy.toml")));
        assert_eq!(c.tls.key, PathBuf::from("/etc/verbund/pki/uniklinik-nord.key"));
        assert_eq!(c.auth.jwks_file, Some(PathBuf::from("/etc/verbund/jwks.json")));
        assert_eq!(c.coordinator_name().unwrap(), "127.0.0.1");
        assert_eq!(c.datasets[0].format().unwrap(), FileFormat::Parquet);
    }

    #[test]
    fn mistakes_are_explained() {
        let e = NodeConfig::from_toml(&GOOD.replace("https://127", "http://127")).unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("[auth]", "[authx]")).unwrap_err().to_string();
        assert!(e.contains("auth"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("patients.parquet", "patients.xlsx")).unwrap_err().to_string();
        assert!(e.contains("format"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("patient_key", "patientkey")).unwrap_err().to_string();
        assert!(e.contains("patientkey"), "{e}");
    }
}
