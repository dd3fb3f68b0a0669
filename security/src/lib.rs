//! Trust for a verbund network: the network's PKI (rcgen), mutual TLS configuration with
//! rustls (reloaded when the files change), certificate identities and expiry, and the
//! verification of researchers' JWTs. Node and coordinator both use it, so neither trusts
//! the other's word. Keys and tokens are written readable by their owner only ([`files`]);
//! [`settings`] holds what the node's and the coordinator's configuration files share;
//! [`egress`] decides how outbound connections leave (directly or through a proxy), and
//! [`https`] fetches the identity provider's keys that way.

pub mod certs;
pub mod egress;
pub mod files;
pub mod https;
pub mod pki;
pub mod tls;
pub mod token;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error(
        "{} exists already; a key or token is never overwritten silently: move or delete it first if it is to be replaced",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error("{}: {problem}", path.display())]
    Pem { path: PathBuf, problem: PemProblem },
    #[error("certificate {}: {problem}", path.display())]
    Certificate { path: PathBuf, problem: CertificateProblem },
    /// rustls could not build a configuration from otherwise readable files.
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("'{0}' is not a valid site name (letters, digits, '-', '_', '.')")]
    InvalidSiteName(String),
    #[error("the coordinator needs at least one name")]
    NoCoordinatorName,
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("token configuration: {0}")]
    TokenConfig(String),
    #[error("cannot fetch {url}: {error}")]
    Fetch { url: String, error: https::FetchError },
    #[error("outbound connections: {0}")]
    Egress(#[from] egress::EgressError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a PEM file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PemProblem {
    /// The PEM reader's own account.
    #[error("not valid PEM: {0}")]
    Malformed(String),
    #[error("contains no certificate")]
    NoCertificate,
    #[error("no usable private key: {0}")]
    NoPrivateKey(String),
}

/// What is wrong with a certificate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CertificateProblem {
    /// The X.509 parser's own account.
    #[error("cannot be parsed: {0}")]
    Unparseable(String),
    #[error("has expired; renew it")]
    Expired,
    #[error("cannot be used as a trust anchor: {0}")]
    NotATrustAnchor(String),
}

/// Pieces of the node's and the coordinator's configuration files that both use: durations
/// in seconds and URLs, each parsed once when the file is read and written back the same way.
pub mod settings {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    pub use tonic::transport::Uri;

    /// What is wrong with a configuration file, node's or coordinator's: callers tell a file
    /// they cannot read from one that is not valid TOML of the right keys, and both from a
    /// setting that parses but cannot work.
    #[derive(Debug, thiserror::Error)]
    pub enum ConfigError {
        #[error("cannot read {what} {}: {error}", path.display())]
        Read { what: &'static str, path: std::path::PathBuf, error: std::io::Error },
        /// Not TOML, or not the keys and types the file may hold (the message shows where).
        #[error("{0}")]
        Syntax(String),
        /// A setting that parses but cannot work; the message names it.
        #[error("{0}")]
        Invalid(String),
        /// An error found in the file at `path`.
        #[error("{what} {}: {error}", path.display())]
        In { what: &'static str, path: std::path::PathBuf, error: Box<ConfigError> },
        #[error("cannot write the {what}: {message}")]
        Write { what: &'static str, message: String },
    }

    /// A duration written as whole seconds (`heartbeat_seconds = 15`), held as a
    /// [`std::time::Duration`]: `#[serde(with = "verbund_security::settings::seconds")]`.
    /// Whether 0 is allowed is for each setting to say.
    pub mod seconds {
        use super::*;
        use std::time::Duration;

        pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
            if duration.subsec_nanos() != 0 {
                return Err(serde::ser::Error::custom(format!("{duration:?} is not a whole number of seconds")));
            }
            s.serialize_u64(duration.as_secs())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            u64::deserialize(d).map(Duration::from_secs)
        }
    }

    /// Parses the URL of the setting `setting`; it needs a host. The error names the setting.
    pub fn parse_url(setting: &str, text: &str) -> Result<Uri, String> {
        let uri: Uri = text.parse().map_err(|e| format!("{setting} '{text}' is not a URL: {e}"))?;
        if uri.host().is_none() {
            return Err(format!("{setting} '{text}' has no host"));
        }
        Ok(uri)
    }

    /// That the URL of `setting` is an `https://` one (`why`: what needs it).
    pub fn require_https(setting: &str, uri: &Uri, why: &str) -> Result<(), String> {
        if uri.scheme_str() != Some("https") {
            return Err(format!("{setting} must be an https:// address ({why}), got '{}'", url_text(uri)));
        }
        Ok(())
    }

    /// A URL as it is written: `https://host:port` stays without the `/` that parsing adds.
    pub fn url_text(uri: &Uri) -> String {
        let text = uri.to_string();
        match (uri.path(), uri.query()) {
            ("/", None) => text.strip_suffix('/').map(str::to_string).unwrap_or(text),
            _ => text,
        }
    }

    /// Reads the URL of `setting` (with [`parse_url`]), for a field's `deserialize_with`.
    pub fn deserialize_url<'de, D: Deserializer<'de>>(d: D, setting: &str) -> Result<Uri, D::Error> {
        let text = String::deserialize(d)?;
        parse_url(setting, &text).map_err(D::Error::custom)
    }

    /// [`deserialize_url`] for an optional setting (with `#[serde(default)]`).
    pub fn deserialize_optional_url<'de, D: Deserializer<'de>>(d: D, setting: &str) -> Result<Option<Uri>, D::Error> {
        deserialize_url(d, setting).map(Some)
    }

    /// Writes a URL as its text, for a field's `serialize_with`.
    pub fn serialize_url<S: Serializer>(uri: &Uri, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&url_text(uri))
    }

    /// [`serialize_url`] for an optional setting (with `skip_serializing_if = "Option::is_none"`).
    pub fn serialize_optional_url<S: Serializer>(uri: &Option<Uri>, s: S) -> Result<S::Ok, S::Error> {
        match uri {
            Some(uri) => serialize_url(uri, s),
            None => s.serialize_none(),
        }
    }
}

impl serde::Serialize for tls::TlsFiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut files = s.serialize_struct("TlsFiles", 3)?;
        files.serialize_field("ca", &self.ca)?;
        files.serialize_field("cert", &self.cert)?;
        files.serialize_field("key", &self.key)?;
        files.end()
    }
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs, the one tonic, rcgen and
/// jsonwebtoken are built with here). Safe to call more than once.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
