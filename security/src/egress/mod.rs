//! How a node reaches the outside: every outbound connection (the coordinator link, the
//! identity provider's keys) goes the same way, decided here per destination.
//!
//! Hospital networks usually allow outbound traffic only through an HTTP proxy, often one
//! that asks for credentials and is itself reached over TLS with the hospital's own CA. An
//! [`Egress`] holds the resolved proxy settings: from the configuration when it names a
//! proxy (or says `"direct"`), otherwise from the environment's `https_proxy`/`HTTPS_PROXY`
//! and `no_proxy`/`NO_PROXY`. [`Egress::connect`] then opens a connection to a destination,
//! directly or through an HTTP CONNECT tunnel, bounded by one connect timeout; TLS to the
//! destination (mutual TLS to the coordinator) runs inside it unchanged.
//!
//! Credentials come from a file and appear in no message, log line or `Debug` output.

mod no_proxy;
mod tunnel;

pub use no_proxy::NoProxy;
pub use tunnel::EgressStream;

use crate::settings::{self, Uri};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long opening a connection may take by default: reaching the proxy, TLS with it and
/// its answer to CONNECT together (or reaching the destination directly).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variables read for the proxy and its exceptions, the lower-case spelling
/// first (as curl does). Only `https` matters: every destination of a node is `https://`.
const PROXY_VARIABLES: [&str; 2] = ["https_proxy", "HTTPS_PROXY"];
const NO_PROXY_VARIABLES: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// The refusal of a proxy URL with credentials in it. Whoever quotes the offending text
/// (TOML's error messages quote the line) must not when the message is this one.
pub const CREDENTIALS_IN_URL: &str =
    "proxy must not carry a user name or password: write them to a file and name it with proxy_credentials";

/// The configured `proxy` setting.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxySetting {
    /// `proxy = "direct"`: every connection goes directly, whatever `HTTPS_PROXY` says.
    Direct,
    /// `proxy = "http://host:port"` or `"https://host:port"`: an HTTP CONNECT proxy.
    Url(Uri),
}

impl ProxySetting {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("direct") {
            return Ok(Self::Direct);
        }
        if has_userinfo(text) {
            return Err(CREDENTIALS_IN_URL.into());
        }
        if !text.contains("://") {
            return Err(format!(
                "proxy '{text}' needs a scheme: \"http://{text}\" or \"https://{text}\" (or \"direct\" for no proxy)"
            ));
        }
        let uri = settings::parse_url("proxy", text)?;
        check_proxy_scheme("proxy", &uri)?;
        Ok(Self::Url(uri))
    }
}

impl Serialize for ProxySetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Direct => s.serialize_str("direct"),
            Self::Url(uri) => settings::serialize_url(uri, s),
        }
    }
}

impl<'de> Deserialize<'de> for ProxySetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What the configuration says about outbound connections (the node's `proxy`,
/// `proxy_credentials`, `proxy_ca`, `no_proxy` and `connect_timeout_seconds`).
#[derive(Debug, Clone, PartialEq)]
pub struct EgressSettings {
    /// `None`: the environment decides (`HTTPS_PROXY`, `NO_PROXY`).
    pub proxy: Option<ProxySetting>,
    /// A file whose first line is `user:password`, for Basic authentication at the proxy
    /// (whichever proxy is used: configured or from the environment).
    pub credentials: Option<PathBuf>,
    /// CA bundle for an `https://` proxy's certificate; the system's roots otherwise.
    pub ca: Option<PathBuf>,
    /// Destinations reached directly although `proxy` names a proxy (`NO_PROXY` syntax).
    pub no_proxy: Vec<String>,
    pub connect_timeout: Duration,
}

impl Default for EgressSettings {
    fn default() -> Self {
        Self {
            proxy: None,
            credentials: None,
            ca: None,
            no_proxy: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl EgressSettings {
    /// Checks what can be checked without reading files or the environment.
    pub fn validate(&self) -> Result<(), EgressError> {
        let setting =
            |setting: &str, problem: &str| EgressError::Setting { setting: setting.into(), problem: problem.into() };
        if self.connect_timeout.is_zero() {
            return Err(setting("connect_timeout_seconds", "must be at least 1"));
        }
        match &self.proxy {
            Some(ProxySetting::Direct) => {
                for (name, set) in [
                    ("proxy_credentials", self.credentials.is_some()),
                    ("proxy_ca", self.ca.is_some()),
                    ("no_proxy", !self.no_proxy.is_empty()),
                ] {
                    if set {
                        return Err(setting(
                            name,
                            "is set, but proxy = \"direct\" uses no proxy; remove one of the two",
                        ));
                    }
                }
            }
            Some(ProxySetting::Url(url)) => {
                if self.ca.is_some() && url.scheme_str() != Some("https") {
                    return Err(setting(
                        "proxy_ca",
                        "is for an https:// proxy, but proxy is http:// (no certificate of the proxy is checked)",
                    ));
                }
            }
            None => {
                if !self.no_proxy.is_empty() {
                    return Err(setting(
                        "no_proxy",
                        "applies to the proxy named by `proxy`; without it the environment's NO_PROXY is used",
                    ));
                }
            }
        }
        let (_, bad) = NoProxy::parse(self.no_proxy.iter().map(String::as_str));
        if !bad.is_empty() {
            return Err(setting(
                "no_proxy",
                &format!("{bad:?} are no host names, domains (.example.org), IP addresses or networks (10.0.0.0/8)"),
            ));
        }
        Ok(())
    }
}

/// Basic credentials for the proxy. Only the header value is kept; neither `Debug` nor any
/// message shows it.
#[derive(Clone)]
pub struct ProxyCredentials {
    authorization: String,
    /// Where they came from (a file's path, or the variable), for the start-up log.
    source: String,
}

impl std::fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCredentials").field("source", &self.source).field("value", &"<redacted>").finish()
    }
}

impl ProxyCredentials {
    /// Reads `user:password` from the first line of `path` (the password may contain ':';
    /// a trailing newline is not part of it). The errors name the file, never its content.
    pub fn load(path: &Path) -> Result<Self, EgressError> {
        let problem = |problem: String| EgressError::CredentialsFile { path: path.to_path_buf(), problem };
        let bytes = std::fs::read(path).map_err(|e| problem(format!("cannot be read: {e}")))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| problem("is not UTF-8 text".into()))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(problem("is empty; write user:password on its first line".into()));
        }
        if line.chars().any(char::is_control) {
            return Err(problem("holds control characters on its first line; write user:password there".into()));
        }
        let Some((user, password)) = line.split_once(':') else {
            return Err(problem("holds no ':' on its first line; write user:password there".into()));
        };
        if user.is_empty() {
            return Err(problem("names no user before the ':' on its first line".into()));
        }
        warn_if_others_may_read(path);
        Ok(Self::basic(user, password, format!("file {}", path.display())))
    }

    fn basic(user: &str, password: &str, source: String) -> Self {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self { authorization: format!("Basic {encoded}"), source }
    }
}

#[cfg(unix)]
fn warn_if_others_may_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Group access is how services share secrets (root:verbund 0640 on a host, the pod's
    // fsGroup on Kubernetes), so only access for everyone else is worth a warning.
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o007 != 0
    {
        tracing::warn!(file = %path.display(), "the proxy credentials file is readable by everyone; chmod o-rwx it");
    }
}

#[cfg(not(unix))]
fn warn_if_others_may_read(_: &Path) {}

/// Why a connection could not be opened, or the settings cannot be used. Messages name the
/// proxy and the destination and say what to do; they never hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("{setting}: {problem}")]
    Setting { setting: String, problem: String },
    #[error("proxy credentials file {}: {problem}", path.display())]
    CredentialsFile { path: PathBuf, problem: String },
    #[error("{variable}: {problem}")]
    Environment { variable: &'static str, problem: String },
    #[error("TLS to the proxy: {0}")]
    ProxyTlsSettings(Box<crate::Error>),
    #[error("address '{0}' has no host")]
    NoHost(String),
    #[error("cannot connect to {target}: {error}")]
    Unreachable { target: String, error: std::io::Error },
    #[error("no connection to {target} within {after:?} (connect_timeout_seconds)")]
    Timeout { target: String, after: Duration },
    #[error("cannot reach the proxy {proxy}: {error}")]
    ProxyUnreachable { proxy: String, error: std::io::Error },
    #[error(
        "TLS with the proxy {proxy} failed: {error}; its certificate must be issued by the CA in proxy_ca \
         (or by one of the system's roots)"
    )]
    ProxyTls { proxy: String, error: std::io::Error },
    #[error("the connection to the proxy {proxy} failed: {error}")]
    ProxyIo { proxy: String, error: std::io::Error },
    #[error("the proxy {proxy} closed the connection before answering CONNECT {target}")]
    ProxyClosed { proxy: String, target: String },
    #[error(
        "the proxy {proxy} answered CONNECT {target} with {what}; is it an HTTP proxy, and is http:// or https:// right?"
    )]
    ProxyGarbage { proxy: String, target: String, what: String },
    #[error(
        "the proxy {proxy} did not open a tunnel to {target} within {after:?} (connect_timeout_seconds); \
         it may be overloaded, or hold the request"
    )]
    ProxyTimeout { proxy: String, target: String, after: Duration },
    #[error(
        "the proxy {proxy} asks for credentials (407) to reach {target}{}; name a file holding user:password \
         with proxy_credentials",
        offer_note(offered)
    )]
    ProxyAuthRequired { proxy: String, target: String, offered: Vec<String> },
    #[error(
        "the proxy {proxy} refused these credentials (407) for {target}{}; check the user and password in the \
         proxy_credentials file",
        offer_note(offered)
    )]
    ProxyAuthRejected { proxy: String, target: String, offered: Vec<String> },
    #[error("the proxy {proxy} refused to tunnel to {target}: {status} {reason}")]
    ProxyRefused { proxy: String, target: String, status: u16, reason: String },
}

/// A note when the proxy offers only schemes other than Basic (NTLM, Negotiate).
fn offer_note(offered: &[String]) -> String {
    if offered.is_empty() || offered.iter().any(|s| s.eq_ignore_ascii_case("basic")) {
        String::new()
    } else {
        format!(" and offers only {}, but verbund authenticates with Basic", offered.join(", "))
    }
}

/// Where the proxy setting came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Built by a program (tests, embedding): direct.
    Direct,
    /// `proxy = "direct"` in the configuration.
    ConfiguredDirect,
    /// `proxy = "..."` in the configuration.
    Configured,
    /// Nothing configured and no proxy variable set.
    Unset,
    /// From this environment variable.
    Environment(&'static str),
}

struct Proxy {
    /// `scheme://host:port`, as shown in logs and messages (never with credentials).
    url: String,
    /// `host:port` to connect to.
    authority: String,
    /// The host as the proxy's certificate must name it (no brackets).
    host: String,
    /// TLS to the proxy itself, for an `https://` proxy.
    tls: Option<TlsConnector>,
    credentials: Option<ProxyCredentials>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// The resolved way out: which proxy, if any, for which destination, and how long
/// connecting may take. Cheap to share (`Arc<Egress>`) between the link and the key fetch.
#[derive(Debug)]
pub struct Egress {
    proxy: Option<Proxy>,
    no_proxy: NoProxy,
    connect_timeout: Duration,
    origin: Origin,
}

impl Egress {
    /// Every connection directly, with the default connect timeout.
    pub fn direct() -> Self {
        Self {
            proxy: None,
            no_proxy: NoProxy::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            origin: Origin::Direct,
        }
    }

    /// The environment's proxy (`https_proxy`/`HTTPS_PROXY`, `no_proxy`/`NO_PROXY`) when
    /// nothing is configured (the coordinator's key fetch, tools).
    pub fn from_env() -> Result<Self, EgressError> {
        Self::resolve(&EgressSettings::default(), |name| std::env::var(name).ok())
    }

    /// Resolves `settings`, looking up environment variables with `env` (the process's
    /// environment in a node; a fake one in tests). A configured `proxy` wins over the
    /// environment, and then the environment's `NO_PROXY` does not apply either.
    pub fn resolve(settings: &EgressSettings, env: impl Fn(&str) -> Option<String>) -> Result<Self, EgressError> {
        settings.validate()?;
        let lookup = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                let value = env(name)?.trim().to_string();
                (!value.is_empty()).then_some((name, value))
            })
        };
        let mut env_credentials = None;
        let (url, no_proxy, origin) = match &settings.proxy {
            Some(ProxySetting::Direct) => (None, NoProxy::default(), Origin::ConfiguredDirect),
            Some(ProxySetting::Url(url)) => {
                let (list, _) = NoProxy::parse(settings.no_proxy.iter().map(String::as_str));
                (Some(url.clone()), list, Origin::Configured)
            }
            None => match lookup(PROXY_VARIABLES) {
                None => (None, NoProxy::default(), Origin::Unset),
                Some((variable, value)) => {
                    let (url, credentials) = parse_env_proxy(variable, &value)?;
                    env_credentials = credentials;
                    let no_proxy = match lookup(NO_PROXY_VARIABLES) {
                        None => NoProxy::default(),
                        Some((variable, value)) => {
                            let (list, bad) = NoProxy::parse([value.as_str()]);
                            if !bad.is_empty() {
                                tracing::warn!(variable, ignored = ?bad, "entries that are no host, domain, IP address or network are ignored");
                            }
                            list
                        }
                    };
                    (Some(url), no_proxy, Origin::Environment(variable))
                }
            },
        };
        let credentials = match &settings.credentials {
            Some(path) => Some(ProxyCredentials::load(path)?),
            None => env_credentials,
        };
        let proxy = match url {
            Some(url) => Some(Proxy::new(&url, credentials, settings.ca.as_deref())?),
            None => {
                if settings.credentials.is_some() {
                    tracing::warn!("proxy_credentials is set, but no proxy is in use (HTTPS_PROXY is not set)");
                }
                None
            }
        };
        Ok(Self { proxy, no_proxy, connect_timeout: settings.connect_timeout, origin })
    }

    /// How long opening one connection may take, the CONNECT exchange included.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The proxy (its URL, without credentials) that connections to `target` go through;
    /// `None` when they go directly.
    pub fn proxy_for(&self, target: &Uri) -> Option<&str> {
        let target = Target::of(target).ok()?;
        self.route(&target).map(|p| p.url.as_str())
    }

    fn route(&self, target: &Target) -> Option<&Proxy> {
        self.proxy.as_ref().filter(|_| !self.no_proxy.matches(&target.host, target.port))
    }

    /// How connections to `target` go, in words (for the start-up log).
    pub fn describe(&self, target: &Uri) -> String {
        let target = match Target::of(target) {
            Ok(t) => t,
            Err(e) => return e.to_string(),
        };
        match (self.route(&target), self.origin) {
            (Some(proxy), origin) => {
                let from = match origin {
                    Origin::Environment(variable) => format!(" (from {variable})"),
                    _ => " (configured)".into(),
                };
                let credentials = match &proxy.credentials {
                    Some(c) => format!(", Basic credentials from {}", c.source),
                    None => String::new(),
                };
                format!("through the proxy {}{from}{credentials}", proxy.url)
            }
            (None, Origin::Configured | Origin::Environment(_)) => "directly (listed in no_proxy)".into(),
            (None, Origin::ConfiguredDirect) => "directly (proxy = \"direct\")".into(),
            (None, Origin::Unset) => "directly (no proxy configured, HTTPS_PROXY not set)".into(),
            (None, Origin::Direct) => "directly".into(),
        }
    }

    /// Logs once, at start, how each destination is reached (`what`: e.g. "coordinator").
    pub fn report(&self, destinations: &[(&str, &Uri)]) {
        for (what, target) in destinations {
            tracing::info!(destination = %what, target = %settings::url_text(target), route = %self.describe(target), "outbound connections");
        }
    }

    /// Opens a connection to `target` (`https://host:port`; the port defaults to the
    /// scheme's), directly or through the proxy's tunnel, within the connect timeout.
    pub async fn connect(&self, target: &Uri) -> Result<EgressStream, EgressError> {
        let target = Target::of(target)?;
        let after = self.connect_timeout;
        match self.route(&target) {
            None => match tokio::time::timeout(after, TcpStream::connect(&target.authority)).await {
                Err(_) => Err(EgressError::Timeout { target: target.authority, after }),
                Ok(Err(error)) => Err(EgressError::Unreachable { target: target.authority, error }),
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    Ok(EgressStream::tcp(stream))
                }
            },
            Some(proxy) => match tokio::time::timeout(after, proxy.tunnel(&target.authority)).await {
                Err(_) => Err(EgressError::ProxyTimeout { proxy: proxy.url.clone(), target: target.authority, after }),
                Ok(result) => result,
            },
        }
    }
}

impl Proxy {
    fn new(url: &Uri, credentials: Option<ProxyCredentials>, ca: Option<&Path>) -> Result<Self, EgressError> {
        let target = Target::of(url)?;
        let tls = match url.scheme_str() {
            Some("https") => {
                let config = crate::tls::https_client_config(ca, b"http/1.1")
                    .map_err(|e| EgressError::ProxyTlsSettings(Box::new(e)))?;
                Some(TlsConnector::from(config))
            }
            _ => None,
        };
        let scheme = url.scheme_str().unwrap_or("http");
        Ok(Self {
            url: format!("{scheme}://{}", target.authority),
            authority: target.authority,
            host: target.host,
            tls,
            credentials,
        })
    }

    async fn tunnel(&self, target: &str) -> Result<EgressStream, EgressError> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|error| EgressError::ProxyUnreachable { proxy: self.url.clone(), error })?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => EgressStream::tcp(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                    EgressError::ProxyTls { proxy: self.url.clone(), error: std::io::Error::other(e.to_string()) }
                })?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|error| EgressError::ProxyTls { proxy: self.url.clone(), error })?;
                EgressStream::tls(tls)
            }
        };
        let authorization = self.credentials.as_ref().map(|c| c.authorization.as_str());
        tunnel::connect(stream, &self.url, target, authorization).await
    }
}

/// A destination: its host (no brackets; lower case not required) and port, and
/// `host:port` as CONNECT and `TcpStream::connect` take it.
struct Target {
    host: String,
    port: u16,
    authority: String,
}

impl Target {
    fn of(uri: &Uri) -> Result<Self, EgressError> {
        let host = uri.host().ok_or_else(|| EgressError::NoHost(settings::url_text(uri)))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Self { host, port, authority })
    }
}

fn check_proxy_scheme(setting: &str, uri: &Uri) -> Result<(), String> {
    match uri.scheme_str() {
        Some("http" | "https") => Ok(()),
        other => Err(format!(
            "{setting}: {}:// proxies are not supported; an HTTP CONNECT proxy (http:// or https://) is",
            other.unwrap_or_default()
        )),
    }
}

/// Whether the authority of a URL text holds `user[:password]@`.
fn has_userinfo(text: &str) -> bool {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or_default().contains('@')
}

/// A proxy URL from the environment: `http://` when no scheme is given (as curl reads it),
/// with credentials in it (`http://user:pass@host:port`, percent-encoded) taken apart.
fn parse_env_proxy(variable: &'static str, value: &str) -> Result<(Uri, Option<ProxyCredentials>), EgressError> {
    let problem = |problem: String| EgressError::Environment { variable, problem };
    let (scheme, rest) = value.split_once("://").unwrap_or(("http", value));
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (credentials, host) = match authority.rsplit_once('@') {
        None => (None, authority),
        Some((userinfo, host)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |part: &str| {
                percent_encoding::percent_decode_str(part)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| problem("the user name or password in it is not UTF-8 once decoded".into()))
            };
            let (user, password) = (decode(user)?, decode(password)?);
            if user.is_empty() {
                return Err(problem("names a password but no user".into()));
            }
            (Some(ProxyCredentials::basic(&user, &password, format!("the URL in {variable}"))), host)
        }
    };
    let shown = format!("{scheme}://{host}{path}");
    let uri = settings::parse_url(variable, &shown).map_err(|e| problem(e.replacen(&format!("{variable} "), "", 1)))?;
    check_proxy_scheme(variable, &uri).map_err(|e| problem(e.replacen(&format!("{variable}: "), "", 1)))?;
    Ok((uri, credentials))
}

#[cfg(test)]
mod tests;
