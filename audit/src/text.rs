//! Records rendered for people on a terminal: an aligned table ([`list_table`], built on
//! [`render_table`]) and one record in full ([`describe`]).
//!
//! Everything in a record but its numbers came from outside — a query id the researcher
//! chose, their SQL — so control characters (a terminal's escape sequences, line breaks) and
//! the invisible characters that reorder text are shown escaped (`\u{1b}`), never passed on.
//! Widths count characters, which is right for the ASCII that ids, names and codes are.

use crate::export::utc;
use crate::read::Entry;
use std::fmt::Write;

/// Which side of its column a cell sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table column: its title, the widest a cell may be before it is cut (with `…`), and
/// its alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub title: &'static str,
    pub max_width: usize,
    pub align: Align,
}

impl Column {
    pub const fn left(title: &'static str, max_width: usize) -> Column {
        Column { title, max_width, align: Align::Left }
    }

    pub const fn right(title: &'static str, max_width: usize) -> Column {
        Column { title, max_width, align: Align::Right }
    }
}

/// The columns of [`list_table`].
pub const LIST_COLUMNS: [Column; 10] = [
    Column::right("seq", 20),
    Column::left("time (UTC)", 23),
    Column::left("service", 24),
    // A UUID whole (36); longer ids the researcher chose are cut.
    Column::left("query id", 36),
    Column::left("decision", 10),
    Column::left("subject", 32),
    Column::left("project", 20),
    Column::left("refusal code", 24),
    Column::right("released/withheld", 17),
    Column::right("duration", 12),
];

/// The aligned table `verbund audit list` prints: one row per entry, in [`LIST_COLUMNS`].
/// Released/withheld are counts of groups (`4/1`); absent values are empty cells.
pub fn list_table(entries: &[Entry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|entry| {
            let r = &entry.record;
            let groups = match (r.groups_released, r.groups_withheld) {
                (None, None) => String::new(),
                (released, withheld) => {
                    let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
                    format!("{}/{}", n(released), n(withheld))
                }
            };
            vec![
                entry.seq.to_string(),
                table_time(r.time_ms),
                r.service.clone(),
                r.query_id.clone(),
                r.decision.as_str().to_string(),
                r.requester.subject.clone(),
                r.requester.project.clone().unwrap_or_default(),
                r.refusal.as_ref().map(|x| x.code.clone()).unwrap_or_default(),
                groups,
                r.duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
            ]
        })
        .collect();
    render_table(&LIST_COLUMNS, &rows)
}

/// An aligned table: a header line, then one line per row, columns two spaces apart and as
/// wide as their widest cell (or title). A cell longer than its column's `max_width` is cut
/// to that width, its last character replaced by `…`. Lines carry no trailing spaces. Rows
/// shorter than `columns` get empty cells; extra cells are ignored.
pub fn render_table(columns: &[Column], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, column)| truncate(&sanitize(row.get(i).map_or("", String::as_str)), column.max_width))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            cells.iter().map(|row| row[i].chars().count()).chain([column.title.chars().count()]).max().unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let titles: Vec<String> = columns.iter().map(|c| c.title.to_string()).collect();
    for row in std::iter::once(&titles).chain(&cells) {
        let mut line = String::new();
        for (i, (cell, column)) in row.iter().zip(columns).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match column.align {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One entry in full, a `key: value` line per field that is present; the typed request
/// pretty-printed as JSON, the SQL and the coordinator's sites on indented lines.
pub fn describe(entry: &Entry) -> String {
    let r = &entry.record;
    let mut out = String::new();
    let mut field = |key: &str, value: &str| {
        let _ = writeln!(out, "{:<17} {}", format!("{key}:"), sanitize(value));
    };
    field("seq", &entry.seq.to_string());
    field("hash", &entry.hash.to_hex());
    field("time", &format!("{} ({} ms since 1970)", utc(r.time_ms), r.time_ms));
    field("service", &r.service);
    field("query id", &r.query_id);
    if let Some(id) = &r.client_query_id {
        field("client query id", id);
    }
    field("decision", r.decision.as_str());
    field("subject", &r.requester.subject);
    if let Some(project) = &r.requester.project {
        field("project", project);
    }
    if !r.requester.roles.is_empty() {
        field("roles", &r.requester.roles.join(", "));
    }
    if let Some(peer) = &r.peer {
        field("peer", peer);
    }
    if let Some(refusal) = &r.refusal {
        field("refusal code", &refusal.code);
        field("refusal reason", &refusal.reason);
    }
    if let Some(n) = r.groups_released {
        field("groups released", &n.to_string());
    }
    if let Some(n) = r.groups_withheld {
        field("groups withheld", &n.to_string());
    }
    if let Some(hash) = &r.release_hash {
        field("release hash", hash);
    }
    if let Some(ms) = r.duration_ms {
        field("duration", &format!("{ms} ms"));
    }
    if let Some(profile) = &r.privacy_profile {
        field("privacy profile", profile);
    }
    if let Some(cost) = r.privacy_cost {
        field("privacy cost", &format!("ε {cost}"));
    }
    field("request hash", &r.request_hash);
    if !r.sites.is_empty() {
        out.push_str("sites:\n");
        let rows: Vec<Vec<String>> = r
            .sites
            .iter()
            .map(|s| {
                let cost = s.privacy_cost.map(|c| format!("ε {c}")).unwrap_or_default();
                vec![s.site.clone(), s.outcome.clone(), cost, s.release_hash.clone().unwrap_or_default()]
            })
            .collect();
        let columns = [
            Column::left("site", 40),
            Column::left("outcome", 20),
            Column::left("privacy cost", 12),
            Column::left("release hash", 64),
        ];
        indent(&mut out, &render_table(&columns, &rows));
    }
    if let Some(sql) = &r.sql {
        out.push_str("sql:\n");
        // Line breaks in SQL are kept (as indented lines); other control characters are not.
        for line in sql.lines() {
            let _ = writeln!(out, "  {}", sanitize(line));
        }
    }
    out.push_str("request:\n");
    // serde_json escapes control characters in strings, and the layout is its own.
    let request = serde_json::to_string_pretty(&r.request).unwrap_or_else(|_| r.request.to_string());
    indent(&mut out, &sanitize_lines(&request));
    out
}

fn indent(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// `2026-11-30 10:00:00.123`: [`utc`] without the `T` and `Z` (the column title says UTC).
fn table_time(time_ms: u64) -> String {
    utc(time_ms).replacen('T', " ", 1).trim_end_matches('Z').to_string()
}

/// `text` with control characters and bidirectional-text controls escaped.
pub fn sanitize(text: &str) -> String {
    let unsafe_char = |c: char| {
        c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn sanitize_lines(text: &str) -> String {
    text.lines().map(sanitize).collect::<Vec<_>>().join("\n")
}

/// `text` cut to `max` characters, the last one replaced by `…` when anything was cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    if max > 0 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, Hash, Record, Requester, SiteRelease};
    use serde_json::json;

    fn entry(seq: u64, record: Record) -> Entry {
        Entry { seq, hash: Hash([seq as u8; 32]), record }
    }

    fn answered() -> Record {
        let who = Requester { subject: "alice".into(), project: Some("p1".into()), roles: vec!["researcher".into()] };
        Record::new("site-a", "8a1f0c2e-6b0e-4f7a-9a57-3b1c1f2d9e01", Decision::Answered, who, json!({"table": "t"}))
            .with_time_ms(1_796_032_800_123)
            .with_release(b"bytes", 4, 1)
            .with_duration(std::time::Duration::from_millis(152))
    }

    #[test]
    fn a_table_aligns_columns_and_cuts_long_cells() {
        let columns = [Column::right("n", 5), Column::left("name", 6), Column::left("x", 3)];
        let rows = vec![
            vec!["1".to_string(), "ann".to_string(), "a".to_string()],
            vec!["1234".to_string(), "bartholomew".to_string(), String::new()],
        ];
        assert_eq!(
            render_table(&columns, &rows),
            "   n  name    x\n\
             \x20  1  ann     a\n\
             1234  barth…\n"
        );
        // No rows: the header alone; a short row gets empty cells.
        assert_eq!(render_table(&columns, &[]), "n  name  x\n");
        assert_eq!(render_table(&columns, &[vec!["7".into()]]), "n  name  x\n7\n");
    }

    #[test]
    fn the_list_table_shows_each_column() {
        let refused = Record::new("site-b", "q2", Decision::Refused, Requester::default(), json!({}))
            .with_time_ms(1_796_032_801_000)
            .with_refusal("MIN_GROUP", "a group is smaller than 5");
        let long_id = "x".repeat(50);
        let odd = Record::new("site-c", long_id, Decision::Received, Requester::default(), json!({}))
            .with_time_ms(1_796_032_802_000);
        let table = list_table(&[entry(1, answered()), entry(22, refused), entry(333, odd)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        for title in LIST_COLUMNS.map(|c| c.title) {
            assert!(lines[0].contains(title), "{table}");
        }
        assert!(lines[0].starts_with("seq  time (UTC)"), "{table}");
        assert_eq!(
            lines[1],
            "  1  2026-11-30 10:00:00.123  site-a   8a1f0c2e-6b0e-4f7a-9a57-3b1c1f2d9e01  answered  alice    p1                                   4/1    152 ms"
        );
        assert!(lines[2].starts_with(" 22  2026-11-30 10:00:01.000  site-b   q2 "), "{table}");
        assert!(lines[2].contains("refused") && lines[2].contains("MIN_GROUP"), "{table}");
        // The 50-character id is cut to the 36 of its column.
        assert!(lines[3].contains(&format!("{}…", "x".repeat(35))) && !lines[3].contains(&"x".repeat(36)), "{table}");
        // Columns line up (counted in characters: `…` is one, of three bytes).
        let at = |line: &str, text: &str| line[..line.find(text).expect("cell")].chars().count();
        assert_eq!(at(lines[1], "answered"), at(lines[0], "decision"));
        assert_eq!(at(lines[3], "received"), at(lines[0], "decision"));
    }

    #[test]
    fn terminal_controls_in_cells_are_escaped() {
        let hostile = Record::new("site-a", "q\u{1b}[2J\nnext", Decision::Received, Requester::default(), json!({}))
            .with_sql("SELECT 1\n-- \u{202e}txet");
        let table = list_table(&[entry(1, hostile.clone())]);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(!table.contains('\u{1b}') && table.contains(r"q\u{1b}[2J\u{a}next"), "{table}");
        let text = describe(&entry(1, hostile));
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text}");
        assert!(text.contains("sql:\n  SELECT 1\n  -- \\u{202e}txet\n"), "{text}");
    }

    #[test]
    fn a_record_is_described_in_full() {
        let record = answered()
            .with_client_query_id("mine")
            .with_peer("coordinator.verbund.test")
            .with_sql("SELECT count(*) FROM t")
            .with_sites(vec![SiteRelease {
                site: "site-a".into(),
                outcome: "answered".into(),
                release_hash: Some("ab".repeat(32)),
                privacy_cost: Some(1.0),
            }]);
        let text = describe(&entry(7, record.clone()));
        for line in [
            "seq:              7",
            "time:             2026-11-30T10:00:00.123Z (1796032800123 ms since 1970)",
            "client query id:  mine",
            "decision:         answered",
            "project:          p1",
            "roles:            researcher",
            "groups released:  4",
            "groups withheld:  1",
            "duration:         152 ms",
            &format!("release hash:     {}", record.release_hash.as_deref().unwrap()),
            &format!("request hash:     {}", record.request_hash),
            &format!("  site-a  answered  ε 1{}{}", " ".repeat(11), "ab".repeat(32)),
            "request:\n  {\n    \"table\": \"t\"\n  }",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("refusal"), "absent fields are left out: {text}");
    }
}
