//! The coordinator's configuration file (TOML).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use verbund_audit::AuditSettings;
use verbund_security::settings::{self, ConfigError};
use verbund_security::tls::TlsFiles;
use verbund_security::token::TokenConfig;

fn default_node_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7070))
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7071))
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Where sites connect (mutual TLS).
    #[serde(default = "default_node_listen")]
    pub node_listen: SocketAddr,
    /// Where researchers connect (TLS; tokens identify them).
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// The sites of this network, as their certificates name them.
    pub sites: Vec<String>,
    /// Deadline of a query whose researcher named none (`default_timeout_seconds`).
    #[serde(default = "default_timeout", rename = "default_timeout_seconds", with = "settings::seconds")]
    pub default_timeout: Duration,
    /// Longest deadline a researcher may ask for (`max_timeout_seconds`).
    #[serde(default = "max_timeout", rename = "max_timeout_seconds", with = "settings::seconds")]
    pub max_timeout: Duration,
    /// How often to look for renewed TLS files (`tls_reload_seconds`; SIGHUP reloads at once).
    #[serde(default = "tls_reload", rename = "tls_reload_seconds", with = "settings::seconds")]
    pub tls_reload: Duration,
    /// Plain-HTTP address for `/metrics`, `/livez` and `/readyz`; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<SocketAddr>,
    /// On shutdown, how long running queries may take to finish (`drain_seconds`; new ones
    /// are refused).
    #[serde(default = "drain", rename = "drain_seconds", with = "settings::seconds")]
    pub drain: Duration,
    /// `ca`: the CA site certificates must chain to; `cert`/`key`: the coordinator's own.
    pub tls: TlsFiles,
    pub auth: TokenConfig,
    /// The coordinator's audit log (`[audit]`); by default in `audit/` beside this file.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Network-level disclosure rules and researchers' quotas (`[network]`), on top of each
    /// site's own checks (which they never replace).
    #[serde(default)]
    pub network: NetworkRules,
    /// How model fits run across the sites (`[regression]`).
    #[serde(default)]
    pub regression: ModelSettings,
}

/// What the network does when a site of a model fit refuses or is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnRefusal {
    /// Fit the model on the other sites, and say so.
    #[default]
    FitWithout,
    /// No fit unless every site asked takes part.
    Refuse,
}

/// `[regression]`: model fits across the sites (docs/regression-plan.md §1).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// A fit needs parts from at least this many sites (each site may ask for more).
    pub min_sites: u32,
    pub on_refusal: OnRefusal,
    /// Deadline of a whole fit whose researcher named none (`default_timeout_seconds`).
    #[serde(rename = "default_timeout_seconds", with = "settings::seconds")]
    pub default_timeout: Duration,
    /// Longest a round after the first may take (`round_timeout_seconds`); the first builds the
    /// sites' designs and may use the whole deadline.
    #[serde(rename = "round_timeout_seconds", with = "settings::seconds")]
    pub round_timeout: Duration,
    /// Restarts of a fit after a site was lost mid-fit (at most 3: sites answer attempts 0 to 3).
    pub max_restarts: u32,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            min_sites: 1,
            on_refusal: OnRefusal::FitWithout,
            default_timeout: Duration::from_secs(60),
            round_timeout: Duration::from_secs(10),
            max_restarts: 3,
        }
    }
}

/// What the coordinator checks on merged answers, and how much one researcher may ask.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkRules {
    /// A merged count (patients, rows, values, a histogram bin) below this is released as
    /// "below threshold", and so are means and variances over fewer values (the MII: 20).
    /// 0: off.
    pub min_total: u64,
    /// A group is shown only with numbers from at least this many sites; fewer, and it is
    /// left out (this also keeps single-site figures from researchers). 0 or 1: off.
    pub min_sites: u32,
    /// Questions one researcher may ask per minute and per week; 0: no limit.
    pub queries_per_minute: u32,
    pub queries_per_week: u32,
}

fn drain() -> Duration {
    Duration::from_secs(30)
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn max_timeout() -> Duration {
    Duration::from_secs(300)
}

fn tls_reload() -> Duration {
    Duration::from_secs(30)
}

impl CoordinatorConfig {
    /// A configuration with the defaults of every optional setting (listen addresses,
    /// deadlines, no ops endpoint).
    pub fn new(sites: Vec<String>, tls: TlsFiles, auth: TokenConfig) -> Self {
        Self {
            node_listen: default_node_listen(),
            api_listen: default_api_listen(),
            sites,
            default_timeout: default_timeout(),
            max_timeout: max_timeout(),
            network: NetworkRules::default(),
            regression: ModelSettings::default(),
            tls_reload: tls_reload(),
            ops_listen: None,
            drain: drain(),
            tls,
            auth,
            audit: AuditSettings::default(),
        }
    }

    /// Reads a configuration; relative paths are resolved against `base` (the directory of
    /// the file).
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: CoordinatorConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.validate()?;
        config.tls.resolve(base);
        config.auth.resolve(base);
        config.audit.resolve_paths(base);
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            what: "coordinator config",
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| ConfigError::In {
            what: "coordinator config",
            path: path.to_path_buf(),
            error: Box::new(e),
        })
    }

    /// The configuration as a file holds it (paths as they are here: relative ones are read
    /// against the directory of the file).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        self.validate()?;
        toml::to_string_pretty(self)
            .map_err(|e| ConfigError::Write { what: "coordinator config", message: e.to_string() })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(ConfigError::Invalid)
    }

    fn check(&self) -> Result<(), String> {
        if self.sites.is_empty() {
            return Err("sites lists no site: name the sites (as their certificates do) that may connect".into());
        }
        for (setting, duration) in [
            ("default_timeout_seconds", self.default_timeout),
            ("max_timeout_seconds", self.max_timeout),
            ("tls_reload_seconds", self.tls_reload),
            ("drain_seconds", self.drain),
            ("[regression] default_timeout_seconds", self.regression.default_timeout),
            ("[regression] round_timeout_seconds", self.regression.round_timeout),
        ] {
            if duration.is_zero() {
                return Err(format!("{setting} must be at least 1 second"));
            }
        }
        if self.regression.max_restarts > 3 {
            return Err("[regression] max_restarts is at most 3: sites answer attempts 0 to 3 of a fit".into());
        }
        self.auth.validate().map_err(|e| format!("[auth]: {e}"))?;
        self.audit.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
sites = ["uniklinik-nord", "klinikum-sued"]
default_timeout_seconds = 20

[tls]
ca = "pki/ca.pem"
cert = "pki/coordinator.pem"
key = "pki/coordinator.key"

[auth]
issuer = "https://idp.example.org"
audience = "verbund"
jwks_file = "jwks.json"
"#;

    #[test]
    fn parses_with_defaults() {
        let c = CoordinatorConfig::from_toml(GOOD, Path::new("/etc/verbund")).unwrap();
        assert_eq!(c.default_timeout, Duration::from_secs(20));
        assert_eq!(c.node_listen.port(), 7070);
        assert_eq!(c.tls.cert, Path::new("/etc/verbund/pki/coordinator.pem"));
        assert!(CoordinatorConfig::from_toml(&GOOD.replace("= 20", "= 0"), Path::new(".")).is_err());
        let e =
            CoordinatorConfig::from_toml(&GOOD.replace("\"uniklinik-nord\", \"klinikum-sued\"", ""), Path::new("."));
        assert!(matches!(e, Err(ConfigError::Invalid(m)) if m.contains("sites")));
        let e = CoordinatorConfig::from_toml(&GOOD.replace("= 20", "= 0"), Path::new(".")).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains("default_timeout_seconds must be at least 1"), "{e}");
        let e = CoordinatorConfig::from_toml("sites = 3", Path::new(".")).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax(_)), "{e:?}");
        let e = CoordinatorConfig::load(Path::new("/nonexistent/coordinator.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot read coordinator config /nonexistent/coordinator.toml"), "{e}");
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let mut c = CoordinatorConfig::from_toml(GOOD, Path::new("")).unwrap();
        c.ops_listen = Some("[::]:9090".parse().unwrap());
        let text = c.to_toml().unwrap();
        assert!(text.contains("default_timeout_seconds = 20\n") && text.contains("key = \"pki/coordinator.key\"\n"));
        assert_eq!(CoordinatorConfig::from_toml(&text, Path::new("")).unwrap(), c, "{text}");
    }
}
