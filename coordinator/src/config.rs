//! The coordinator's configuration file (TOML).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use verbund_security::tls::TlsFiles;
use verbund_security::token::TokenConfig;

fn default_node_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7070))
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7071))
}

mod seconds {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = u64::deserialize(d)?;
        if s == 0 {
            return Err(serde::de::Error::custom("must be at least 1 second"));
        }
        Ok(Duration::from_secs(s))
    }
}

#[derive(Debug, Clone, Deserialize)]
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
    /// Deadline of a query whose researcher named none, in seconds.
    #[serde(default = "default_timeout", rename = "default_timeout_seconds", with = "seconds")]
    pub default_timeout: Duration,
    /// Longest deadline a researcher may ask for, in seconds.
    #[serde(default = "max_timeout", rename = "max_timeout_seconds", with = "seconds")]
    pub max_timeout: Duration,
    /// How often to look for renewed TLS files, in seconds (SIGHUP reloads at once).
    #[serde(default = "tls_reload", rename = "tls_reload_seconds", with = "seconds")]
    pub tls_reload: Duration,
    /// `ca`: the CA site certificates must chain to; `cert`/`key`: the coordinator's own.
    pub tls: TlsFiles,
    pub auth: TokenConfig,
    /// Plain-HTTP address for `/metrics`, `/livez` and `/readyz`; none when absent.
    #[serde(default)]
    pub ops_listen: Option<SocketAddr>,
    /// On shutdown, how long running queries may take to finish (new ones are refused).
    #[serde(default = "drain", rename = "drain_seconds", with = "seconds")]
    pub drain: Duration,
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
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, String> {
        let mut config: CoordinatorConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.tls.resolve(base);
        config.auth.resolve(base);
        if config.sites.is_empty() {
            return Err("sites lists no site: name the sites (as their certificates do) that may connect".into());
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| format!("coordinator config {}: {e}", path.display()))
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
        assert!(e.unwrap_err().contains("sites"));
    }
}
