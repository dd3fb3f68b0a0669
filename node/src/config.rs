//! The node's configuration file (TOML). Relative paths are resolved against the directory
//! of the configuration file, so a site's config and data can move together.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This site's name, as researchers see it in results.
    pub site: String,
    /// The coordinator's node-link address, e.g. `http://coordinator.example.org:7070`.
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
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<DatasetConfig>,
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
        for d in &mut self.datasets {
            d.path = resolve(&d.path);
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.site.trim().is_empty() {
            return Err(Error::Config("site must not be empty".into()));
        }
        if !self.coordinator.starts_with("http://") && !self.coordinator.starts_with("https://") {
            return Err(Error::Config(format!(
                "coordinator must be an http:// or https:// address, got '{}'",
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
        if self.heartbeat_seconds == 0 {
            return Err(Error::Config("heartbeat_seconds must be at least 1".into()));
        }
        Ok(())
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
site = "uniklinik-nord"
coordinator = "http://127.0.0.1:7070"
policy = "policy.toml"

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
        assert_eq!(c.datasets[0].format().unwrap(), FileFormat::Parquet);
    }

    #[test]
    fn mistakes_are_explained() {
        let e = NodeConfig::from_toml(&GOOD.replace("http://127", "127")).unwrap_err().to_string();
        assert!(e.contains("http://"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("patients.parquet", "patients.xlsx")).unwrap_err().to_string();
        assert!(e.contains("format"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("patient_key", "patientkey")).unwrap_err().to_string();
        assert!(e.contains("patientkey"), "{e}");
    }
}
