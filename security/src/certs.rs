//! Reading certificates and keys from PEM files, and what verbund needs to know about a
//! certificate: whose it is and until when it is valid.

use crate::{CertificateProblem, Error, PemProblem, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The URI a site certificate carries in its subject alternative names.
pub const SITE_URI_PREFIX: &str = "urn:verbund:site:";

/// Certificates expiring sooner than this are reported as a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| Error::Read { path: path.to_path_buf(), error })
}

/// All certificates of a PEM file (a chain or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem { path: path.to_path_buf(), problem: PemProblem::Malformed(e.to_string()) })?;
    if certs.is_empty() {
        return Err(Error::Pem { path: path.to_path_buf(), problem: PemProblem::NoCertificate });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| Error::Pem { path: path.to_path_buf(), problem: PemProblem::NoPrivateKey(e.to_string()) })
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    /// The site named by a `urn:verbund:site:` URI, else the subject's common name.
    pub identity: Option<String>,
    /// Whether the identity came from a verbund site URI.
    pub is_site_certificate: bool,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> std::result::Result<Self, CertificateProblem> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CertificateProblem::Unparseable(e.to_string()))?;
        let mut site_uri = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name
                    && let Some(site) = uri.strip_prefix(SITE_URI_PREFIX)
                {
                    site_uri = Some(site.to_string());
                }
            }
        }
        let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
        Ok(Self {
            is_site_certificate: site_uri.is_some(),
            identity: site_uri.or(common_name),
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let certs = load_certs(path)?;
        Self::parse(&certs[0]).map_err(|problem| Error::Certificate { path: path.to_path_buf(), problem })
    }

    pub fn expires_in(&self) -> Option<Duration> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        (self.not_after_unix > now).then(|| Duration::from_secs((self.not_after_unix - now) as u64))
    }

    pub fn expired(&self) -> bool {
        self.expires_in().is_none()
    }

    /// Logs a warning for a certificate that expires soon, an error for an expired one.
    pub fn report(&self, what: &str, path: &Path) {
        match self.expires_in() {
            None => tracing::error!(certificate = %path.display(), "{what} certificate has EXPIRED; renew it"),
            Some(left) if left < EXPIRY_WARNING => tracing::warn!(
                certificate = %path.display(),
                days_left = left.as_secs() / 86400,
                "{what} certificate expires soon; renew it"
            ),
            Some(_) => {}
        }
    }
}
