//! The coordinator's configuration file (TOML).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Where queries and their results are kept for researchers to fetch later (`[queries]`).
    #[serde(default)]
    pub queries: QuerySettings,
}

/// `[queries]`: the store of researchers' queries and results (docs/queries.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuerySettings {
    /// The store file (redb, 0600; its directory 0700), by default `queries/queries.redb`
    /// beside this file. It holds the SQL and the merged results: aggregates only.
    pub store: PathBuf,
    /// How long a finished query's result is kept (`keep_hours`), then deleted.
    #[serde(rename = "keep_hours", with = "hours")]
    pub keep: Duration,
    /// Members of a project may read (not cancel) each other's queries of that project.
    pub share_with_project: bool,
    /// Queries (and fits) running at once over the whole network; more wait as queued.
    pub max_running: u32,
    /// Queries one researcher may have stored; beyond, submitting is refused until older
    /// results expire.
    pub max_stored_per_researcher: u32,
    /// How often expired results are deleted (`sweep_seconds`).
    #[serde(rename = "sweep_seconds", with = "settings::seconds")]
    pub sweep: Duration,
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            store: PathBuf::from("queries/queries.redb"),
            keep: Duration::from_secs(168 * 3600),
            share_with_project: false,
            max_running: 32,
            max_stored_per_researcher: 500,
            sweep: Duration::from_secs(60),
        }
    }
}

impl QuerySettings {
    /// The defaults, with the store in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self { store: dir.join("queries.redb"), ..Self::default() }
    }
}

/// Whole hours in the file; tests may set any duration in code.
mod hours {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs().div_ceil(3600))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?.saturating_mul(3600)))
    }
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
            queries: QuerySettings::default(),
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
        if config.queries.store.is_relative() {
            config.queries.store = base.join(&config.queries.store);
        }
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
            ("[queries] keep_hours", self.queries.keep),
            ("[queries] sweep_seconds", self.queries.sweep),
        ] {
            if duration.is_zero() {
                return Err(format!("{setting} must be at least 1 second"));
            }
        }
        if self.regression.max_restarts > 3 {
            return Err("[regression] max_restarts is at most 3: sites answer attempts 0 to 3 of a fit".into());
        }
        if self.queries.max_running == 0 || self.queries.max_stored_per_researcher == 0 {
            return Err("[queries] max_running and max_stored_per_researcher must be at least 1".into());
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
        assert_eq!(c.queries.store, Path::new("/etc/verbund/queries/queries.redb"));
        assert_eq!(c.queries.keep, Duration::from_secs(168 * 3600));
        let e = CoordinatorConfig::from_toml(&format!("{GOOD}\n[queries]\nkeep_hours = 0\n"), Path::new("."));
        assert!(e.unwrap_err().to_string().contains("keep_hours must be at least 1"));
        let e = CoordinatorConfig::from_toml(&format!("{GOOD}\n[queries]\nkeep_days = 3\n"), Path::new("."));
        assert!(matches!(e, Err(ConfigError::Syntax(m)) if m.contains("keep_days")));
        let e = CoordinatorConfig::load(Path::new("/nonexistent/coordinator.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot read coordinator config /nonexistent/coordinator.toml"), "{e}");
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let mut c = CoordinatorConfig::from_toml(GOOD, Path::new("")).unwrap();
        c.ops_listen = Some("[::]:9090".parse().unwrap());
        c.queries.keep = Duration::from_secs(48 * 3600);
        c.queries.share_with_project = true;
        let text = c.to_toml().unwrap();
        assert!(text.contains("default_timeout_seconds = 20\n") && text.contains("key = \"pki/coordinator.key\"\n"));
        assert_eq!(CoordinatorConfig::from_toml(&text, Path::new("")).unwrap(), c, "{text}");
    }
}
