//! `verbund model`: fits a linear, logistic or Poisson model across the sites
//! (docs/regression.md) and prints it as R's `summary()` does, with the sites' outcomes.

use crate::{ResearcherConnection, connect, print, read_ccdl, render};
use anyhow::{Context, bail};
use clap::ValueEnum;
use serde_json::json;
use std::path::PathBuf;
use verbund_proto::v1 as pb;
use verbund_proto::v1::literal::Value;

/// The flags of `verbund model`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub connection: ResearcherConnection,
    /// The research project the model belongs to (one your token grants).
    #[arg(long, env = "VERBUND_PROJECT")]
    pub project: String,
    /// linear (alias gaussian), logistic (alias binomial; outcome 0/1 or boolean) or poisson
    /// (outcome a count).
    #[arg(long, value_enum)]
    pub family: ModelFamily,
    /// The outcome column.
    #[arg(long)]
    pub outcome: String,
    /// Covariate columns, comma-separated (repeatable): string and boolean columns are
    /// categorical, numeric ones numeric unless listed in --categorical. None: intercept only.
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    pub covariates: Vec<String>,
    /// The dataset whose rows (one per patient) are modelled.
    #[arg(long)]
    pub dataset: String,
    /// A SQL condition on the dataset's columns, as after WHERE, e.g. "age >= 18".
    #[arg(long = "where", value_name = "CONDITION")]
    pub condition: Option<String>,
    /// A CCDL (structured query) JSON file ("-": standard input): only its patients count.
    #[arg(long)]
    pub ccdl: Option<PathBuf>,
    /// Numeric covariates to treat as categorical (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    pub categorical: Vec<String>,
    /// The reference level of a categorical covariate as COLUMN=LEVEL (repeatable); default:
    /// the first level in sorted order. The level is text, true/false for a boolean, or an
    /// integer for a column listed in --categorical.
    #[arg(long = "reference", value_name = "COLUMN=LEVEL", value_parser = parse_reference)]
    pub references: Vec<(String, String)>,
    /// Fit without an intercept.
    #[arg(long)]
    pub no_intercept: bool,
    /// IRLS iterations at most (logistic, Poisson); 0: 25 (R's default).
    #[arg(long, default_value_t = 0)]
    pub max_iterations: u32,
    /// Ask only these sites (repeatable); all connected sites by default.
    #[arg(long = "site", value_name = "SITE")]
    pub sites: Vec<String>,
    /// Deadline of the whole fit in milliseconds (0: the coordinator's default).
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u32,
    /// Print one JSON object: {"fit", "sites", "notes", "rounds", "attempts"}.
    #[arg(long)]
    pub json: bool,
    /// Submit the fit and return at once with its id (`verbund status`, `verbund result`).
    #[arg(long)]
    pub submit: bool,
    /// The fit's id (yours alone; one is made when absent).
    #[arg(long, default_value = "")]
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelFamily {
    #[value(alias = "gaussian")]
    Linear,
    #[value(alias = "binomial")]
    Logistic,
    Poisson,
}

impl From<ModelFamily> for pb::ModelFamily {
    fn from(f: ModelFamily) -> Self {
        match f {
            ModelFamily::Linear => pb::ModelFamily::Gaussian,
            ModelFamily::Logistic => pb::ModelFamily::Binomial,
            ModelFamily::Poisson => pb::ModelFamily::Poisson,
        }
    }
}

/// "sex=female" → ("sex", "female").
fn parse_reference(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((column, level)) if !column.trim().is_empty() && !level.is_empty() => {
            Ok((column.trim().to_string(), level.to_string()))
        }
        _ => Err(format!("'{text}' is not COLUMN=LEVEL, e.g. sex=female")),
    }
}

/// A reference level as the literal sent: true/false as a boolean, an integer as one for a
/// column listed in --categorical (a numeric column), text otherwise.
fn reference_literal(level: &str, numeric_categorical: bool) -> pb::Literal {
    let value = match level {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match level.parse::<i64>() {
            Ok(i) if numeric_categorical => Value::Int64(i),
            _ => Value::String(level.to_string()),
        },
    };
    pb::Literal { value: Some(value) }
}

/// The request `verbund model` sends (the CCDL file read already, as `ccdl`).
pub fn request(args: &ModelArgs, ccdl: String) -> anyhow::Result<pb::ResearchModel> {
    let covariates: Vec<String> =
        args.covariates.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    if covariates.is_empty() && args.no_intercept {
        bail!("a model without an intercept needs at least one covariate (--covariates)");
    }
    for (i, c) in covariates.iter().enumerate() {
        if covariates[..i].contains(c) {
            bail!("--covariates names '{c}' twice");
        }
        if *c == args.outcome {
            bail!("'{c}' is the outcome; it cannot be a covariate too");
        }
    }
    let categorical: Vec<&str> = args.categorical.iter().map(|c| c.trim()).filter(|c| !c.is_empty()).collect();
    if let Some(c) = categorical.iter().find(|c| !covariates.iter().any(|v| v == *c)) {
        bail!("--categorical {c}: '{c}' is not among --covariates");
    }
    for (i, (column, _)) in args.references.iter().enumerate() {
        if !covariates.contains(column) {
            bail!("--reference {column}=...: '{column}' is not among --covariates");
        }
        if args.references[..i].iter().any(|(c, _)| c == column) {
            bail!("--reference names a level for '{column}' twice");
        }
    }
    let terms = covariates
        .iter()
        .map(|column| {
            let is_categorical = categorical.contains(&column.as_str());
            let reference = args
                .references
                .iter()
                .find(|(c, _)| c == column)
                .map(|(_, level)| reference_literal(level, is_categorical));
            pb::ModelTerm { column: column.clone(), categorical: is_categorical, reference }
        })
        .collect();
    Ok(pb::ResearchModel {
        query_id: String::new(),
        project: args.project.clone(),
        sites: args.sites.clone(),
        timeout_ms: args.timeout_ms,
        dataset: args.dataset.clone(),
        outcome: args.outcome.clone(),
        covariates: terms,
        family: pb::ModelFamily::from(args.family) as i32,
        no_intercept: args.no_intercept,
        max_iterations: args.max_iterations,
        condition: args.condition.clone().unwrap_or_default(),
        cohort: None,
        ccdl,
    })
}

/// Runs `verbund model`: builds the request, asks the coordinator, prints the fit.
pub async fn run(args: ModelArgs) -> anyhow::Result<()> {
    let ccdl = match &args.ccdl {
        Some(path) => read_ccdl(path)?,
        None => String::new(),
    };
    let mut request = request(&args, ccdl)?;
    request.query_id = args.id.clone();
    let submit = pb::SubmitRequest { request: Some(pb::submit_request::Request::Model(request)) };
    let format = if args.json { crate::OutputFormat::Json } else { crate::OutputFormat::Table };
    if args.submit {
        return crate::jobs::submit(&args.connection, submit, format).await;
    }
    let (mut client, token) = connect(&args.connection).await?;
    let response = crate::jobs::run_to_end(&mut client, &token, submit, args.json).await?;
    print(&crate::jobs::render_result(&response, format)?)
}

/// A fit for people (R's summary, the sites, the notes, rounds and attempts) or, with `json`,
/// one JSON object {"fit", "sites", "notes", "rounds", "attempts"}.
pub fn render(r: &pb::ModelResponse, json: bool) -> anyhow::Result<String> {
    if json {
        let fit: serde_json::Value = if r.fit_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&r.fit_json).context("the coordinator's fit is not valid JSON")?
        };
        let sites: Vec<serde_json::Value> = r.sites.iter().map(|s| render::site_json(s, false)).collect();
        return Ok(serde_json::to_string_pretty(&json!({
            "fit": fit,
            "sites": sites,
            "notes": r.notes,
            "rounds": r.rounds,
            "attempts": r.attempts,
        }))?);
    }
    let mut out = if r.summary.trim().is_empty() { "(no fit)".to_string() } else { r.summary.trim_end().to_string() };
    out.push_str("\n\n");
    out.push_str(&render::site_table(&r.sites, false));
    out.push_str(&render::notes(&r.notes));
    out.push_str(&format!("\nrounds: {}, attempts: {}", r.rounds, r.attempts));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ModelArgs, clap::Error> {
        let base =
            ["verbund", "model", "--ca", "ca.pem", "--token-file", "t", "--project", "p", "--dataset", "patients"];
        let cli = Cli::try_parse_from(base.iter().chain(args))?;
        match cli.command {
            Command::Model(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn model(args: &[&str]) -> anyhow::Result<pb::ResearchModel> {
        request(&parse(args)?, String::new())
    }

    fn text(s: &str) -> Option<pb::Literal> {
        Some(pb::Literal { value: Some(Value::String(s.into())) })
    }

    #[test]
    fn flags_become_the_request() {
        let m = model(&[
            "--family",
            "logistic",
            "--outcome",
            "readmitted",
            "--covariates",
            "age,bmi,sex",
            "--covariates",
            "smoker,stage",
            "--where",
            "age >= 18",
            "--categorical",
            "stage",
            "--reference",
            "sex=female",
            "--reference",
            "smoker=true",
            "--reference",
            "stage=2",
            "--max-iterations",
            "40",
            "--site",
            "a",
            "--site",
            "b",
            "--timeout-ms",
            "60000",
        ])
        .unwrap();
        assert_eq!(m.family, pb::ModelFamily::Binomial as i32);
        assert_eq!((m.project.as_str(), m.dataset.as_str(), m.outcome.as_str()), ("p", "patients", "readmitted"));
        assert_eq!(m.condition, "age >= 18");
        assert_eq!(m.sites, ["a", "b"]);
        assert_eq!((m.timeout_ms, m.max_iterations, m.no_intercept), (60000, 40, false));
        assert!(m.ccdl.is_empty() && m.cohort.is_none() && m.query_id.is_empty());
        let term =
            |column: &str, categorical, reference| pb::ModelTerm { column: column.into(), categorical, reference };
        assert_eq!(
            m.covariates,
            [
                term("age", false, None),
                term("bmi", false, None),
                term("sex", false, text("female")),
                term("smoker", false, Some(pb::Literal { value: Some(Value::Bool(true)) })),
                term("stage", true, Some(pb::Literal { value: Some(Value::Int64(2)) })),
            ]
        );
    }

    #[test]
    fn families_and_their_aliases() {
        for (flag, family) in [
            ("linear", pb::ModelFamily::Gaussian),
            ("gaussian", pb::ModelFamily::Gaussian),
            ("logistic", pb::ModelFamily::Binomial),
            ("binomial", pb::ModelFamily::Binomial),
            ("poisson", pb::ModelFamily::Poisson),
        ] {
            let m = model(&["--family", flag, "--outcome", "y", "--covariates", "x"]).unwrap();
            assert_eq!(m.family, family as i32, "{flag}");
        }
        let e = parse(&["--family", "probit", "--outcome", "y"]).unwrap_err().to_string();
        assert!(e.contains("invalid value 'probit'") && e.contains("logistic"), "{e}");
    }

    #[test]
    fn defaults_and_no_intercept() {
        let m =
            model(&["--family", "poisson", "--outcome", "visits", "--no-intercept", "--covariates", "age"]).unwrap();
        assert!(m.no_intercept);
        assert_eq!((m.timeout_ms, m.max_iterations), (0, 0));
        assert!(m.sites.is_empty() && m.condition.is_empty());
        // An integer level of a column not listed in --categorical stays text.
        let m = model(&["--family", "linear", "--outcome", "y", "--covariates", "region", "--reference", "region=01"])
            .unwrap();
        assert_eq!(m.covariates[0].reference, text("01"));
        // No covariates: the intercept-only model.
        assert!(model(&["--family", "linear", "--outcome", "y"]).unwrap().covariates.is_empty());
    }

    #[test]
    fn inconsistent_flags_are_refused_before_asking() {
        let cases: &[(&[&str], &str)] = &[
            (&["--no-intercept"], "needs at least one covariate"),
            (&["--covariates", "age,y"], "'y' is the outcome"),
            (&["--covariates", "age,age"], "names 'age' twice"),
            (&["--covariates", "age", "--categorical", "stage"], "'stage' is not among --covariates"),
            (&["--covariates", "age", "--reference", "sex=female"], "'sex' is not among --covariates"),
            (&["--covariates", "sex", "--reference", "sex=female", "--reference", "sex=male"], "twice"),
        ];
        for (flags, expected) in cases {
            let mut args = vec!["--family", "linear", "--outcome", "y"];
            args.extend_from_slice(flags);
            let e = model(&args).unwrap_err().to_string();
            assert!(e.contains(expected), "{flags:?}: {e}");
        }
        let e = parse(&["--family", "linear", "--outcome", "y", "--reference", "sex"]).unwrap_err().to_string();
        assert!(e.contains("not COLUMN=LEVEL"), "{e}");
    }

    #[test]
    fn the_ccdl_file_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort.json");
        std::fs::write(&path, r#"{"version": "2"}"#).unwrap();
        let args = parse(&["--family", "linear", "--outcome", "y", "--ccdl", path.to_str().unwrap()]).unwrap();
        let ccdl = read_ccdl(args.ccdl.as_ref().unwrap()).unwrap();
        assert_eq!(request(&args, ccdl).unwrap().ccdl, r#"{"version": "2"}"#);
    }

    fn response() -> pb::ModelResponse {
        let site = |name: &str, outcome: pb::SiteOutcome, message: &str| pb::SiteStatus {
            site: name.into(),
            outcome: outcome as i32,
            message: message.into(),
            elapsed_ms: 12.5,
            profile: "k-only".into(),
            ..Default::default()
        };
        pb::ModelResponse {
            query_id: "q-1".into(),
            summary: "Generalized linear model fitted across sites on 812 complete cases: binomial family, logit link\n\n\
                      Coefficients:\n            Estimate Std. Error z value Pr(>|z|)\n(Intercept)  -3.1000     0.4000  -7.750 9.2e-15 ***\n"
                .into(),
            fit_json: r#"{"family":"binomial","link":"logit","n":812,"coefficients":[{"name":"(Intercept)","estimate":-3.1}]}"#
                .into(),
            sites: vec![
                site("uniklinik-nord", pb::SiteOutcome::Answered, ""),
                site("klinikum-sued", pb::SiteOutcome::Refused, "R3: level 'diverse' of 'sex' has fewer than 5 patients"),
            ],
            notes: vec!["klinikum-sued was left out (fit-without)".into()],
            rounds: 6,
            attempts: 2,
        }
    }

    #[test]
    fn a_fit_prints_summary_sites_notes_and_rounds() {
        let out = render(&response(), false).unwrap();
        let expected = "Generalized linear model fitted across sites on 812 complete cases: binomial family, logit link\n\n\
                        Coefficients:\n            Estimate Std. Error z value Pr(>|z|)\n(Intercept)  -3.1000     0.4000  -7.750 9.2e-15 ***\n\n\
                        site            status    ms    message\n\
                        --------------  --------  ----  ------------------------------------------------------\n\
                        uniklinik-nord  answered  12.5\n\
                        klinikum-sued   refused   12.5  R3: level 'diverse' of 'sex' has fewer than 5 patients\n\
                        note: klinikum-sued was left out (fit-without)\n\
                        rounds: 6, attempts: 2";
        assert_eq!(out, expected, "\n{out}");
    }

    #[test]
    fn a_fit_as_json() {
        let out = render(&response(), true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["fit"]["family"], "binomial");
        assert_eq!(v["fit"]["coefficients"][0]["estimate"], -3.1);
        assert_eq!(v["rounds"], 6);
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["notes"], json!(["klinikum-sued was left out (fit-without)"]));
        assert_eq!(v["sites"][1]["site"], "klinikum-sued");
        assert_eq!(v["sites"][1]["status"], "refused");
        assert_eq!(v["sites"][1]["elapsed_ms"], 12.5);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "{keys:?}");

        let broken = pb::ModelResponse { fit_json: "{not json".into(), ..response() };
        assert!(render(&broken, true).unwrap_err().to_string().contains("not valid JSON"));
        let empty = pb::ModelResponse { fit_json: String::new(), summary: String::new(), ..response() };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&render(&empty, true).unwrap()).unwrap()["fit"],
            json!(null)
        );
        assert!(render(&empty, false).unwrap().starts_with("(no fit)\n\nsite"));
    }
}
