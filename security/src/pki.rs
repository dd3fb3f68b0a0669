//! A network's own PKI, for networks without one: a CA, a server certificate for the
//! coordinator and a client certificate per site (the site's name in a `urn:verbund:site:`
//! URI). Institutions with their own PKI use their files instead; see the README.

use crate::certs::SITE_URI_PREFIX;
use crate::files::{Overwrite, write_secret};
use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// A certificate and its key in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<dir>/<name>.key` (readable by its owner only from the start; an existing key
    /// is replaced only with [`Overwrite::Replace`]), then `<dir>/<name>.pem`.
    pub fn write(&self, dir: &Path, name: &str, overwrite: Overwrite) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).map_err(|error| Error::Write { path: dir.to_path_buf(), error })?;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_secret(&key, self.key_pem.as_bytes(), overwrite)?;
        std::fs::write(&cert, &self.cert_pem).map_err(|error| Error::Write { path: cert.clone(), error })?;
        Ok((cert, key))
    }
}

/// Validity of an issued certificate, relative to now.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub starts_in: Duration,
    pub lasts: Duration,
}

impl Validity {
    pub fn days(days: i64) -> Self {
        Self { starts_in: Duration::minutes(-5), lasts: Duration::days(days) }
    }
}

pub struct NetworkCa {
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
    pub cert_pem: String,
}

fn base_params(common_name: &str, validity: Validity) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "verbund");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now + validity.starts_in;
    params.not_after = now + validity.starts_in + validity.lasts;
    Ok(params)
}

impl NetworkCa {
    /// A new CA for the network `name`.
    pub fn create(name: &str, validity: Validity) -> Result<Self> {
        let mut params = base_params(&format!("{name} network CA"), validity)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Self { issuer: Issuer::new(params, key), key_pem, cert_pem })
    }

    /// Loads a CA from its certificate and key files (to issue more certificates).
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = String::from_utf8_lossy(&crate::certs::read(cert)?).to_string();
        let key_pem = String::from_utf8_lossy(&crate::certs::read(key)?).to_string();
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { issuer, key_pem, cert_pem })
    }

    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A server certificate for the coordinator, valid for the given DNS names / IP addresses.
    pub fn issue_coordinator(&self, names: &[String], validity: Validity) -> Result<Issued> {
        let first = names.first().ok_or(Error::NoCoordinatorName)?;
        let mut params = base_params(first, validity)?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate naming a site.
    pub fn issue_site(&self, site: &str, validity: Validity) -> Result<Issued> {
        if site.is_empty() || !site.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(Error::InvalidSiteName(site.to_string()));
        }
        let mut params = base_params(site, validity)?;
        params.subject_alt_names = vec![SanType::URI(format!("{SITE_URI_PREFIX}{site}").try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Writes `<dir>/ca.key` and `<dir>/ca.pem`. A network keeps its CA: an existing
    /// `ca.key` is never replaced.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        Issued { cert_pem: self.cert_pem.clone(), key_pem: self.key_pem() }.write(dir, "ca", Overwrite::Refuse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertInfo;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn site_certificates_name_their_site() {
        let ca = NetworkCa::create("test", Validity::days(10)).unwrap();
        let site = ca.issue_site("uniklinik-nord", Validity::days(5)).unwrap();
        let der = CertificateDer::from_pem_slice(site.cert_pem.as_bytes()).unwrap();
        let info = CertInfo::parse(&der).unwrap();
        assert_eq!(info.identity.as_deref(), Some("uniklinik-nord"));
        assert!(info.is_site_certificate);
        let left = info.expires_in().unwrap().as_secs();
        assert!(left > 4 * 86400 && left < 6 * 86400);
        assert!(ca.issue_site("bad name", Validity::days(1)).is_err());

        let server = ca.issue_coordinator(&["localhost".into(), "127.0.0.1".into()], Validity::days(1)).unwrap();
        let der = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap();
        assert!(!CertInfo::parse(&der).unwrap().is_site_certificate);
    }

    #[test]
    fn a_ca_written_to_disk_can_issue_later() {
        let dir = tempfile::tempdir().unwrap();
        let ca = NetworkCa::create("test", Validity::days(10)).unwrap();
        let (cert, key) = ca.write(dir.path()).unwrap();
        let loaded = NetworkCa::load(&cert, &key).unwrap();
        let site = loaded.issue_site("klinikum-sued", Validity::days(1)).unwrap();
        assert!(site.cert_pem.contains("BEGIN CERTIFICATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = NetworkCa::create("test", Validity::days(10)).unwrap();
        assert!(matches!(again.write(dir.path()), Err(Error::Exists { .. })), "a CA key is never replaced");
        assert_eq!(NetworkCa::load(&cert, &key).unwrap().key_pem(), ca.key_pem());
    }
}
