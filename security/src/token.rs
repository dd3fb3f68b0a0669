//! Researchers' tokens: JWTs from the network's identity provider (an OIDC provider such as
//! Keycloak; keys from its JWKS document), or from the local development issuer. Only
//! asymmetric algorithms from an allow-list are accepted; issuer, audience, expiry and
//! not-before are checked with a small leeway; every token must name its key (`kid`).

use crate::egress::Egress;
use crate::https::HttpsClient;
use crate::settings::{self, Uri};
use crate::{Error, Result};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"].iter().map(|s| s.to_string()).collect()
}

/// How tokens are checked (the `[auth]` section of node and coordinator configuration).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The `iss` every token must carry, e.g. `https://keycloak.example.org/realms/verbund`.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The identity provider's JWKS document (public keys), as a file ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// ... or fetched from the provider (e.g. Keycloak's `.../protocol/openid-connect/certs`);
    /// `https://` only.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "jwks_url",
        serialize_with = "settings::serialize_optional_url"
    )]
    pub jwks_url: Option<Uri>,
    /// CA bundle for the provider's HTTPS certificate; the system's roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca: Option<PathBuf>,
    /// How often keys fetched from `jwks_url` are fetched again (`jwks_refresh_seconds`).
    #[serde(default = "default_refresh", rename = "jwks_refresh_seconds", with = "settings::seconds")]
    pub jwks_refresh: Duration,
    /// Clock skew tolerated for `exp` and `nbf` (`leeway_seconds`).
    #[serde(default = "default_leeway", rename = "leeway_seconds", with = "settings::seconds")]
    pub leeway: Duration,
    /// Accepted signature algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
}

fn jwks_url<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Uri>, D::Error> {
    settings::deserialize_optional_url(d, "jwks_url")
}

impl TokenConfig {
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.jwks_file, &mut self.jwks_ca].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks what reading the file cannot: exactly one source of keys, and an `https://`
    /// `jwks_url`.
    pub fn validate(&self) -> Result<()> {
        match (&self.jwks_file, &self.jwks_url) {
            (Some(_), None) => Ok(()),
            (None, Some(url)) => {
                settings::require_https("jwks_url", url, "keys come only over TLS").map_err(Error::TokenConfig)
            }
            _ => Err(Error::TokenConfig("set exactly one of jwks_file and jwks_url".into())),
        }
    }
}

/// What a verified token says about the researcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub projects: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RawClaims {
    sub: Option<String>,
    projects: Option<Vec<String>>,
    #[serde(default)]
    roles: Vec<String>,
}

/// Why a token was refused. Messages help an honest researcher and say nothing about data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: send the researcher token as 'authorization: Bearer <token>'")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("tokens signed with {0} are not accepted; use an asymmetric algorithm such as RS256 or ES256")]
    AlgorithmNotAllowed(String),
    #[error("the token names no signing key (kid)")]
    MissingKeyId,
    #[error(
        "the token was signed with a key this party does not know (kid '{0}'); the identity provider's keys may have rotated"
    )]
    UnknownKey(String),
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired; get a new one from the identity provider")]
    Expired,
    #[error("the token is not valid yet; check the clocks")]
    NotYetValid,
    #[error("the token comes from an issuer this network does not trust")]
    WrongIssuer,
    #[error("the token is meant for another audience, not this network")]
    WrongAudience,
    #[error("the token lacks the '{0}' claim")]
    MissingClaim(String),
}

fn parse_algorithm(name: &str) -> Result<Algorithm> {
    let alg: Algorithm = name.parse().map_err(|_| Error::TokenConfig(format!("unknown algorithm '{name}'")))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(Error::TokenConfig(format!("{name} is symmetric; only asymmetric algorithms are accepted")));
    }
    Ok(alg)
}

pub struct Verifier {
    keys: std::sync::RwLock<HashMap<String, DecodingKey>>,
    issuer: String,
    audience: String,
    leeway: u64,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let mut kids: Vec<&String> = keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kids", &kids)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// Reads the keys of a JWKS document; only asymmetric keys, each with a kid.
fn parse_jwks(jwks: &str) -> Result<HashMap<String, DecodingKey>> {
    let set: JwkSet =
        serde_json::from_str(jwks).map_err(|e| Error::TokenConfig(format!("not a JWKS document: {e}")))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err(Error::TokenConfig("symmetric keys are not accepted in the JWKS".into()));
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            return Err(Error::TokenConfig("every key in the JWKS needs a kid".into()));
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| Error::TokenConfig(format!("key '{kid}': {e}")))?;
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(Error::TokenConfig("the JWKS holds no key".into()));
    }
    Ok(keys)
}

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Fetches a JWKS document over HTTPS (the URL was checked with [`TokenConfig::validate`]).
async fn fetch_jwks(client: &HttpsClient, url: &Uri) -> Result<String> {
    client.get(url, MAX_JWKS_BYTES).await.map_err(|error| Error::Fetch { url: settings::url_text(url), error })
}

impl Verifier {
    /// Loads the keys from `jwks_file`, or fetches them from `jwks_url` (and keeps fetching
    /// them every `jwks_refresh_seconds`, so that the provider can rotate its keys), through
    /// the environment's proxy if one is set (`HTTPS_PROXY`, `NO_PROXY`).
    pub async fn from_config(config: &TokenConfig) -> Result<std::sync::Arc<Self>> {
        config.validate()?;
        let egress = match &config.jwks_url {
            Some(_) => Egress::from_env()?,
            None => Egress::direct(),
        };
        Self::from_config_with(config, std::sync::Arc::new(egress)).await
    }

    /// As [`Verifier::from_config`], with the keys fetched through `egress` (a node's own way
    /// out, the same as its link's).
    pub async fn from_config_with(
        config: &TokenConfig,
        egress: std::sync::Arc<Egress>,
    ) -> Result<std::sync::Arc<Self>> {
        config.validate()?;
        let Some(url) = config.jwks_url.clone() else {
            return Ok(std::sync::Arc::new(Self::load(config)?));
        };
        let client = HttpsClient::new(config.jwks_ca.as_deref(), egress)?;
        let verifier = std::sync::Arc::new(Self::from_jwks(&fetch_jwks(&client, &url).await?, config)?);
        let weak = std::sync::Arc::downgrade(&verifier);
        let every = config.jwks_refresh.max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(verifier) = weak.upgrade() else { return };
                match fetch_jwks(&client, &url).await.and_then(|text| parse_jwks(&text)) {
                    Ok(keys) => *verifier.keys.write().unwrap_or_else(|p| p.into_inner()) = keys,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not refresh the token keys; keeping the previous ones")
                    }
                }
            }
        });
        Ok(verifier)
    }

    /// Loads the keys from `jwks_file`.
    pub fn load(config: &TokenConfig) -> Result<Self> {
        let Some(path) = &config.jwks_file else {
            return Err(Error::TokenConfig("no jwks_file configured".into()));
        };
        let text = crate::certs::read(path)?;
        let text = String::from_utf8_lossy(&text);
        Self::from_jwks(&text, config).map_err(|e| match e {
            Error::TokenConfig(m) => Error::TokenConfig(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn from_jwks(jwks: &str, config: &TokenConfig) -> Result<Self> {
        let algorithms = config.algorithms.iter().map(|a| parse_algorithm(a)).collect::<Result<Vec<_>>>()?;
        if algorithms.is_empty() {
            return Err(Error::TokenConfig("no algorithm allowed".into()));
        }
        Ok(Self {
            keys: std::sync::RwLock::new(parse_jwks(jwks)?),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway.as_secs(),
            algorithms,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::Json(_) => {
                TokenError::AlgorithmNotAllowed(header_alg(token).unwrap_or_else(|| "an unknown algorithm".into()))
            }
            _ => TokenError::Malformed(e.to_string()),
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(TokenError::MissingKeyId)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.get(&kid).ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)),
            _ => TokenError::Malformed(e.to_string()),
        })?;
        let raw: RawClaims =
            serde_json::from_value(data.claims.clone()).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let sub = raw.sub.filter(|s| !s.is_empty()).ok_or_else(|| TokenError::MissingClaim("sub".into()))?;
        let projects = raw.projects.ok_or_else(|| TokenError::MissingClaim("projects".into()))?;
        let number = |name: &str| data.claims.get(name).and_then(|v| v.as_u64());
        Ok(Claims {
            sub,
            projects,
            roles: raw.roles,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: number("exp").unwrap_or(0),
            nbf: number("nbf"),
        })
    }
}

/// The `alg` of a token header, read leniently (for messages about refused algorithms).
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_string)
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A local signing key standing in for the identity provider (demo and tests only).
pub struct DevIssuer {
    key: EncodingKey,
    pub kid: String,
    pub issuer: String,
    pub audience: String,
    /// The JWKS document with the public key, for verifiers.
    pub jwks: String,
    /// The private key in PKCS#8 PEM.
    pub key_pem: String,
}

impl DevIssuer {
    /// A new P-256 key for ES256 tokens.
    pub fn generate(kid: &str, issuer: &str, audience: &str) -> Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::from_key_pem(&pair.serialize_pem(), kid, issuer, audience)
    }

    pub fn from_key_pem(key_pem: &str, kid: &str, issuer: &str, audience: &str) -> Result<Self> {
        let pair = rcgen::KeyPair::from_pem(key_pem)?;
        let raw = pair.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err(Error::TokenConfig("the development key must be an uncompressed P-256 key".into()));
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({
            "keys": [{ "kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
                       "kid": kid, "alg": "ES256", "use": "sig" }]
        })
        .to_string();
        let key = EncodingKey::from_ec_pem(key_pem.as_bytes())
            .map_err(|e| Error::TokenConfig(format!("development key: {e}")))?;
        Ok(Self {
            key,
            kid: kid.into(),
            issuer: issuer.into(),
            audience: audience.into(),
            jwks,
            key_pem: key_pem.into(),
        })
    }

    /// Signs any claims with this key (tests build hostile tokens with it).
    pub fn sign(&self, claims: &serde_json::Value, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap_or_default()
    }

    /// A token for `sub` in `projects` with `roles`, valid for `ttl`.
    pub fn issue(&self, sub: &str, projects: &[&str], roles: &[&str], ttl: Duration) -> String {
        let now = now_unix();
        let claims = serde_json::json!({
            "sub": sub, "projects": projects, "roles": roles,
            "iss": self.issuer, "aud": self.audience,
            "iat": now, "nbf": now, "exp": now + ttl.as_secs(),
        });
        self.sign(&claims, Some(&self.kid))
    }

    /// The verifier configuration matching this issuer, with its JWKS written to `jwks_file`.
    pub fn write_jwks(&self, jwks_file: &Path) -> Result<TokenConfig> {
        std::fs::write(jwks_file, &self.jwks).map_err(|error| Error::Write { path: jwks_file.to_path_buf(), error })?;
        Ok(TokenConfig {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            jwks_file: Some(jwks_file.to_path_buf()),
            jwks_url: None,
            jwks_ca: None,
            jwks_refresh: default_refresh(),
            leeway: default_leeway(),
            algorithms: default_algorithms(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (DevIssuer, Verifier) {
        crate::install_crypto();
        let issuer = DevIssuer::generate("k1", "https://idp.test", "verbund").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = issuer.write_jwks(&dir.path().join("jwks.json")).unwrap();
        let verifier = Verifier::load(&config).unwrap();
        (issuer, verifier)
    }

    #[test]
    fn file_and_url_are_exclusive() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (issuer, _) = setup();
        let dir = tempfile::tempdir().unwrap();
        let mut config = issuer.write_jwks(&dir.path().join("jwks.json")).unwrap();
        config.jwks_url = Some("https://idp.test/certs".parse().unwrap());
        let e = rt.block_on(Verifier::from_config(&config)).unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");
        config.jwks_file = None;
        config.jwks_url = Some("http://idp.test/certs".parse().unwrap());
        let e = rt.block_on(Verifier::from_config(&config)).unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn the_auth_section_reads_and_writes_the_same() {
        let text = r#"{"issuer": "https://idp.test", "audience": "verbund",
                       "jwks_url": "https://idp.test/certs", "leeway_seconds": 5}"#;
        let config: TokenConfig = serde_json::from_str(text).unwrap();
        assert_eq!(config.jwks_url.as_ref().unwrap().host(), Some("idp.test"));
        assert_eq!((config.leeway, config.jwks_refresh), (Duration::from_secs(5), default_refresh()));
        config.validate().unwrap();
        let written = serde_json::to_value(&config).unwrap();
        assert_eq!(written["jwks_url"], "https://idp.test/certs");
        assert_eq!(written["jwks_refresh_seconds"], 300);
        assert!(written.get("jwks_file").is_none());
        assert_eq!(serde_json::from_value::<TokenConfig>(written).unwrap(), config);

        let bad = text.replace("https://idp.test/certs", "https://idp test/certs");
        let e = serde_json::from_str::<TokenConfig>(&bad).unwrap_err().to_string();
        assert!(e.contains("jwks_url"), "{e}");
        let plain: TokenConfig =
            serde_json::from_str(&text.replace("https://idp.test/certs", "http://idp.test")).unwrap();
        assert!(plain.validate().unwrap_err().to_string().contains("jwks_url must be an https://"));
    }

    #[test]
    fn a_good_token_verifies() {
        let (issuer, verifier) = setup();
        let token = issuer.issue("alice", &["diabetes"], &["researcher"], Duration::from_secs(60));
        let claims = verifier.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.projects, vec!["diabetes"]);
        assert_eq!(claims.roles, vec!["researcher"]);
    }

    #[test]
    fn symmetric_algorithms_cannot_be_configured() {
        let config = TokenConfig {
            issuer: "i".into(),
            audience: "a".into(),
            jwks_file: Some("x".into()),
            jwks_url: None,
            jwks_ca: None,
            jwks_refresh: Duration::from_secs(1),
            leeway: Duration::ZERO,
            algorithms: vec!["HS256".into()],
        };
        assert!(Verifier::from_jwks(r#"{"keys":[]}"#, &config).unwrap_err().to_string().contains("symmetric"));
    }
}
