//! The model form: a federated regression (docs/regression.md) submitted like a query; its
//! page shows the fit as R's summary() prints it.

use super::research::{pairs, query_link, value};
use super::session::Session;
use super::view::{self, ModelForm};
use super::{PageError, Web};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use tonic::Code;
use verbund_proto::v1 as pb;
use verbund_proto::v1::researcher_server::Researcher;

/// The families the form offers: (form value, label, wire family).
const FAMILIES: [(&str, &str, pb::ModelFamily); 3] = [
    ("linear", "linear (gaussian)", pb::ModelFamily::Gaussian),
    ("logistic", "logistic (binomial, outcome 0/1)", pb::ModelFamily::Binomial),
    ("poisson", "Poisson (outcome a count)", pb::ModelFamily::Poisson),
];

fn empty(session: &Session) -> ModelForm {
    ModelForm {
        nav: session.nav("model"),
        projects: session.claims.projects.clone(),
        project: session.claims.projects.first().cloned().unwrap_or_default(),
        families: FAMILIES.iter().map(|(value, label, _)| (*value, *label)).collect(),
        family: "linear".into(),
        dataset: "patients".into(),
        ..Default::default()
    }
}

pub async fn model_form(session: Session) -> Response {
    view::render(StatusCode::OK, &empty(&session))
}

pub async fn submit(State(web): State<Web>, session: Session, body: axum::body::Bytes) -> Result<Response, PageError> {
    let fields = pairs(&body);
    let mut page = empty(&session);
    page.project = value(&fields, "project");
    page.dataset = value(&fields, "dataset");
    page.outcome = value(&fields, "outcome");
    page.covariates = value(&fields, "covariates");
    page.family = value(&fields, "family");
    page.condition = value(&fields, "condition");
    let Some((_, _, family)) = FAMILIES.iter().find(|(v, _, _)| *v == page.family) else {
        page.error_form = format!("unknown family '{}'; choose linear, logistic or Poisson", page.family);
        return Ok(view::render(StatusCode::BAD_REQUEST, &page));
    };
    if page.outcome.is_empty() {
        page.error_outcome = "name the outcome column".into();
        return Ok(view::render(StatusCode::BAD_REQUEST, &page));
    }
    let covariates = page
        .covariates
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|column| pb::ModelTerm { column: column.to_string(), ..Default::default() })
        .collect();
    let model = pb::ResearchModel {
        project: page.project.clone(),
        dataset: page.dataset.clone(),
        outcome: page.outcome.clone(),
        covariates,
        family: *family as i32,
        condition: page.condition.clone(),
        ..Default::default()
    };
    let request = pb::SubmitRequest { request: Some(pb::submit_request::Request::Model(model)) };
    match web.api.submit(session.request(request)?).await {
        Ok(status) => Ok(Redirect::to(&query_link(&status.into_inner().query_id, "")).into_response()),
        Err(status) => {
            let message = status.message().to_string();
            let lower = message.to_lowercase();
            match status.code() {
                Code::PermissionDenied if lower.contains("project") => page.error_project = message,
                Code::InvalidArgument if lower.contains("outcome") => page.error_outcome = message,
                Code::InvalidArgument if lower.contains("covariate") => page.error_covariates = message,
                Code::InvalidArgument if lower.contains("dataset") => page.error_dataset = message,
                Code::InvalidArgument if !page.condition.is_empty() => page.error_condition = message,
                _ => page.error_form = message,
            }
            Ok(view::render(PageError::from(status).status_code(), &page))
        }
    }
}
