//! Results for people (tables) and for programs (JSON).

use crate::OutputFormat;
use anyhow::Context;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use serde_json::json;
use verbund_proto::v1 as pb;

pub fn decode(ipc: &[u8]) -> anyhow::Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(std::io::Cursor::new(ipc), None).context("the result is not Arrow IPC")?;
    reader.collect::<Result<Vec<_>, _>>().context("the result is not valid Arrow IPC")
}

pub use verbund_coordinator::api::outcome_name;

/// "in 89 days", "EXPIRED 3 days ago", with a warning mark below two weeks.
pub fn expiry(not_after_unix: i64) -> String {
    if not_after_unix == 0 {
        return "-".into();
    }
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let days = (not_after_unix - now) / 86400;
    match not_after_unix - now {
        left if left <= 0 => format!("EXPIRED {} days ago", -days),
        left if left < 14 * 86400 => format!("in {days} days (renew soon!)"),
        _ => format!("in {days} days"),
    }
}

fn format_ms(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    format!("{:.1} s ago", now.saturating_sub(unix_ms) as f64 / 1000.0)
}

/// A plain text table with a header row.
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.push(line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// The sites' outcomes as a table: site, status, groups released (`groups`: a query's
/// answer; a model's has none), milliseconds and message.
pub fn site_table(sites: &[pb::SiteStatus], groups: bool) -> String {
    let rows: Vec<Vec<String>> = sites
        .iter()
        .map(|s| {
            let mut row = vec![s.site.clone(), outcome_name(s.outcome()).to_string()];
            if groups {
                row.push(s.groups.to_string());
            }
            row.extend([format!("{:.1}", s.elapsed_ms), s.message.clone()]);
            row
        })
        .collect();
    let header: &[&str] =
        if groups { &["site", "status", "groups", "ms", "message"] } else { &["site", "status", "ms", "message"] };
    text_table(header, &rows)
}

/// One site's outcome as JSON (`groups` as in [`site_table`]).
pub fn site_json(s: &pb::SiteStatus, groups: bool) -> serde_json::Value {
    let mut value = json!({
        "site": s.site,
        "status": outcome_name(s.outcome()),
        "message": s.message,
        "elapsed_ms": s.elapsed_ms,
    });
    if groups {
        value["groups"] = json!(s.groups);
    }
    value
}

/// The response's notes, one "note: ..." line each (each line starts with a line break).
pub fn notes(notes: &[String]) -> String {
    notes.iter().map(|note| format!("\nnote: {note}")).collect()
}

pub fn response(r: &pb::QueryResponse, format: OutputFormat) -> anyhow::Result<String> {
    let batches = decode(&r.arrow_ipc)?;
    match format {
        OutputFormat::Table => {
            let mut out = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
            out.push_str("\n\n");
            out.push_str(&site_table(&r.sites, true));
            out.push_str(&notes(&r.notes));
            Ok(out)
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            for b in &batches {
                writer.write(b)?;
            }
            writer.finish()?;
            let bytes = writer.into_inner();
            let rows: serde_json::Value = if bytes.is_empty() { json!([]) } else { serde_json::from_slice(&bytes)? };
            let sites: Vec<serde_json::Value> = r.sites.iter().map(|s| site_json(s, true)).collect();
            Ok(serde_json::to_string_pretty(&json!({
                "query_id": r.query_id,
                "rows": rows,
                "sites": sites,
                "notes": r.notes,
            }))?)
        }
    }
}

/// "project: ε 8 of 10, renews in 12 d" per project.
fn budgets(budgets: &[pb::ProjectBudget]) -> String {
    budgets
        .iter()
        .map(|b| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let days = ((b.renews_at - now).max(0) as u64).div_ceil(86_400);
            format!("{}: ε {} of {}, renews in {days} d", b.project, round3(b.epsilon_left), round3(b.epsilon))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn sites(r: &pb::ListSitesResponse, format: OutputFormat) -> anyhow::Result<String> {
    let type_name = |t: i32| pb::ColumnType::try_from(t).map(verbund_query::literal::type_name).unwrap_or("unknown");
    match format {
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = r
                .sites
                .iter()
                .map(|s| {
                    let datasets = s
                        .catalogue
                        .as_ref()
                        .map(|c| c.datasets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default();
                    vec![
                        s.site.clone(),
                        if s.connected { "connected".into() } else { "disconnected".into() },
                        format_ms(s.last_seen_unix_ms),
                        s.min_cell_size.to_string(),
                        s.profile.clone(),
                        budgets(&s.budgets),
                        expiry(s.certificate_not_after_unix),
                        datasets,
                    ]
                })
                .collect();
            let mut out = text_table(
                &["site", "state", "last seen", "k", "privacy", "budget left", "certificate expires", "datasets"],
                &rows,
            );
            out.push_str(&format!(
                "\ncoordinator certificate expires {}",
                expiry(r.coordinator_certificate_not_after_unix)
            ));
            let mut seen = std::collections::BTreeMap::new();
            for s in &r.sites {
                for d in s.catalogue.iter().flat_map(|c| &c.datasets) {
                    seen.entry(d.name.clone()).or_insert_with(|| {
                        let cols: Vec<String> =
                            d.columns.iter().map(|c| format!("{} {}", c.name, type_name(c.r#type))).collect();
                        format!("{} (patient key {}): {}", d.name, d.patient_key, cols.join(", "))
                    });
                }
            }
            for line in seen.values() {
                out.push_str(&format!("\n{line}"));
            }
            Ok(out)
        }
        OutputFormat::Json => {
            let sites: Vec<serde_json::Value> = r
                .sites
                .iter()
                .map(|s| {
                    let datasets: Vec<serde_json::Value> = s
                        .catalogue
                        .iter()
                        .flat_map(|c| &c.datasets)
                        .map(|d| {
                            json!({
                                "name": d.name,
                                "patient_key": d.patient_key,
                                "columns": d.columns.iter().map(|c| json!({"name": c.name, "type": type_name(c.r#type)})).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    json!({
                        "site": s.site,
                        "connected": s.connected,
                        "last_seen_unix_ms": s.last_seen_unix_ms,
                        "connected_since_unix_ms": s.connected_since_unix_ms,
                        "min_cell_size": s.min_cell_size,
                        "remote_addr": s.remote_addr,
                        "certificate_not_after_unix": s.certificate_not_after_unix,
                        "profile": s.profile,
                        "budgets": s.budgets.iter().map(|b| json!({
                            "project": b.project, "epsilon_left": b.epsilon_left, "delta_left": b.delta_left,
                            "epsilon": b.epsilon, "delta": b.delta, "period_days": b.period_days, "renews_at_unix": b.renews_at,
                        })).collect::<Vec<_>>(),
                        "datasets": datasets,
                    })
                })
                .collect();
            Ok(serde_json::to_string_pretty(&json!({
                "sites": sites,
                "coordinator_certificate_not_after_unix": r.coordinator_certificate_not_after_unix,
            }))?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query's site table and notes, as `verbund query` has always printed them.
    #[test]
    fn query_sites_keep_their_groups_column() {
        let sites = [pb::SiteStatus {
            site: "a".into(),
            outcome: pb::SiteOutcome::Answered as i32,
            groups: 3,
            elapsed_ms: 1.25,
            ..Default::default()
        }];
        assert_eq!(
            site_table(&sites, true),
            "site  status    groups  ms   message\n----  --------  ------  ---  -------\na     answered  3       1.2"
        );
        assert_eq!(site_json(&sites[0], true)["groups"], 3);
        assert!(site_json(&sites[0], false).get("groups").is_none());
        assert_eq!(notes(&["x".into(), "y".into()]), "\nnote: x\nnote: y");
    }
}
