//! Trust for a verbund network: the network's PKI (rcgen), mutual TLS configuration with
//! rustls (reloaded when the files change), certificate identities and expiry, and the
//! verification of researchers' JWTs. Node and coordinator both use it, so neither trusts
//! the other's word.

pub mod certs;
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
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("certificate {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("token configuration: {0}")]
    TokenConfig(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Installs the process-wide rustls crypto provider (aws-lc-rs, the one tonic, rcgen and
/// jsonwebtoken are built with here). Safe to call more than once.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
