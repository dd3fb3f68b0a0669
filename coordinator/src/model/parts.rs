//! A site's `pb::ModelPart` as the regression crate's `Sufficient` or `Contribution`, after
//! checking that it answers the round that was asked: the design's columns, the attempt, the
//! round and the coefficients echoed bit for bit, matrices of the right size, finite numbers.
//! A part that fails is not used; its site counts as failed for the round.

use verbund_proto::v1 as pb;
use verbund_proto::v1::model_part::Numbers;
use verbund_regression::{Contribution, Family, Sufficient, WeightSupport};

/// The round a part must answer.
pub(crate) struct Expected<'a> {
    pub names: &'a [String],
    pub intercept: bool,
    pub family: Family,
    pub attempt: u32,
    pub round: u32,
    /// The coefficients sent; empty in round 0.
    pub beta: &'a [f64],
}

/// A full symmetric p×p matrix from its upper triangle with the diagonal, row by row.
fn full(upper: &[f64], p: usize, what: &str) -> Result<Vec<f64>, String> {
    if upper.len() != p * (p + 1) / 2 {
        return Err(format!(
            "{what} has {} values, not the {} of a {p}×{p} upper triangle",
            upper.len(),
            p * (p + 1) / 2
        ));
    }
    let mut out = vec![0.0; p * p];
    let mut next = upper.iter();
    for i in 0..p {
        for j in i..p {
            let v = *next.next().ok_or_else(|| format!("{what} is too short"))?;
            out[i * p + j] = v;
            out[j * p + i] = v;
        }
    }
    Ok(out)
}

fn finite<'a>(what: &str, values: impl IntoIterator<Item = &'a f64>) -> Result<(), String> {
    match values.into_iter().all(|v| v.is_finite()) {
        true => Ok(()),
        false => Err(format!("{what} holds a number that is not finite")),
    }
}

fn check_header(part: &pb::ModelPart, e: &Expected<'_>) -> Result<(), String> {
    if part.columns != e.names {
        return Err(format!(
            "its design columns [{}] are not the model's [{}]",
            part.columns.join(", "),
            e.names.join(", ")
        ));
    }
    if part.attempt != e.attempt || part.round != e.round {
        return Err(format!(
            "it answers attempt {} round {}, not attempt {} round {}",
            part.attempt, part.round, e.attempt, e.round
        ));
    }
    let same_beta =
        part.beta.len() == e.beta.len() && part.beta.iter().zip(e.beta).all(|(a, b)| a.to_bits() == b.to_bits());
    if !same_beta {
        return Err("it was evaluated at other coefficients than were sent".into());
    }
    Ok(())
}

/// The linear model's statistics of one site.
pub(crate) fn sufficient(part: &pb::ModelPart, e: &Expected<'_>) -> Result<Sufficient, String> {
    check_header(part, e)?;
    let p = e.names.len();
    let s = match &part.numbers {
        Some(Numbers::Sufficient(s)) => s,
        Some(Numbers::NoisySufficient(z)) => return noisy(z, e),
        _ => return Err("it holds no sufficient statistics".into()),
    };
    if s.n == 0 {
        return Err("it covers no rows".into());
    }
    if s.xty.len() != p {
        return Err(format!("X'y has {} values, not {p}", s.xty.len()));
    }
    finite("X'X", &s.xtx)?;
    finite("X'y", s.xty.iter().chain([&s.yty, &s.sum_y]))?;
    Ok(Sufficient {
        n: s.n,
        dropped: s.dropped,
        intercept: e.intercept,
        p,
        xtx: full(&s.xtx, p, "X'X")?,
        xty: s.xty.clone(),
        yty: s.yty,
        sum_y: s.sum_y,
        levels: Vec::new(),
    })
}

/// A differentially private site's noisy Z'Z (Z = [1, the design's columns without the
/// intercept, y], in integer units), un-centred into its sufficient statistics.
fn noisy(z: &pb::NoisySufficientPart, e: &Expected<'_>) -> Result<Sufficient, String> {
    let q = e.names.len() - usize::from(e.intercept) + 2;
    if z.centre.len() != q || z.unit.len() != q || z.zz.len() != q * (q + 1) / 2 || z.scale.len() != z.zz.len() {
        return Err(format!(
            "its noisy statistics have {} centres, {} units, {} entries and {} scales for {q} columns",
            z.centre.len(),
            z.unit.len(),
            z.zz.len(),
            z.scale.len()
        ));
    }
    verbund_regression::sufficient_from_noisy(&z.zz, &z.centre, &z.unit, e.intercept).map_err(|e| e.to_string())
}

/// One IRLS round's contribution of one site.
pub(crate) fn contribution(part: &pb::ModelPart, e: &Expected<'_>) -> Result<Contribution, String> {
    check_header(part, e)?;
    let p = e.names.len();
    let c = match &part.numbers {
        Some(Numbers::Contribution(c)) => c,
        _ => return Err("it holds no IRLS contribution".into()),
    };
    if c.n == 0 {
        return Err("it covers no rows".into());
    }
    if c.score.len() != p {
        return Err(format!("the score has {} values, not {p}", c.score.len()));
    }
    finite("the information matrix", &c.information)?;
    finite("the score", c.score.iter().chain([&c.deviance, &c.sum_y, &c.sum_ylogy, &c.sum_lfact]))?;
    Ok(Contribution {
        family: e.family,
        beta: (!e.beta.is_empty()).then(|| e.beta.to_vec()),
        n: c.n,
        dropped: c.dropped,
        intercept: e.intercept,
        p,
        information: full(&c.information, p, "the information matrix")?,
        score: c.score.clone(),
        deviance: c.deviance,
        sum_y: c.sum_y,
        sum_ylogy: c.sum_ylogy,
        sum_lfact: c.sum_lfact,
        boundary: c.boundary,
        levels: Vec::new(),
        weights: WeightSupport::default(),
        support: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(names: &[String]) -> Expected<'_> {
        Expected { names, intercept: true, family: Family::Gaussian, attempt: 0, round: 0, beta: &[] }
    }

    fn part(columns: &[String], xtx: Vec<f64>) -> pb::ModelPart {
        pb::ModelPart {
            attempt: 0,
            round: 0,
            beta: vec![],
            columns: columns.to_vec(),
            numbers: Some(Numbers::Sufficient(pb::SufficientPart {
                n: 10,
                dropped: 1,
                xtx,
                xty: vec![1.0, 2.0],
                yty: 3.0,
                sum_y: 1.0,
            })),
        }
    }

    #[test]
    fn a_part_is_read_back_into_the_full_matrix() {
        let names = vec!["(Intercept)".to_string(), "age".to_string()];
        let s = sufficient(&part(&names, vec![10.0, 4.0, 9.0]), &expected(&names)).unwrap();
        assert_eq!(s.xtx, vec![10.0, 4.0, 4.0, 9.0]);
        assert_eq!((s.n, s.dropped, s.p), (10, 1, 2));
    }

    #[test]
    fn parts_that_answer_another_question_are_not_used() {
        let names = vec!["(Intercept)".to_string(), "age".to_string()];
        let e = expected(&names);
        let short = sufficient(&part(&names, vec![10.0, 4.0]), &e).unwrap_err();
        assert!(short.contains("upper triangle"), "{short}");
        let other = vec!["(Intercept)".to_string(), "bmi".to_string()];
        assert!(sufficient(&part(&other, vec![10.0, 4.0, 9.0]), &e).unwrap_err().contains("design columns"));
        assert!(sufficient(&part(&names, vec![10.0, f64::NAN, 9.0]), &e).unwrap_err().contains("not finite"));
        let mut late = part(&names, vec![10.0, 4.0, 9.0]);
        late.round = 1;
        assert!(sufficient(&late, &e).unwrap_err().contains("round 1"));
        let mut beta = part(&names, vec![10.0, 4.0, 9.0]);
        beta.beta = vec![0.5, 0.5];
        assert!(sufficient(&beta, &e).unwrap_err().contains("other coefficients"));
        assert!(contribution(&part(&names, vec![10.0, 4.0, 9.0]), &e).unwrap_err().contains("no IRLS"));
    }
}
