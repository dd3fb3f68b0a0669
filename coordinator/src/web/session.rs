//! Logging in: the researcher pastes their token once; it is checked as the API checks it and
//! kept in a cookie the page's script cannot read (HttpOnly), sent only over TLS (Secure) and
//! only with the page's own requests (SameSite=Strict). Every request checks it again, so an
//! expired or revoked token ends the session at once.

use super::view::{self, Nav};
use super::{PageError, Web};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use verbund_security::token::Claims;

/// The session cookie's name.
pub const COOKIE: &str = "verbund_session";

/// A logged-in browser: the token's verified claims and the token itself.
pub(crate) struct Session {
    pub claims: Claims,
    pub token: String,
}

impl Session {
    pub fn has_role(&self, role: &str) -> bool {
        self.claims.roles.iter().any(|r| r == role)
    }

    pub fn is_auditor(&self) -> bool {
        self.has_role(verbund_audit::remote::AUDITOR_ROLE)
    }

    pub fn is_operator(&self) -> bool {
        self.has_role(crate::api::OPERATOR_ROLE)
    }

    /// Auditors review the record and do not add to it (the API refuses their queries too).
    pub fn can_query(&self) -> bool {
        !self.is_auditor() && !self.claims.projects.is_empty()
    }

    /// The operators' view: site health, certificates, every project's budget.
    pub fn can_oversee(&self) -> bool {
        self.is_auditor() || self.is_operator()
    }

    pub fn nav(&self, current: &'static str) -> Nav {
        Nav {
            current,
            user: self.claims.sub.clone(),
            roles: self.claims.roles.join(", "),
            research: self.can_query(),
            oversee: self.can_oversee(),
            audit: self.is_auditor(),
        }
    }

    /// `message` as an API request carrying this session's token.
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>, PageError> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| PageError::bad_request("the session's token is not usable; log in again"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// The operators' pages: refused (403) for a token without the role.
    pub fn require_oversight(&self) -> Result<(), PageError> {
        if self.can_oversee() {
            return Ok(());
        }
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "this view is for tokens with the role 'operator' or 'auditor'; your token has: ".to_string()
                + &self.claims.roles.join(", "),
        )
        .with_nav(self.nav("")))
    }
}

/// Not logged in, or the token no longer valid: to the login page, saying why.
pub(crate) struct LoginFirst(Option<String>);

impl IntoResponse for LoginFirst {
    fn into_response(self) -> Response {
        match self.0 {
            None => Redirect::to("/login").into_response(),
            Some(why) => {
                let page = view::Login { nav: Nav::none(), error: why };
                let mut response = view::render(StatusCode::UNAUTHORIZED, &page);
                response.headers_mut().insert(header::SET_COOKIE, clear_cookie());
                response
            }
        }
    }
}

impl FromRequestParts<Web> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            same_origin(&parts.headers, parts.uri.authority().map(|a| a.as_str())).map_err(|e| e.into_response())?;
        }
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(LoginFirst(None).into_response());
        };
        match web.coordinator.tokens().verify(&token) {
            Ok(claims) => Ok(Session { claims, token }),
            Err(e) => Err(LoginFirst(Some(format!("your session ended: {e}"))).into_response()),
        }
    }
}

/// A form posted from another site is refused: the cookie is SameSite=Strict already, and the
/// browser's Origin (or Sec-Fetch-Site) header must name this page.
fn same_origin(headers: &HeaderMap, authority: Option<&str>) -> Result<(), PageError> {
    let refused = || {
        tracing::warn!(
            origin = ?headers.get(header::ORIGIN),
            fetch_site = ?headers.get("sec-fetch-site"),
            authority = ?authority,
            host = ?headers.get(header::HOST),
            "web: a form from another site was refused"
        );
        PageError::new(StatusCode::FORBIDDEN, "Not allowed", "a form of another site cannot act here")
    };
    if let Some(site) = headers.get("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Err(refused());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = authority.or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        let ours = host.is_some_and(|host| origin.to_str().is_ok_and(|o| o == format!("https://{host}")));
        if !ours {
            return Err(refused());
        }
    }
    Ok(())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("verbund_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict")
}

pub async fn home(session: Result<Session, Response>) -> Response {
    match session {
        Err(_) => Redirect::to("/login").into_response(),
        Ok(s) if s.can_query() => Redirect::to("/query").into_response(),
        Ok(s) if s.can_oversee() => Redirect::to("/operations").into_response(),
        Ok(_) => Redirect::to("/sites").into_response(),
    }
}

pub async fn login_page() -> Response {
    view::render(StatusCode::OK, &view::Login { nav: Nav::none(), error: String::new() })
}

/// Checks the pasted token as the API would and keeps it in the session cookie until it expires.
pub async fn login(State(web): State<Web>, uri: Uri, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(e) = same_origin(&headers, uri.authority().map(|a| a.as_str())) {
        return e.into_response();
    }
    let token = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.trim().to_string());
    let refuse = |error: String| view::render(StatusCode::UNAUTHORIZED, &view::Login { nav: Nav::none(), error });
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return refuse("paste your token (the demo prints the path of its token file)".into());
    };
    let claims = match web.coordinator.tokens().verify(&token) {
        Ok(claims) => claims,
        Err(e) => return refuse(format!("this token is not accepted: {e}")),
    };
    // A token is header-safe text; anything else cannot be a cookie.
    if !token.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return refuse("this token is not accepted: it is not a JWT (letters, digits, '-', '_' and '.')".into());
    }
    let now = crate::queries::now_ms() / 1000;
    let max_age = claims.exp.saturating_sub(now);
    let cookie = format!("{COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict");
    let Ok(cookie) = HeaderValue::from_str(&cookie) else {
        return refuse("this token is not accepted: it cannot be kept in a cookie".into());
    };
    tracing::info!(subject = %claims.sub, "web login");
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

pub async fn logout(uri: Uri, headers: HeaderMap) -> Response {
    if let Err(e) = same_origin(&headers, uri.authority().map(|a| a.as_str())) {
        return e.into_response();
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = headers(&[("cookie", "a=1; verbund_session=abc.def; b=2")]);
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc.def"));
        assert_eq!(cookie(&headers(&[("cookie", "verbund_sessionx=1")]), COOKIE), None);
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        assert!(same_origin(&headers(&[("origin", "https://127.0.0.1:8443")]), Some("127.0.0.1:8443")).is_ok());
        assert!(same_origin(&headers(&[("origin", "https://evil.example")]), Some("127.0.0.1:8443")).is_err());
        assert!(same_origin(&headers(&[("sec-fetch-site", "cross-site")]), Some("127.0.0.1:8443")).is_err());
        assert!(same_origin(&headers(&[("origin", "null")]), Some("127.0.0.1:8443")).is_err());
        // Non-browser clients send neither header.
        assert!(same_origin(&HeaderMap::new(), Some("127.0.0.1:8443")).is_ok());
    }
}
