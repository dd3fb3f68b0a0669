//! `verbund audit`: the operator's commands on audit log directories — list, show, verify,
//! export, reconcile. They read the files directly (no running service needed; a log being
//! written may be read) and change nothing. The logic is in `verbund-audit`; this is the
//! command line around it.
//!
//! Exit codes: 0 when all is well; 1 when `verify` finds damage or `reconcile` finds the
//! logs disagree (the problem is printed on stdout); 2 when the command could not run
//! (bad arguments, unreadable files) — see [`AuditExit`].

use crate::OutputFormat;
use anyhow::{Context, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use verbund_audit::{Decision, Entry, Filter, PublicKey, Scope, Selection, VerifyOptions};

/// Where nodes and the coordinator write the log's public key, inside the log directory.
pub use verbund_audit::PUBLIC_KEY_FILE;

const LOG_HELP: &str = "The audit log directory: `[audit] dir` in the node's or coordinator's configuration \
(`audit/` beside the configuration file by default)";

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List records, oldest first: a table, or JSON lines.
    List {
        #[command(flatten)]
        log: LogDir,
        #[command(flatten)]
        select: Select,
        /// `table`: aligned columns (seq, time, service, query id, decision, subject,
        /// project, refusal code, groups released/withheld, duration); `json`: one JSON
        /// object per line, each record whole with its seq and hash.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Show records in full: the one with sequence number SEQ, or every record of a query.
    #[command(group(ArgGroup::new("which").required(true).args(["seq", "query_id"])))]
    Show {
        #[command(flatten)]
        log: LogDir,
        /// The record's sequence number (the `seq` column of `list`).
        seq: Option<u64>,
        /// Every record of this query (its received and outcome records); matches the
        /// coordinator's query id or the researcher's own.
        #[arg(long, value_name = "ID")]
        query_id: Option<String>,
        /// `table`: `key: value` lines, the request as indented JSON; `json`: JSON lines as
        /// `list --format json` writes them.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Verify the log's hash chain and signed checkpoints (exit 1 when damaged).
    ///
    /// Checks every record's hash and its link to the one before, across segments, and
    /// every checkpoint against the chain and (with the public key) its signature. Exits 0
    /// when the log is intact, 1 when it is not (printing the file, line, seq and what is
    /// wrong), 2 when it cannot be read.
    Verify {
        #[command(flatten)]
        log: LogDir,
        /// The log's public key (PEM) to check checkpoint signatures with. Default:
        /// `signing.pub` in the log directory, where nodes and the coordinator write it. That
        /// copy lies beside the files it vouches for: for a check that does not trust the
        /// machine, give a copy of the key kept elsewhere. When this option is not given and
        /// the default file is absent, the chain and the checkpoints' place in it are still
        /// checked, but not their signatures (and the output says so).
        #[arg(long, value_name = "PEM")]
        public_key: Option<PathBuf>,
        /// Verify only up to this seq, which the log must reach (later records are not
        /// checked): for a copy of the older segments.
        #[arg(long, value_name = "SEQ")]
        through_seq: Option<u64>,
    },
    /// Export records as JSON lines or CSV, to a file or stdout.
    ///
    /// Oldest first. JSON lines hold each record whole, with its seq and hash; CSV has a
    /// header line and one flat row per record, in a fixed column order (new columns are
    /// only ever added at the end).
    Export {
        #[command(flatten)]
        log: LogDir,
        #[command(flatten)]
        select: Select,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write to this file (created with mode 0600, as audit records are personal data;
        /// an existing file is never overwritten). Default: stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check the coordinator's log against the sites' logs (exit 1 when they disagree).
    ///
    /// Query by query: every site the coordinator says got a query (answered, refused,
    /// timed_out, cancelled, failed) must have logged an outcome for it, the same outcome
    /// and, when it answered, the same release hash; a site the coordinator says was
    /// not_connected must have nothing; no site may have logged a query the coordinator has
    /// no record of. Prints one line per finding and a summary; exits 0 when everything
    /// matches, 1 when something does not, 2 when a log cannot be read.
    Reconcile {
        /// The coordinator's audit log directory.
        #[arg(long, value_name = "DIR")]
        coordinator_log: PathBuf,
        /// A site's audit log directory, with the site's name as the coordinator knows it
        /// (repeatable: one per site). Sites the coordinator names without a log given here
        /// are counted as not checked.
        #[arg(long = "site-log", value_name = "NAME=DIR", required = true, value_parser = site_log)]
        site_logs: Vec<(String, PathBuf)>,
        /// Only this query: the coordinator's query id or the researcher's own.
        #[arg(long, value_name = "ID", conflicts_with_all = ["since", "until"])]
        query_id: Option<String>,
        /// Only the coordinator's queries with a record at or after this time (RFC 3339, or a
        /// date: from 00:00 UTC). Whole queries are compared, whatever the times of the sites'
        /// records of them.
        #[arg(long, value_name = "TIME", value_parser = since)]
        since: Option<u64>,
        /// Only the coordinator's queries with a record before this time (RFC 3339, or a date,
        /// which includes that whole day, UTC).
        #[arg(long, value_name = "TIME", value_parser = until)]
        until: Option<u64>,
        /// `table`: one line per finding and a summary; `json`: the findings and the counts
        /// as one JSON document.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Read or verify a log over the network, as an auditor: the coordinator's own, or a
    /// site's (where its policy allows remote reads). Needs a token with the role `auditor`;
    /// every read is recorded in the log it reads (and at the coordinator).
    Remote {
        #[command(flatten)]
        connection: crate::ResearcherConnection,
        /// The site whose log to read; the coordinator's own when absent.
        #[arg(long)]
        site: Option<String>,
        /// Verify the whole log instead of listing records (exit 1 when damaged).
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        select: Select,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
}

/// The log directory an audit command reads.
#[derive(Debug, Args)]
pub struct LogDir {
    #[arg(long = "log", env = "VERBUND_AUDIT_LOG", value_name = "DIR", help = LOG_HELP)]
    pub dir: PathBuf,
}

/// Which records `list` and `export` read; every condition given must hold.
#[derive(Debug, Args)]
pub struct Select {
    /// Records at or after this time: RFC 3339 (2026-11-30T10:00:00Z, or with an offset
    /// like +01:00) or a date (2026-11-30: from 00:00 UTC that day).
    #[arg(long, value_name = "TIME", value_parser = since)]
    pub since: Option<u64>,
    /// Records before this time: RFC 3339, or a date, which includes that whole day (UTC).
    #[arg(long, value_name = "TIME", value_parser = until)]
    pub until: Option<u64>,
    /// Records of this requester (the subject of their token), exactly.
    #[arg(long)]
    pub subject: Option<String>,
    /// Records of this research project, exactly.
    #[arg(long)]
    pub project: Option<String>,
    /// Records with this decision.
    #[arg(long, value_parser = PossibleValuesParser::new(Decision::ALL.map(Decision::as_str))
        .try_map(|name| Decision::parse(&name).ok_or("not a decision")))]
    pub decision: Option<Decision>,
    /// Records of this query: the coordinator's query id (which sites log too) or the
    /// researcher's own id.
    #[arg(long, value_name = "ID")]
    pub query_id: Option<String>,
    /// Records of this service: a site's name, or `coordinator`.
    #[arg(long)]
    pub service: Option<String>,
    /// Only the newest N matching records (still printed oldest first). Default: all.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl Select {
    fn selection(&self) -> Selection {
        Selection {
            filter: Filter {
                from_ms: self.since,
                until_ms: self.until,
                subject: self.subject.clone(),
                project: self.project.clone(),
                decision: self.decision,
                service: self.service.clone(),
                ..Filter::default()
            },
            any_query_id: self.query_id.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON lines: `{"seq":..,"hash":..,"record":{..}}`, one per line.
    Jsonl,
    /// CSV with a header line.
    Csv,
}

fn since(text: &str) -> Result<u64, String> {
    verbund_audit::parse_since(text).map_err(|e| e.to_string())
}

fn until(text: &str) -> Result<u64, String> {
    verbund_audit::parse_until(text).map_err(|e| e.to_string())
}

fn site_log(text: &str) -> Result<(String, PathBuf), String> {
    verbund_audit::parse_site_log(text).map_err(|e| e.to_string())
}

/// How an audit command ended when it did not simply succeed; [`AuditExit::code`] is the
/// process's exit code (see [`crate::exit_code`]).
#[derive(Debug)]
pub enum AuditExit {
    /// The log is damaged, or the logs disagree: reported on stdout already. Exit code 1.
    Found(&'static str),
    /// The command could not do its work (unreadable files, bad input). Exit code 2.
    Failed(anyhow::Error),
}

impl AuditExit {
    pub fn code(&self) -> u8 {
        match self {
            AuditExit::Found(_) => 1,
            AuditExit::Failed(_) => 2,
        }
    }
}

impl fmt::Display for AuditExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditExit::Found(what) => f.write_str(what),
            // The whole chain here (and no `source`), so `{:#}` prints it once.
            AuditExit::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for AuditExit {}

/// Runs an audit command. Errors are [`AuditExit`]s; a closed stdout (`| head`) is not one.
pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    let result = match command {
        AuditCommand::List { log, select, format } => list(&log.dir, &select, format),
        AuditCommand::Show { log, seq, query_id, format } => show(&log.dir, seq, query_id, format),
        AuditCommand::Verify { log, public_key, through_seq } => verify(&log.dir, public_key, through_seq),
        AuditCommand::Export { log, select, format, out } => export(&log.dir, &select, format, out),
        AuditCommand::Remote { .. } => {
            Err(anyhow::anyhow!("`verbund audit remote` runs through the asynchronous entry point"))
        }
        AuditCommand::Reconcile { coordinator_log, site_logs, query_id, since, until, format } => {
            let scope = Scope { query_id, from_ms: since, until_ms: until };
            reconcile(&coordinator_log, &site_logs, scope, format)
        }
    };
    finish(result)
}

/// A command's result with its exit code: a reader that went away (`| head`) is no error;
/// damage and disagreement exit 1; anything else that stopped the command, 2.
fn finish(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if broken_pipe(&e) => Ok(()),
        Err(e) if e.is::<AuditExit>() => Err(e),
        Err(e) => Err(AuditExit::Failed(e).into()),
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn read_all(dir: &Path, selection: &Selection) -> anyhow::Result<Vec<Entry>> {
    selection.entries(dir)?.collect::<Result<_, _>>().with_context(|| damaged_hint(dir))
}

fn damaged_hint(dir: &Path) -> String {
    format!("cannot read the audit log {} (run `verbund audit verify --log {0}` for a full check)", dir.display())
}

fn list(dir: &Path, select: &Select, format: OutputFormat) -> anyhow::Result<()> {
    let selection = select.selection();
    match format {
        OutputFormat::Json => {
            let n = verbund_audit::export_jsonl(selection.entries(dir)?, std::io::stdout().lock())
                .with_context(|| damaged_hint(dir))?;
            if n == 0 {
                eprintln!("no records match");
            }
        }
        OutputFormat::Table => {
            let entries = read_all(dir, &selection)?;
            if entries.is_empty() {
                eprintln!("no records match");
            } else {
                out(&verbund_audit::list_table(&entries))?;
            }
        }
    }
    Ok(())
}

fn show(dir: &Path, seq: Option<u64>, query_id: Option<String>, format: OutputFormat) -> anyhow::Result<()> {
    let entries = match (seq, query_id) {
        (Some(seq), _) => verbund_audit::get(dir, seq)?.into_iter().collect(),
        (None, Some(id)) => read_all(dir, &Selection { any_query_id: Some(id), ..Selection::default() })?,
        (None, None) => bail!("give a SEQ or --query-id ID"),
    };
    if entries.is_empty() {
        bail!("the audit log {} has no such record", dir.display());
    }
    match format {
        OutputFormat::Json => {
            verbund_audit::export_jsonl(entries.into_iter().map(Ok), std::io::stdout().lock())?;
        }
        OutputFormat::Table => {
            let text: Vec<String> = entries.iter().map(verbund_audit::describe).collect();
            out(&text.join("\n"))?;
        }
    }
    Ok(())
}

fn verify(dir: &Path, public_key: Option<PathBuf>, through_seq: Option<u64>) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory; give the audit log directory with --log", dir.display());
    }
    // An explicit key must load; the default one is used when it is there.
    let (key, key_path) = match public_key {
        Some(path) => (Some(PublicKey::load(&path)?), path),
        None => {
            let path = dir.join(PUBLIC_KEY_FILE);
            if path.exists() { (Some(PublicKey::load(&path)?), path) } else { (None, path) }
        }
    };
    let started = Instant::now();
    let report = verbund_audit::verify_with(dir, VerifyOptions { public_key: key.as_ref(), through_seq })?;
    let took = started.elapsed();
    let mut text = String::new();
    let range = match (report.first_seq, report.last_seq) {
        (Some(first), Some(last)) => format!(" (seq {first} to {last})"),
        _ => String::new(),
    };
    let signatures = match &key {
        Some(key) => {
            format!("{} signature(s) verified with {} (key id {})", report.signatures, key_path.display(), key.key_id())
        }
        None => format!(
            "NOT checked: no public key ({} is absent; give --public-key PEM). The checkpoints were matched against the chain, but whoever could rewrite the log could have rewritten them too",
            key_path.display()
        ),
    };
    let summary = [
        ("records", format!("{}{range}", report.records)),
        ("segments", report.segments.to_string()),
        ("checkpoints", format!("{} matched against the chain", report.checkpoints)),
        ("signatures", signatures),
        ("took", format!("{took:.2?}")),
    ];
    match &report.problem {
        None => text.push_str(&format!("audit log {}: intact\n", dir.display())),
        Some(problem) => {
            text.push_str(&format!("audit log {}: PROBLEM FOUND\n", dir.display()));
            text.push_str(&format!("  file:         {}\n", problem.file.display()));
            text.push_str(&format!("  line:         {}\n", problem.line));
            if let Some(seq) = problem.seq {
                text.push_str(&format!("  seq:          {seq}\n"));
            }
            text.push_str(&format!("  what:         {} ({:?})\n", problem.what, problem.kind));
            text.push_str("checked before the problem:\n");
        }
    }
    for (key, value) in summary {
        text.push_str(&format!("  {:<13} {value}\n", format!("{key}:")));
    }
    out(&text)?;
    match report.problem {
        None => Ok(()),
        Some(_) => Err(AuditExit::Found("the audit log is damaged (see above)").into()),
    }
}

fn export(dir: &Path, select: &Select, format: ExportFormat, to: Option<PathBuf>) -> anyhow::Result<()> {
    let entries = select.selection().entries(dir)?;
    let write = |out: &mut dyn Write| match format {
        ExportFormat::Jsonl => verbund_audit::export_jsonl(entries, out),
        ExportFormat::Csv => verbund_audit::export_csv(entries, out),
    };
    let Some(path) = to else {
        write(&mut std::io::stdout().lock()).with_context(|| damaged_hint(dir))?;
        return Ok(());
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| {
        format!("cannot create {} (an existing file is not overwritten; choose another --out)", path.display())
    })?;
    match write(&mut file).and_then(|n| file.sync_all().map(|()| n).map_err(verbund_audit::AuditError::Export)) {
        Ok(n) => {
            eprintln!("exported {n} record(s) to {}", path.display());
            Ok(())
        }
        Err(e) => {
            // Half an export would pass for all of it.
            drop(file);
            let _ = std::fs::remove_file(&path);
            Err(anyhow::Error::new(e).context(format!("{}; {} was removed", damaged_hint(dir), path.display())))
        }
    }
}

fn reconcile(
    coordinator: &Path,
    sites: &[(String, PathBuf)],
    scope: Scope,
    format: OutputFormat,
) -> anyhow::Result<()> {
    for (i, (name, _)) in sites.iter().enumerate() {
        if sites[..i].iter().any(|(other, _)| other == name) {
            bail!("--site-log {name}=... is given twice; give each site's log once");
        }
    }
    // Every record is read: whether a site's query is known needs all the coordinator's ids.
    let mut reconciler = verbund_audit::Reconciler::new(
        scope,
        sites.iter().map(|(name, _)| name.clone()),
        verbund_audit::entries(coordinator, Filter::default())?,
    )
    .with_context(|| damaged_hint(coordinator))?;
    for (name, dir) in sites {
        reconciler.site(name, verbund_audit::entries(dir, Filter::default())?).with_context(|| damaged_hint(dir))?;
    }
    let report = reconciler.finish();
    match format {
        OutputFormat::Table => out(&report.render())?,
        OutputFormat::Json => out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?,
    }
    if report.is_ok() { Ok(()) } else { Err(AuditExit::Found("the logs disagree (see above)").into()) }
}

/// `verbund audit remote`: an auditor's read over the coordinator's API.
pub async fn remote(
    connection: &crate::ResearcherConnection,
    site: Option<String>,
    verify: bool,
    select: &Select,
    format: OutputFormat,
) -> anyhow::Result<()> {
    finish(
        async {
            use verbund_proto::v1 as pb;
            let (mut client, token) = crate::connect(connection).await?;
            let action = if verify { pb::AuditAction::Verify } else { pb::AuditAction::List };
            let request = pb::AuditRequest {
                site: site.unwrap_or_default(),
                action: action as i32,
                since_ms: select.since.unwrap_or(0),
                until_ms: select.until.unwrap_or(0),
                subject: select.subject.clone().unwrap_or_default(),
                project: select.project.clone().unwrap_or_default(),
                decision: select.decision.map(|d| d.as_str().to_string()).unwrap_or_default(),
                query_id: select.query_id.clone().unwrap_or_default(),
                limit: select.limit.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            };
            let response =
                client.read_audit(crate::authorized(request, &token)?).await.map_err(crate::status_error)?.into_inner();
            if let Some(v) = response.verification {
                println!(
                    "{}: {} records, {} checkpoints, {} signatures checked, last seq {}",
                    response.service, v.records, v.checkpoints, v.signatures, v.last_seq
                );
                if !v.intact {
                    println!("DAMAGED: {}", v.problem);
                    return Err(AuditExit::Found("the audit log is damaged").into());
                }
                println!("intact");
                return Ok(());
            }
            if response.entries.is_empty() {
                eprintln!("no records match");
            }
            match format {
                OutputFormat::Json => {
                    for line in &response.entries {
                        println!("{line}");
                    }
                }
                OutputFormat::Table => {
                    let entries = response
                        .entries
                        .iter()
                        .map(|line| verbund_audit::remote::parse_entry_json(line))
                        .collect::<Result<Vec<_>, _>>()?;
                    if !entries.is_empty() {
                        out(&verbund_audit::list_table(&entries))?;
                    }
                }
            }
            if response.truncated {
                eprintln!("more records match than were sent: narrow the filters or raise --limit (at most 10000)");
            }
            Ok(())
        }
        .await,
    )
}
