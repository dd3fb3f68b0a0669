//! A small HTTPS GET client for the identity provider's keys. It connects through an
//! [`Egress`] like every other outbound connection (directly or through the proxy's tunnel),
//! and checks the server against its own trust (`jwks_ca` or the system's roots), apart from
//! the proxy's: a hospital CA trusted for the proxy vouches for nothing else.

use crate::egress::{Egress, EgressError};
use crate::settings::{Uri, url_text};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// How long the request may take once connected (TLS, request, answer).
const REQUEST_TIME: Duration = Duration::from_secs(10);
/// Redirects followed (to `https://` only).
const MAX_REDIRECTS: usize = 5;

/// Why a document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error("TLS with {host} failed: {error}")]
    Tls { host: String, error: std::io::Error },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the server answered {0}")]
    Status(u16),
    #[error("the server redirects to '{0}', which is not an https:// address")]
    Redirect(String),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("the document is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the document is not UTF-8 text")]
    NotText,
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("reading the answer: {0}")]
    Body(String),
}

/// HTTPS GET through an [`Egress`].
pub struct HttpsClient {
    tls: TlsConnector,
    egress: Arc<Egress>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").field("egress", &self.egress).finish()
    }
}

enum Fetched {
    Body(String),
    Redirect(Uri),
}

impl HttpsClient {
    /// A client trusting the CA bundle `ca` (the system's roots when `None`).
    pub fn new(ca: Option<&Path>, egress: Arc<Egress>) -> crate::Result<Self> {
        let config = crate::tls::https_client_config(ca, b"http/1.1")?;
        Ok(Self { tls: TlsConnector::from(config), egress })
    }

    /// The body of `url` (`https://` only) as text, at most `limit` bytes.
    pub async fn get(&self, url: &Uri, limit: usize) -> Result<String, FetchError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let within = self.egress.connect_timeout() + REQUEST_TIME;
            match tokio::time::timeout(within, self.get_once(&url, limit)).await {
                Err(_) => return Err(FetchError::Timeout(within)),
                Ok(Ok(Fetched::Body(text))) => return Ok(text),
                Ok(Ok(Fetched::Redirect(next))) => url = next,
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(FetchError::TooManyRedirects)
    }

    async fn get_once(&self, url: &Uri, limit: usize) -> Result<Fetched, FetchError> {
        if url.scheme_str() != Some("https") {
            return Err(FetchError::Redirect(url_text(url)));
        }
        let authority = url.authority().ok_or_else(|| EgressError::NoHost(url_text(url)))?.clone();
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| FetchError::Tls {
            host: host.clone(),
            error: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        let stream = self.egress.connect(url).await?;
        let tls = self.tls.connect(name, stream).await.map_err(|error| FetchError::Tls { host, error })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        // The connection is driven beside the request, and stopped with it.
        let driver = tokio::spawn(connection);
        let _stop = AbortOnDrop(driver);
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::get(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::USER_AGENT, concat!("verbund/", env!("CARGO_PKG_VERSION")))
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Body(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        if status.is_redirection() {
            let location = response.headers().get(http::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("");
            return redirect_target(&authority, location).map(Fetched::Redirect);
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let body = Limited::new(response.into_body(), limit).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                FetchError::TooLarge(limit)
            } else {
                FetchError::Body(e.to_string())
            }
        })?;
        String::from_utf8(body.to_bytes().to_vec()).map(Fetched::Body).map_err(|_| FetchError::NotText)
    }
}

/// Where a redirect leads: an absolute `https://` URL, or a path on the same server.
fn redirect_target(authority: &http::uri::Authority, location: &str) -> Result<Uri, FetchError> {
    let shown = || location.chars().filter(|c| c.is_ascii_graphic()).take(120).collect::<String>();
    let text = if location.starts_with('/') && !location.starts_with("//") {
        format!("https://{authority}{location}")
    } else {
        location.to_string()
    };
    match text.parse::<Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => Ok(uri),
        _ => Err(FetchError::Redirect(shown())),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_lead_only_to_https() {
        let authority: http::uri::Authority = "idp.test:8443".parse().unwrap();
        assert_eq!(redirect_target(&authority, "/certs?x=1").unwrap().to_string(), "https://idp.test:8443/certs?x=1");
        assert_eq!(redirect_target(&authority, "https://other.test/k").unwrap().host(), Some("other.test"));
        assert!(matches!(redirect_target(&authority, "http://other.test/k"), Err(FetchError::Redirect(_))));
        assert!(matches!(redirect_target(&authority, "//other.test/k"), Err(FetchError::Redirect(_))));
        assert!(matches!(redirect_target(&authority, ""), Err(FetchError::Redirect(_))));
    }
}
