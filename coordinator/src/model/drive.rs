//! Runs a fit's rounds across the member sites, one `fan_out` per round: the linear model in
//! one round of sufficient statistics, GLMs by the crate's IRLS state machine. A site lost in
//! a round (refused, failed, timed out, gone) ends the attempt: under `fit-without` the fit
//! restarts at round 0 without it (designs are cached at the sites, so a restart is cheap),
//! under `refuse` it stops and says who and why.

use super::ModelError;
use super::parts::{self, Expected};
use super::plan::PlannedModel;
use crate::audit::Asked;
use crate::fanout::{SiteOutcome, fan_out};
use crate::{Coordinator, RequestError as Error};
use std::time::Duration;
use tokio::time::Instant;
use verbund_proto::v1 as pb;
use verbund_regression::{Contribution, Family, FitError, GlmFit, Irls, LinearFit, Step, Sufficient, fit_linear};

/// A finished fit.
pub(crate) enum Fitted {
    Linear(LinearFit),
    Glm(GlmFit),
}

/// A site that left the fit, and why.
pub(crate) struct LeftOut {
    pub outcome: SiteOutcome,
    /// Whether it refused (or was unable to fit the family), as opposed to being lost.
    pub refused: bool,
}

/// How an attempt ended early.
enum Stop {
    /// These sites did not answer a round usably.
    Lost(Vec<SiteOutcome>),
    Fatal(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Fatal(e)
    }
}

impl From<ModelError> for Stop {
    fn from(e: ModelError) -> Self {
        Stop::Fatal(e.into())
    }
}

/// One fit in progress.
pub(crate) struct Drive<'a> {
    pub coordinator: &'a Coordinator,
    pub asked: &'a Asked<'a>,
    pub planned: &'a PlannedModel,
    pub identity: pb::Identity,
    pub fit_id: String,
    pub ctl: &'a crate::queries::Ctl,
    pub deadline: Instant,
    pub round_timeout: Duration,
    pub members: Vec<String>,
    pub min_sites: u32,
    /// `refuse`: no fit unless every member takes part to the end.
    pub refuse: bool,
    pub max_restarts: u32,
    pub max_iterations: u32,
    pub attempt: u32,
    /// Rounds of the current attempt.
    pub rounds: u32,
    pub left_out: Vec<LeftOut>,
    /// The members' outcomes in the last round.
    pub last: Vec<SiteOutcome>,
    /// What each site's answers cost its privacy budget over the whole fit, every attempt
    /// included (a restart's first round is a repeat at a dp site: same model, same data).
    pub spent: std::collections::HashMap<String, pb::PrivacyCost>,
}

fn family(f: pb::ModelFamily) -> Family {
    match f {
        pb::ModelFamily::Binomial => Family::Binomial,
        pb::ModelFamily::Poisson => Family::Poisson,
        _ => Family::Gaussian,
    }
}

impl Drive<'_> {
    pub async fn run(&mut self) -> Result<Fitted, Error> {
        loop {
            if self.members.len() < self.min_sites as usize {
                return Err(ModelError::TooFewSites {
                    have: self.members.len(),
                    need: self.min_sites,
                    left_out: describe(&self.left_out),
                }
                .into());
            }
            let lost = match self.attempt_fit().await {
                Ok(fit) => return Ok(fit),
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Lost(lost)) => lost,
            };
            let refused = lost.iter().any(|o| o.outcome == pb::SiteOutcome::Refused);
            if self.refuse {
                let o = &lost[0];
                return Err(ModelError::SiteLost {
                    site: o.site.clone(),
                    outcome: crate::api::site_outcome_label(o.outcome),
                    message: o.message.clone(),
                }
                .into());
            }
            for o in lost {
                self.members.retain(|m| *m != o.site);
                let refused = o.outcome == pb::SiteOutcome::Refused;
                self.left_out.push(LeftOut { outcome: o, refused });
            }
            tracing::info!(
                attempt = self.attempt,
                refused,
                members = self.members.len(),
                "model fit restarts without lost sites"
            );
            if self.attempt >= self.max_restarts {
                return Err(
                    ModelError::TooManyRestarts { restarts: self.attempt, left_out: describe(&self.left_out) }.into()
                );
            }
            self.attempt += 1;
        }
    }

    async fn attempt_fit(&mut self) -> Result<Fitted, Stop> {
        self.rounds = 0;
        let checked = &self.planned.checked;
        let names = checked.names.clone();
        let fam = family(checked.family);
        if fam == Family::Gaussian {
            let parts = self.round(pb::ModelStep::Sufficient, &[], parts::sufficient).await?;
            let total = Sufficient::sum(&parts).map_err(ModelError::Fit)?;
            self.check_total(total.n)?;
            return match fit_linear(&total, &names) {
                Ok(fit) => Ok(Fitted::Linear(fit)),
                // Noise can make X'X indefinite or its n too small: that is not the design's fault.
                Err(FitError::Singular { .. } | FitError::NoResidualDf { .. } | FitError::NegativeResidual { .. })
                    if self.noisy() =>
                {
                    Err(ModelError::NoisyUndetermined.into())
                }
                Err(e) => Err(ModelError::Fit(e).into()),
            };
        }
        let mut irls =
            Irls::new(fam, names).map_err(ModelError::Fit)?.with_max_iterations(self.max_iterations.max(1) as usize);
        loop {
            let beta = irls.beta().map(<[f64]>::to_vec).unwrap_or_default();
            let parts = self.round(pb::ModelStep::Contribution, &beta, parts::contribution).await?;
            let total = Contribution::sum(&parts).map_err(ModelError::Fit)?;
            self.check_total(total.n)?;
            match irls.next(&total).map_err(ModelError::Fit)? {
                Step::Continue(_) => {}
                Step::Done(fit) => return Ok(Fitted::Glm(fit)),
            }
        }
    }

    /// Whether some part of the last round carried differential-privacy noise.
    pub fn noisy(&self) -> bool {
        self.last.iter().any(|o| {
            o.partial
                .as_ref()
                .and_then(|p| p.model.as_ref())
                .is_some_and(|m| matches!(m.numbers, Some(verbund_proto::v1::model_part::Numbers::NoisySufficient(_))))
        })
    }

    /// The network's floor on the pooled rows (`[network] min_total`).
    fn check_total(&self, n: u64) -> Result<(), ModelError> {
        let min = self.coordinator.config().network.min_total;
        if n < min {
            return Err(ModelError::TooFewRows { min });
        }
        Ok(())
    }

    /// Asks every member for one round; the parts, or the sites that did not give a usable one.
    async fn round<T>(
        &mut self,
        step: pb::ModelStep,
        beta: &[f64],
        read: fn(&pb::ModelPart, &Expected<'_>) -> Result<T, String>,
    ) -> Result<Vec<T>, Stop> {
        let round = self.rounds;
        self.rounds += 1;
        let round_id = format!("{}.{}.{}", self.fit_id, self.attempt, round);
        let request = pb::ModelRequest {
            model: Some(self.planned.query.clone()),
            step: step as i32,
            fit_id: self.fit_id.clone(),
            attempt: self.attempt,
            round,
            beta: beta.to_vec(),
            sites: self.members.len() as u32,
        };
        let now = Instant::now();
        if now >= self.deadline {
            return Err(ModelError::TimedOut.into());
        }
        // The first round builds the sites' designs: it may take half of what is left, so
        // that a fit can still restart without a site too slow to build one. Later rounds
        // reuse the designs and get `round_timeout_seconds`.
        let deadline =
            if round == 0 { now + (self.deadline - now) / 2 } else { self.deadline.min(now + self.round_timeout) };
        let audit = self.coordinator.audit();
        if let Some(audit) = audit {
            audit.round_sent(self.asked, &round_id, &request).await?;
        }
        let node_query = pb::NodeQuery {
            query_id: round_id.clone(),
            identity: Some(self.identity.clone()),
            timeout_ms: u32::try_from((deadline - now).as_millis()).unwrap_or(u32::MAX),
            query: None,
            model: Some(request.clone()),
        };
        let started = std::time::Instant::now();
        self.ctl.round(self.attempt, round, &self.members);
        let ctl = self.ctl;
        let mut outcomes =
            fan_out(&self.coordinator.sites_arc(), &self.members, node_query, deadline, &ctl.cancel, &|o| {
                ctl.site_done(o)
            })
            .await;
        let expected = Expected {
            names: &self.planned.checked.names,
            intercept: self.planned.checked.intercept,
            family: family(self.planned.checked.family),
            attempt: self.attempt,
            round,
            beta,
        };
        let mut parts = Vec::with_capacity(outcomes.len());
        for o in &mut outcomes {
            let read = match o.partial.as_ref().map(|p| p.model.as_ref()) {
                Some(Some(part)) => read(part, &expected),
                Some(None) => Err("it holds no model part".into()),
                None => continue,
            };
            match read {
                Ok(part) => parts.push(part),
                Err(why) => {
                    tracing::warn!(site = %o.site, %why, "malformed model part discarded");
                    o.outcome = pb::SiteOutcome::Failed;
                    o.message = format!("the site's model part was malformed and is not used: {why}");
                    o.partial = None;
                }
            }
        }
        if let Some(audit) = audit {
            audit.round_answered(self.asked, &round_id, &request, &outcomes, started.elapsed()).await?;
        }
        for o in &outcomes {
            if let Some(cost) = o.partial.as_ref().and_then(|p| p.cost.as_ref()) {
                self.coordinator.sites().note_cost(
                    &o.site,
                    &self.asked.requester.project.clone().unwrap_or_default(),
                    cost,
                );
                let total =
                    self.spent.entry(o.site.clone()).or_insert(pb::PrivacyCost { repeat: true, ..Default::default() });
                total.epsilon += cost.epsilon;
                total.delta += cost.delta;
                total.repeat &= cost.repeat;
                (total.epsilon_left, total.delta_left, total.renews_at) =
                    (cost.epsilon_left, cost.delta_left, cost.renews_at);
            }
            self.coordinator.metrics().site_result(&o.site, crate::api::site_outcome_label(o.outcome), 0);
        }
        if self.ctl.cancel.is_cancelled() {
            return Err(ModelError::Cancelled.into());
        }
        if Instant::now() >= self.deadline {
            return Err(ModelError::TimedOut.into());
        }
        let lost: Vec<SiteOutcome> = outcomes.iter().filter(|o| o.partial.is_none()).cloned().collect();
        self.last = outcomes;
        if !lost.is_empty() {
            return Err(Stop::Lost(lost));
        }
        Ok(parts)
    }
}

/// The sites left out, for a message: "b (refused: ...), c (timed_out: ...)".
pub(crate) fn describe(left_out: &[LeftOut]) -> String {
    if left_out.is_empty() {
        return "none".into();
    }
    let all: Vec<String> = left_out
        .iter()
        .map(|l| {
            let o = &l.outcome;
            format!("{} ({}: {})", o.site, crate::api::site_outcome_label(o.outcome), o.message)
        })
        .collect();
    all.join("; ")
}
