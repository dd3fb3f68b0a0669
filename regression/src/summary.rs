//! Printing fits the way R's `summary(lm)` and `summary(glm)` do, number formatting included
//! (R's `format`/`formatC`/`format.pval` with `digits = 4`, `printCoefmat`'s layout).

use std::fmt::{self, Display, Formatter};

use crate::fit::{Coefficient, LinearFit};
use crate::irls::GlmFit;

const SIGNIF: &str = "Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1";

impl Display for LinearFit {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "Linear model (least squares) fitted across sites on {} complete cases\n", self.n)?;
        coefficient_table(f, &self.coefficients, "t")?;
        writeln!(
            f,
            "Residual standard error: {} on {} degrees of freedom",
            column(&[self.sigma], 4)[0],
            self.residual_df
        )?;
        missingness(f, self.dropped)?;
        writeln!(
            f,
            "Multiple R-squared:  {},\tAdjusted R-squared:  {} ",
            format_g(self.r_squared, 4),
            format_g(self.adj_r_squared, 4)
        )?;
        if let Some(fs) = &self.f_statistic {
            let p = if fs.p_value < f64::EPSILON { "< 2.2e-16".to_owned() } else { column(&[fs.p_value], 4).remove(0) };
            writeln!(f, "F-statistic: {} on {} and {} DF,  p-value: {p}", format_g(fs.value, 4), fs.numdf, fs.dendf)?;
        }
        confidence_intervals(f, &self.coefficients, "")
    }
}

impl Display for GlmFit {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Generalized linear model fitted across sites on {} complete cases: {} family, {} link\n",
            self.n, self.family, self.link
        )?;
        coefficient_table(f, &self.coefficients, "z")?;
        writeln!(f, "(Dispersion parameter for {} family taken to be 1)\n", self.family)?;
        let dev = column(&[self.null_deviance, self.deviance], 5);
        let df = column(&[self.null_df as f64, self.residual_df as f64], 1);
        let df_width = df.iter().map(String::len).max().unwrap_or(0);
        writeln!(
            f,
            "    Null deviance: {:>w$}  on {:>dw$}  degrees of freedom",
            dev[0],
            df[0],
            w = dev[1].len().max(dev[0].len()),
            dw = df_width
        )?;
        writeln!(
            f,
            "Residual deviance: {:>w$}  on {:>dw$}  degrees of freedom",
            dev[1],
            df[1],
            w = dev[1].len().max(dev[0].len()),
            dw = df_width
        )?;
        missingness(f, self.dropped)?;
        writeln!(f, "AIC: {}\n", column(&[self.aic], 5)[0])?;
        writeln!(f, "Number of Fisher Scoring iterations: {}", self.iterations)?;
        for w in &self.warnings {
            writeln!(f, "Warning: {w}")?;
        }
        confidence_intervals(f, &self.coefficients, " (Wald)")
    }
}

fn missingness(f: &mut Formatter<'_>, dropped: u64) -> fmt::Result {
    if dropped > 0 {
        let noun = if dropped == 1 { "observation" } else { "observations" };
        writeln!(f, "  ({dropped} {noun} deleted due to missingness)")?;
    }
    Ok(())
}

fn coefficient_table(f: &mut Formatter<'_>, rows: &[Coefficient], stat: &str) -> fmt::Result {
    let names: Vec<&str> = rows.iter().map(|c| c.name.as_str()).collect();
    let values: Vec<f64> = rows.iter().flat_map(|c| [c.estimate, c.std_error]).collect();
    let joint = column(&values, 4);
    let (est, se): (Vec<String>, Vec<String>) = joint.chunks(2).map(|c| (c[0].clone(), c[1].clone())).unzip();
    let stats: Vec<f64> = rows.iter().map(|c| (c.statistic * 1e3).round() / 1e3).collect();
    let stats = column(&stats, 4);
    let pvals = format_pvalues(&rows.iter().map(|c| c.p_value).collect::<Vec<_>>());
    let stars: Vec<&str> = rows.iter().map(|c| stars(c.p_value)).collect();
    let headers = ["Estimate", "Std. Error", &format!("{stat} value"), &format!("Pr(>|{stat}|)")];
    let cols = [est, se, stats, pvals];
    let name_w = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let widths: Vec<usize> =
        cols.iter().zip(headers).map(|(c, h)| c.iter().map(String::len).chain([h.len()]).max().unwrap_or(0)).collect();
    writeln!(f, "Coefficients:")?;
    write!(f, "{:name_w$}", "")?;
    for (h, w) in headers.iter().zip(&widths) {
        write!(f, " {h:>w$}")?;
    }
    writeln!(f, "    ")?;
    for (i, name) in names.iter().enumerate() {
        write!(f, "{name:<name_w$}")?;
        for (c, w) in cols.iter().zip(&widths) {
            write!(f, " {:>w$}", c[i])?;
        }
        writeln!(f, " {:<3}", stars[i])?;
    }
    writeln!(f, "---\n{SIGNIF}\n")
}

fn confidence_intervals(f: &mut Formatter<'_>, rows: &[Coefficient], kind: &str) -> fmt::Result {
    let values: Vec<f64> = rows.iter().flat_map(|c| [c.ci_lower, c.ci_upper]).collect();
    let cells = column(&values, 5);
    let name_w = rows.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let w = cells.iter().map(String::len).chain([6]).max().unwrap_or(6);
    writeln!(f, "\n95% confidence intervals{kind}:")?;
    writeln!(f, "{:name_w$} {:>w$} {:>w$}", "", "2.5 %", "97.5 %")?;
    for (c, pair) in rows.iter().zip(cells.chunks(2)) {
        writeln!(f, "{:<name_w$} {:>w$} {:>w$}", c.name, pair[0], pair[1])?;
    }
    Ok(())
}

fn stars(p: f64) -> &'static str {
    match p {
        p if p < 0.001 => "***",
        p if p < 0.01 => "**",
        p if p < 0.05 => "*",
        p if p < 0.1 => ".",
        _ => "",
    }
}

/// R's `format.pval(p, digits = 3, eps = .Machine$double.eps)`: below ε as "< 2e-16", values
/// from 1e-3 up formatted together in fixed notation, smaller ones together in scientific.
fn format_pvalues(p: &[f64]) -> Vec<String> {
    let fixed: Vec<f64> = p.iter().copied().filter(|&v| v >= 1e-3).collect();
    let small: Vec<f64> = p.iter().copied().filter(|&v| (f64::EPSILON..1e-3).contains(&v)).collect();
    let (mut fixed, mut small) = (column(&fixed, 3).into_iter(), column(&small, 3).into_iter());
    p.iter()
        .map(|&v| {
            let next = if v < f64::EPSILON {
                None
            } else if v >= 1e-3 {
                fixed.next()
            } else {
                small.next()
            };
            next.unwrap_or_else(|| if v.is_nan() { "NA".to_owned() } else { "< 2e-16".to_owned() })
        })
        .collect()
}

/// Significant digits (≤ `digits`) needed to show `x` to `digits` significant digits, and its
/// decimal exponent: R's `formatReal` drops trailing zeros this way.
fn sig_exp(x: f64, digits: usize) -> (usize, i32) {
    let s = format!("{:.*e}", digits.saturating_sub(1), x.abs());
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let sig = mantissa.replace('.', "").trim_end_matches('0').len().max(1);
    (sig, exp.parse().unwrap_or(0))
}

/// R's `format(x, digits)` for a column: common decimals in fixed notation, or scientific when
/// that is narrower.
fn column(values: &[f64], digits: usize) -> Vec<String> {
    let finite: Vec<(usize, i32)> =
        values.iter().filter(|v| v.is_finite() && **v != 0.0).map(|&v| sig_exp(v, digits)).collect();
    let decimals = finite.iter().map(|&(s, e)| (s as i32 - 1 - e).max(0)).max().unwrap_or(0).min(15) as usize;
    let mantissa = finite.iter().map(|&(s, _)| s - 1).max().unwrap_or(0);
    let fixed: Vec<String> = values.iter().map(|&v| special(v).unwrap_or_else(|| format!("{v:.decimals$}"))).collect();
    let sci: Vec<String> = values.iter().map(|&v| special(v).unwrap_or_else(|| scientific(v, mantissa))).collect();
    let width = |c: &[String]| c.iter().map(String::len).max().unwrap_or(0);
    if width(&fixed) <= width(&sci) { fixed } else { sci }
}

fn special(v: f64) -> Option<String> {
    match v {
        v if v.is_nan() => Some("NaN".to_owned()),
        v if v.is_infinite() => Some(if v > 0.0 { "Inf" } else { "-Inf" }.to_owned()),
        _ => None,
    }
}

/// `1.338e-15` in R's (and C's) spelling: signed exponent of at least two digits.
fn scientific(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

/// C's `%.{digits}g` (R's `formatC(x, digits)`).
fn format_g(x: f64, digits: usize) -> String {
    if let Some(s) = special(x) {
        return s;
    }
    if x == 0.0 {
        return "0".to_owned();
    }
    let (_, e) = sig_exp(x, digits);
    if e < -4 || e >= digits as i32 {
        let s = scientific(x, digits - 1);
        let (m, rest) = s.split_once('e').unwrap_or((&s, ""));
        let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
        format!("{m}e{rest}")
    } else {
        let decimals = (digits as i32 - 1 - e).max(0) as usize;
        let s = format!("{x:.decimals$}");
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_r() {
        assert_eq!(column(&[5.032, -0.371, 0.220_218, 0.311_430], 4), ["5.0320", "-0.3710", "0.2202", "0.3114"]);
        assert_eq!(column(&[3.044522, 1.338e-15, 0.1708987], 4), ["3.045e+00", "1.338e-15", "1.709e-01"]);
        assert_eq!(format_pvalues(&[1e-70, 0.024_63, 0.128_5, 1.0]), ["< 2e-16", "0.0246", "0.1285", "1.0000"]);
        assert_eq!(format_pvalues(&[9.547e-15, 0.249]), ["9.55e-15", "0.249"]);
        assert_eq!(format_g(0.073_08, 4), "0.07308");
        assert_eq!(format_g(1.419_1, 4), "1.419");
        assert_eq!(format_g(12345.0, 4), "1.234e+04");
        assert_eq!(stars(0.0004), "***");
    }
}
