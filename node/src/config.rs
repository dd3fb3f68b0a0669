//! The node's configuration file (TOML). Relative paths are resolved against the directory
//! of the configuration file, so a site's config and data can move together.

use crate::{Error, Result};
use http::Uri;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use verbund_audit::AuditSettings;
use verbund_security::egress::{CREDENTIALS_IN_URL, DEFAULT_CONNECT_TIMEOUT, Egress, EgressSettings, ProxySetting};
use verbund_security::settings::{self, ConfigError};

/// A setting that parses but cannot work.
fn invalid(message: impl Into<String>) -> Error {
    Error::Config(ConfigError::Invalid(message.into()))
}
use verbund_security::tls::TlsFiles;
use verbund_security::token::TokenConfig;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This site's name, as researchers see it in results.
    pub site: String,
    /// The coordinator's node-link address, e.g. `https://coordinator.example.org:7070`.
    #[serde(deserialize_with = "coordinator_url", serialize_with = "settings::serialize_url")]
    pub coordinator: Uri,
    /// How outbound connections (the coordinator link, the identity provider's keys) leave:
    /// through an HTTP CONNECT proxy (`http://host:port` or `https://host:port`), or
    /// `"direct"`. When absent, the environment decides (`https_proxy`/`HTTPS_PROXY`,
    /// `no_proxy`/`NO_PROXY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySetting>,
    /// A file whose first line is `user:password`: Basic credentials for the proxy (the
    /// configured one or the environment's). Never the credentials themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_credentials: Option<PathBuf>,
    /// CA bundle that an `https://` proxy's certificate must chain to; the system's roots
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_ca: Option<PathBuf>,
    /// Destinations reached directly although `proxy` names a proxy (`NO_PROXY` syntax:
    /// host names, `.domain` suffixes, IP addresses, networks, `*`; optionally `:port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_proxy: Vec<String>,
    /// How long opening one outbound connection may take (`connect_timeout_seconds`): the
    /// proxy's answer to CONNECT included, so a stalling proxy costs no more.
    #[serde(default = "default_connect_timeout", rename = "connect_timeout_seconds", with = "settings::seconds")]
    pub connect_timeout: Duration,
    /// The site policy file; the built-in defaults (minimum cell size 5) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    /// Time between heartbeats on the link (`heartbeat_seconds`).
    #[serde(default = "default_heartbeat", rename = "heartbeat_seconds", with = "settings::seconds")]
    pub heartbeat: Duration,
    /// How often to check whether the TLS files changed (`tls_reload_seconds`); a renewed
    /// certificate is then used at once.
    #[serde(default = "default_reload", rename = "tls_reload_seconds", with = "settings::seconds")]
    pub tls_reload: Duration,
    /// How often to check whether the datasets' files changed (`data_reload_seconds`), as
    /// after `verbund import`; new data is served and announced at once (SIGHUP checks now).
    #[serde(default = "default_reload", rename = "data_reload_seconds", with = "settings::seconds")]
    pub data_reload: Duration,
    /// Plain-HTTP address for `/metrics`, `/livez` and `/readyz`; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<std::net::SocketAddr>,
    /// On shutdown, how long running queries may take to finish before they are stopped
    /// (`drain_seconds`).
    #[serde(default = "default_drain", rename = "drain_seconds", with = "settings::seconds")]
    pub drain: Duration,
    /// Mutual TLS with the coordinator.
    pub tls: NodeTls,
    /// How researchers' tokens are verified here.
    pub auth: TokenConfig,
    /// The site's audit log (`[audit]`): a record of every request, durable before its
    /// answer leaves; by default in `audit/` beside this file.
    #[serde(default)]
    pub audit: AuditSettings,
    /// The secret this site's differential-privacy noise derives from: 32 random bytes, kept
    /// like a private key (`verbund generate` writes one). Needed by the dp and feasibility
    /// profiles. Replacing it gives every question new noise, so keep it with the ledger.
    #[serde(default = "default_noise_key")]
    pub noise_key: PathBuf,
    /// The privacy-budget ledger: what each project has spent here (an embedded database;
    /// back it up, never delete it).
    #[serde(default = "default_ledger")]
    pub ledger: PathBuf,
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<DatasetConfig>,
}

fn default_noise_key() -> PathBuf {
    PathBuf::from("noise.key")
}

fn default_ledger() -> PathBuf {
    PathBuf::from("privacy/budget.redb")
}

fn coordinator_url<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Uri, D::Error> {
    settings::deserialize_url(d, "coordinator")
}

/// TOML's message, which quotes the offending line; but not when that line holds a proxy URL
/// with a password in it.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    if !error.message().contains(CREDENTIALS_IN_URL) {
        return error.to_string();
    }
    match error.span() {
        Some(span) => {
            let line = text.get(..span.start).map_or(0, |before| before.matches('\n').count()) + 1;
            format!("line {line}: {CREDENTIALS_IN_URL}")
        }
        None => CREDENTIALS_IN_URL.to_string(),
    }
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}

fn default_reload() -> Duration {
    Duration::from_secs(30)
}

fn default_drain() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTls {
    /// The network CA that the coordinator's certificate must chain to.
    pub ca: PathBuf,
    /// This site's certificate (it names the site).
    pub cert: PathBuf,
    /// This site's private key.
    pub key: PathBuf,
    /// The name the coordinator's certificate must carry; the host of `coordinator` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_name: Option<String>,
}

impl NodeTls {
    pub fn files(&self) -> TlsFiles {
        TlsFiles { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Parquet,
    Csv,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Name researchers use in FROM.
    pub name: String,
    /// A Parquet or CSV file (or a directory of them).
    pub path: PathBuf,
    /// Taken from the file extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FileFormat>,
    /// The column identifying a patient.
    pub patient_key: String,
    /// The columns researchers may use. Nothing else of the file is visible.
    pub columns: Vec<String>,
    /// What the dataset is, when it has a documented shape: "fhir/<dataset>" for the datasets
    /// `verbund import` writes (docs/fhir-datasets.md). Cohort criteria and consent find
    /// datasets by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl DatasetConfig {
    pub fn format(&self) -> Result<FileFormat> {
        if let Some(f) = &self.format {
            return Ok(f.clone());
        }
        match self.path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("parquet") => Ok(FileFormat::Parquet),
            Some("csv") => Ok(FileFormat::Csv),
            _ => Err(invalid(format!(
                "dataset '{}': cannot tell the format of {}; set format = \"parquet\" or \"csv\"",
                self.name,
                self.path.display()
            ))),
        }
    }
}

impl NodeConfig {
    /// A configuration with the defaults of every optional setting (no policy file, no
    /// proxy, no ops endpoint) and no dataset yet.
    pub fn new(site: impl Into<String>, coordinator: Uri, tls: NodeTls, auth: TokenConfig) -> Self {
        Self {
            site: site.into(),
            coordinator,
            proxy: None,
            proxy_credentials: None,
            proxy_ca: None,
            no_proxy: Vec::new(),
            connect_timeout: default_connect_timeout(),
            policy: None,
            heartbeat: default_heartbeat(),
            tls_reload: default_reload(),
            data_reload: default_reload(),
            ops_listen: None,
            drain: default_drain(),
            tls,
            auth,
            audit: AuditSettings::default(),
            noise_key: default_noise_key(),
            ledger: default_ledger(),
            datasets: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            what: "node config",
            path: path.to_path_buf(),
            error,
        })?;
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            Error::Config(error) => {
                Error::Config(ConfigError::In { what: "node config", path: path.to_path_buf(), error: Box::new(error) })
            }
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax(toml_error(text, &e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as a file holds it (paths as they are here: relative ones are read
    /// against the directory of the file).
    pub fn to_toml(&self) -> Result<String> {
        self.validate()?;
        toml::to_string_pretty(self)
            .map_err(|e| ConfigError::Write { what: "node config", message: e.to_string() }.into())
    }

    /// Makes relative paths relative to `base` (the directory of the configuration file).
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &PathBuf| if p.is_relative() { base.join(p) } else { p.clone() };
        self.policy = self.policy.as_ref().map(resolve);
        self.proxy_credentials = self.proxy_credentials.as_ref().map(resolve);
        self.proxy_ca = self.proxy_ca.as_ref().map(resolve);
        self.tls.ca = resolve(&self.tls.ca);
        self.tls.cert = resolve(&self.tls.cert);
        self.tls.key = resolve(&self.tls.key);
        self.auth.resolve(base);
        self.audit.resolve_paths(base);
        self.noise_key = resolve(&self.noise_key);
        self.ledger = resolve(&self.ledger);
        for d in &mut self.datasets {
            d.path = resolve(&d.path);
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.site.trim().is_empty() {
            return Err(invalid("site must not be empty"));
        }
        settings::require_https("coordinator", &self.coordinator, "the link is always mutual TLS").map_err(invalid)?;
        self.coordinator_name()?;
        self.egress_settings().validate().map_err(|e| invalid(e.to_string()))?;
        self.auth.validate().map_err(|e| invalid(format!("[auth]: {e}")))?;
        self.audit.validate().map_err(invalid)?;
        if self.datasets.is_empty() {
            return Err(invalid("no [[dataset]] declared: a node without data has nothing to answer"));
        }
        let mut names = std::collections::HashSet::new();
        for d in &self.datasets {
            if !names.insert(&d.name) {
                return Err(invalid(format!("dataset '{}' is declared twice", d.name)));
            }
            if d.columns.is_empty() {
                return Err(invalid(format!("dataset '{}' exposes no columns", d.name)));
            }
            d.format()?;
        }
        if self.heartbeat.is_zero() || self.tls_reload.is_zero() || self.data_reload.is_zero() {
            return Err(invalid("heartbeat_seconds, tls_reload_seconds and data_reload_seconds must be at least 1"));
        }
        Ok(())
    }

    /// The outbound settings as configured (the environment is not read here).
    pub fn egress_settings(&self) -> EgressSettings {
        EgressSettings {
            proxy: self.proxy.clone(),
            credentials: self.proxy_credentials.clone(),
            ca: self.proxy_ca.clone(),
            no_proxy: self.no_proxy.clone(),
            connect_timeout: self.connect_timeout,
        }
    }

    /// How this node reaches the outside: the configured proxy settings, or, when `proxy` is
    /// absent, what `env` says (`HTTPS_PROXY`, `NO_PROXY`). Reads the credentials file.
    pub fn egress_with_env(&self, env: impl Fn(&str) -> Option<String>) -> Result<Egress> {
        Egress::resolve(&self.egress_settings(), env).map_err(|e| invalid(e.to_string()))
    }

    /// The name the coordinator's certificate must carry.
    pub fn coordinator_name(&self) -> Result<String> {
        if let Some(name) = &self.tls.coordinator_name {
            return Ok(name.clone());
        }
        self.coordinator
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(|| invalid(format!("the coordinator address '{}' has no host", self.coordinator)))
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
        let e = NodeConfig::from_toml(&GOOD.replace("https://127", "http://127")).unwrap_err();
        assert!(matches!(e, Error::Config(ConfigError::Invalid(_))), "{e:?}");
        assert!(e.to_string().contains("https://"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("[auth]", "[authx]")).unwrap_err();
        assert!(matches!(e, Error::Config(ConfigError::Syntax(_))), "{e:?}");
        assert!(e.to_string().contains("auth"), "{e}");
        let e = NodeConfig::load(Path::new("/nonexistent/node.toml")).unwrap_err();
        assert!(matches!(e, Error::Config(ConfigError::Read { .. })), "{e:?}");
        let e = NodeConfig::from_toml(&GOOD.replace("patients.parquet", "patients.xlsx")).unwrap_err().to_string();
        assert!(e.contains("format"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("patient_key", "patientkey")).unwrap_err().to_string();
        assert!(e.contains("patientkey"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("https://127.0.0.1:7070", "https://127.0.0 .1")).unwrap_err();
        assert!(e.to_string().contains("coordinator 'https://127.0.0 .1' is not a URL"), "{e}");
        let proxy = GOOD.replace("policy =", "proxy = \"http://\"\npolicy =");
        let e = NodeConfig::from_toml(&proxy).unwrap_err().to_string();
        assert!(e.contains("proxy 'http://'"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("jwks_file = \"jwks.json\"", "jwks_url = \"http://idp/certs\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("jwks_url must be an https://"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("policy =", "heartbeat_seconds = 0\npolicy =")).unwrap_err();
        assert!(e.to_string().contains("heartbeat_seconds"), "{e}");
    }

    #[test]
    fn urls_and_durations_are_parsed_once_when_read() {
        let text = GOOD.replace("policy =", "proxy = \"http://proxy.local:3128\"\nheartbeat_seconds = 5\npolicy =");
        let c = NodeConfig::from_toml(&text).unwrap();
        assert_eq!(c.coordinator.scheme_str(), Some("https"));
        assert!(matches!(&c.proxy, Some(ProxySetting::Url(u)) if u.port_u16() == Some(3128)), "{:?}", c.proxy);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!((c.heartbeat, c.tls_reload, c.drain), (Duration::from_secs(5), default_reload(), default_drain()));
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let mut c = NodeConfig::from_toml(GOOD).unwrap();
        c.proxy = Some(ProxySetting::parse("https://proxy.local:8443").unwrap());
        c.proxy_credentials = Some("secrets/proxy.credentials".into());
        c.proxy_ca = Some("pki/hospital-ca.pem".into());
        c.no_proxy = vec![".intern.klinik.de".into(), "10.0.0.0/8".into()];
        c.connect_timeout = Duration::from_secs(7);
        c.ops_listen = Some("127.0.0.1:9090".parse().unwrap());
        c.datasets[0].format = Some(FileFormat::Parquet);
        let text = c.to_toml().unwrap();
        assert!(
            text.contains("heartbeat_seconds = 15\n") && text.contains("coordinator = \"https://127.0.0.1:7070\"\n"),
            "{text}"
        );
        assert!(text.contains("policy = \"policy.toml\"\n"), "relative paths stay relative:\n{text}");
        assert!(text.contains("proxy = \"https://proxy.local:8443\"\n"), "{text}");
        assert!(text.contains("connect_timeout_seconds = 7\n"), "{text}");
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), c, "{text}");
        c.proxy = Some(ProxySetting::Direct);
        (c.proxy_credentials, c.proxy_ca, c.no_proxy) = (None, None, Vec::new());
        let text = c.to_toml().unwrap();
        assert!(text.contains("proxy = \"direct\"\n"), "{text}");
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), c, "{text}");

        c.tls_reload = Duration::from_millis(200);
        assert!(c.to_toml().unwrap_err().to_string().contains("whole number of seconds"));
    }

    fn with(extra: &str) -> String {
        GOOD.replace("policy =", &format!("{extra}\npolicy ="))
    }

    #[test]
    fn proxy_settings_are_read_resolved_and_checked() {
        let text = with(
            "proxy = \"https://proxy.klinik.de:8443\"\nproxy_credentials = \"proxy.credentials\"\n\
             proxy_ca = \"pki/klinik-ca.pem\"\nno_proxy = [\".intern.klinik.de\"]\nconnect_timeout_seconds = 3",
        );
        let mut c = NodeConfig::from_toml(&text).unwrap();
        c.resolve_paths(Path::new("/etc/verbund"));
        assert_eq!(c.proxy_credentials, Some(PathBuf::from("/etc/verbund/proxy.credentials")));
        assert_eq!(c.proxy_ca, Some(PathBuf::from("/etc/verbund/pki/klinik-ca.pem")));
        assert_eq!(c.egress_settings().connect_timeout, Duration::from_secs(3));

        for (extra, expected) in [
            ("proxy = \"http://alice:secret@proxy.local:3128\"", "line 4: proxy must not carry a user name"),
            ("proxy = \"socks5://proxy.local:1080\"", "socks5:// proxies are not supported"),
            ("proxy = \"proxy.local:3128\"", "needs a scheme"),
            ("proxy = \"direct\"\nproxy_credentials = \"p\"", "proxy_credentials: is set, but proxy = \"direct\""),
            ("proxy = \"http://p.local:3128\"\nproxy_ca = \"ca.pem\"", "proxy_ca: is for an https:// proxy"),
            ("no_proxy = [\"idp.local\"]", "no_proxy: applies to the proxy named by `proxy`"),
            ("connect_timeout_seconds = 0", "connect_timeout_seconds: must be at least 1"),
            ("proxy_password = \"secret\"", "unknown field `proxy_password`"),
        ] {
            let e = NodeConfig::from_toml(&with(extra)).unwrap_err().to_string();
            assert!(e.contains(expected), "{extra}: {e}");
            assert!(!e.contains("alice:secret"), "{e}");
        }
    }

    #[test]
    fn the_configured_proxy_wins_over_the_environment() {
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Some("http://env-proxy.local:3128".to_string()),
            "NO_PROXY" => Some("idp.example.org".to_string()),
            _ => None,
        };
        let coordinator: Uri = "https://127.0.0.1:7070".parse().unwrap();
        let c = NodeConfig::from_toml(GOOD).unwrap();
        let egress = c.egress_with_env(env).unwrap();
        assert_eq!(egress.proxy_for(&coordinator), Some("http://env-proxy.local:3128"));
        assert_eq!(egress.proxy_for(&"https://idp.example.org/certs".parse().unwrap()), None);
        let c = NodeConfig::from_toml(&with("proxy = \"direct\"")).unwrap();
        assert_eq!(c.egress_with_env(env).unwrap().proxy_for(&coordinator), None);
        let c = NodeConfig::from_toml(&with("proxy = \"http://proxy.klinik.de:3128\"")).unwrap();
        assert_eq!(c.egress_with_env(env).unwrap().proxy_for(&coordinator), Some("http://proxy.klinik.de:3128"));
        let c = NodeConfig::from_toml(&with("proxy_credentials = \"/nonexistent/proxy.credentials\"")).unwrap();
        let e = c.egress_with_env(env).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/proxy.credentials: cannot be read"), "{e}");
    }
}
