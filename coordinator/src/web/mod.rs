//! The web page (docs/web.md): a browser front-end over the researcher API, served on the
//! API's TLS listener. Every page calls the same `Researcher` methods a gRPC client does, with
//! the token from the session cookie as its Bearer token: the same checks, audit records,
//! metrics and drain apply, and a page can show nothing the API would not release.
//!
//! Pages are rendered on the server (askama templates in `coordinator/templates/`); one small
//! script and one style sheet are embedded in the binary. No resource comes from elsewhere and
//! the Content-Security-Policy allows nothing else.

mod assets;
mod chart;
mod model;
mod oversight;
mod research;
mod session;
mod view;

use crate::Coordinator;
use crate::api::ResearcherService;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

pub use session::COOKIE;

/// What every handler holds: the coordinator and the API it calls.
#[derive(Clone)]
pub(crate) struct Web {
    pub coordinator: Arc<Coordinator>,
    pub api: Arc<ResearcherService>,
}

/// The strictest policy the page works under: its own script and style sheet only, no inline
/// code, no frames, forms post only to the page itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The page's routes, to merge with the gRPC services on the API listener.
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    let web = Web { api: Arc::new(ResearcherService::new(coordinator.clone())), coordinator };
    Router::new()
        .route("/", get(session::home))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/static/verbund.css", get(assets::css))
        .route("/static/verbund.js", get(assets::js))
        .route("/sites", get(research::sites))
        .route("/query", get(research::query_form).post(research::submit))
        .route("/model", get(model::model_form).post(model::submit))
        .route("/queries", get(research::queries))
        .route("/queries/{id}", get(research::query_page))
        .route("/queries/{id}/result.csv", get(research::csv))
        .route("/queries/{id}/cancel", post(research::cancel))
        .route("/operations", get(oversight::operations))
        .route("/audit", get(oversight::audit))
        .route("/audit/record", get(oversight::record))
        .route("/audit/verify", post(oversight::verify))
        .route("/audit/reconcile", get(oversight::reconcile))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

/// A path no page or gRPC service has: gRPC's "unimplemented" for gRPC clients, a page for
/// browsers.
pub async fn fallback(request: axum::extract::Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let status = tonic::Status::unimplemented(format!("no service at {}", request.uri().path()));
        let (parts, ()) = status.into_http::<()>().into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    let page = view::Message::new("Not found", "There is no page here. Use the links above.");
    security_headers(view::render(StatusCode::NOT_FOUND, &page)).await
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not "no-referrer": browsers then send `Origin: null` with forms, which the origin check refuses.
        (header::REFERRER_POLICY, "same-origin"),
        // Pages hold results and audit records: no copy in a shared cache or the back button.
        (header::CACHE_CONTROL, "no-store"),
        (header::HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        (header::HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A page's failure: the status code and a page that says what went wrong and what to do.
pub(crate) struct PageError {
    status: StatusCode,
    title: &'static str,
    message: String,
    /// The logged-in user's links, where known (a refused view still offers the others).
    nav: Option<view::Nav>,
}

impl PageError {
    pub fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Self { status, title, message: message.into(), nav: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", message)
    }

    pub fn status_code(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn with_nav(mut self, nav: view::Nav) -> Self {
        self.nav = Some(nav);
        self
    }
}

/// The API's refusal, as a page: the code decides the HTTP status, the message is the API's.
impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let (code, title) = match status.code() {
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "Please log in again"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "Not allowed"),
            Code::NotFound => (StatusCode::NOT_FOUND, "Not found"),
            Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => {
                (StatusCode::BAD_REQUEST, "Not accepted")
            }
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "Limit reached"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "Failed"),
        };
        Self::new(code, title, status.message())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let mut page = view::Message::new(self.title, &self.message);
        if let Some(nav) = self.nav {
            page.nav = nav;
        }
        let mut response = view::render(self.status, &page);
        if self.status == StatusCode::UNAUTHORIZED {
            // An expired or revoked token: forget it, so the next page offers the login.
            response.headers_mut().insert(header::SET_COOKIE, session::clear_cookie());
        }
        response
    }
}
