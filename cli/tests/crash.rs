//! Crash consistency of a site's audit log (issue 11), with the real `verbund node` binary.
//!
//! A node runs as an OS process of its own under a stream of queries from several
//! researchers, and is killed with SIGKILL at random moments and started again with the same
//! configuration, round after round. The coordinator runs in this process (the test
//! harness). Afterwards, every query whose answer from the site reached the coordinator (the
//! coordinator's own log says `answered` for the site, with the hash of what it received)
//! must have an `answered` record with the same query id and release hash in the site's log,
//! and the site's log must verify, with the site's public key and with `verbund audit verify`.
//!
//! The run prints its seed; `VERBUND_CRASH_SEED=<seed>` repeats its queries and kill
//! moments (the moments within the node's work still depend on the machine).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use verbund_audit::{Decision, Filter, PublicKey};
use verbund_node::NodeConfig;
use verbund_node::config::{DatasetConfig, NodeTls};
use verbund_proto::v1 as pb;
use verbund_security::egress::ProxySetting;
use verbund_tests::{Network, PROJECT, open_policy, researcher_client, with_token};

const SITE: &str = "crashy";
const DATASET: &str = "obs";
/// Rounds of start, load, SIGKILL.
const ROUNDS: usize = 24;
const RESEARCHERS: usize = 4;
const ROWS: usize = 200;

/// The node process: `verbund node --config <file>`, output appended to one log file.
struct NodeProcess {
    child: Option<Child>,
    config: PathBuf,
    output: PathBuf,
}

impl NodeProcess {
    fn start(config: &Path, output: &Path) -> Self {
        let mut process = Self { child: None, config: config.to_path_buf(), output: output.to_path_buf() };
        process.restart();
        process
    }

    fn restart(&mut self) {
        assert!(self.child.is_none(), "the node is still running");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.output).expect("node output file");
        let err = out.try_clone().expect("node output file");
        let child = Command::new(env!("CARGO_BIN_EXE_verbund"))
            .args(["node", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start verbund node");
        self.child = Some(child);
    }

    /// SIGKILL, and reap the process (its lock on the audit log goes with it).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as systemd stops a node: it drains and closes its audit log.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the node runs");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the node did not stop within 20 s of SIGTERM; its output:\n{}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of the node's output, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes the site's data, policy and configuration into `dir`; returns the config path.
fn write_node_files(network: &Network, dir: &Path, rng: &mut ChaCha8Rng) -> PathBuf {
    let mut csv = String::from("patient_id,grp,value\n");
    for i in 0..ROWS {
        let grp = ["a", "b", "c"][rng.random_range(0..3usize)];
        csv.push_str(&format!("{},{grp},{}\n", 1000 + i, rng.random_range(0..200u32)));
    }
    let data = dir.join("obs.csv");
    std::fs::write(&data, csv).expect("write the dataset");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, open_policy(2).to_toml().expect("policy")).expect("write the policy");

    let files = network.pki.site(SITE);
    let tls = NodeTls { ca: files.ca, cert: files.cert, key: files.key, coordinator_name: None };
    let mut config = NodeConfig::new(SITE, network.link.parse().expect("link URL"), tls, network.pki.auth.clone());
    config.proxy = Some(ProxySetting::Direct);
    config.policy = Some(policy);
    config.heartbeat = Duration::from_secs(1);
    config.drain = Duration::from_secs(2);
    config.audit.dir = dir.join("audit").join("log");
    config.audit.key = dir.join("audit").join("signing.key");
    // Small segments and frequent checkpoints, so that kills also land in segment rotation
    // and in checkpoint writes.
    config.audit.max_segment_mb = 1;
    config.audit.checkpoint_every = 16;
    config.datasets = vec![DatasetConfig {
        name: DATASET.into(),
        path: data,
        format: None,
        patient_key: "patient_id".into(),
        columns: vec!["patient_id".into(), "grp".into(), "value".into()],
        model: None,
    }];
    let path = dir.join("node.toml");
    std::fs::write(&path, config.to_toml().expect("node config")).expect("write the node config");
    NodeConfig::load(&path).expect("the written config loads");
    path
}

fn sql(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(0..150u32);
    match rng.random_range(0..3u32) {
        0 => format!("SELECT count(*) FROM {DATASET} WHERE value >= {n}"),
        1 => format!("SELECT grp, count(*) FROM {DATASET} WHERE value >= {n} GROUP BY grp"),
        _ => format!("SELECT count(*), avg(value) FROM {DATASET} WHERE value < {}", n + 50),
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// The researcher got the site's answer.
    answered: usize,
    /// A response without the site's answer (not connected, disconnected, ...).
    incomplete: usize,
    /// No response (a gRPC error).
    failed: usize,
}

/// One researcher sending queries one after another until `stop`.
async fn researcher(network: &Network, seed: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Tally> {
    let mut client = researcher_client(&network.api, &network.pki.ca_path).await;
    let token = network.pki.token();
    tokio::spawn(async move {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tally = Tally::default();
        while !stop.load(Ordering::SeqCst) {
            let request = pb::ResearchQuery {
                sql: sql(&mut rng),
                project: PROJECT.into(),
                timeout_ms: 10_000,
                ..Default::default()
            };
            match client.query(with_token(request, &token)).await {
                Ok(response)
                    if response
                        .get_ref()
                        .sites
                        .iter()
                        .any(|s| s.site == SITE && s.outcome == pb::SiteOutcome::Answered as i32) =>
                {
                    tally.answered += 1;
                    continue;
                }
                Ok(_) => tally.incomplete += 1,
                Err(_) => tally.failed += 1,
            }
            // While the site is down, do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tally
    })
}

fn newest_segment(dir: &Path) -> Option<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("segment-")))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    segments.sort();
    segments.pop()
}

/// Appends the first half of `file`'s last line, without its newline: a torn write.
fn tear(file: &Path) {
    use std::io::Write;
    let bytes = std::fs::read(file).expect("read the file to tear");
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or_default();
    let half = if last.len() >= 2 { &last[..last.len() / 2] } else { &b"{\"seq\":"[..] };
    let mut out = std::fs::OpenOptions::new().append(true).open(file).expect("open the file to tear");
    out.write_all(half).expect("tear");
}

fn torn_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the log directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".torn"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_random_moments_keeps_a_record_of_every_answer_it_sent() {
    let started = Instant::now();
    let seed = std::env::var("VERBUND_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("crash test seed {seed} (VERBUND_CRASH_SEED={seed} repeats it)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let network = Network::start(&[SITE]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_node_files(&network, dir.path(), &mut rng);
    let node_log = dir.path().join("audit").join("log");
    let mut node = NodeProcess::start(&config, &dir.path().join("node-output.log"));
    let sites = network.coordinator.sites();

    let stop = Arc::new(AtomicBool::new(false));
    let mut researchers = Vec::new();
    for r in 0..RESEARCHERS {
        researchers.push(researcher(&network, seed.wrapping_add(r as u64 + 1), stop.clone()).await);
    }

    let (mut kill_after_ms, mut early_kills, mut simulated) = (Vec::new(), 0, 0);
    for round in 0..ROUNDS {
        if round % 4 == 0 {
            // Some kills land while the node starts: creating its signing key (the first
            // start), recovering its log, opening it, dialling.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=150u64))).await;
            node.kill();
            early_kills += 1;
            assert!(sites.wait_for_disconnect(SITE, Duration::from_secs(10)).await, "round {round}: still connected");
            node.restart();
        }
        if !sites.wait_for(&[SITE], Duration::from_secs(30)).await {
            panic!("round {round}: the node did not connect within 30 s; its output:\n{}", node.tail());
        }
        let wait = rng.random_range(50..=400u64);
        kill_after_ms.push(wait);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        node.kill();
        assert!(sites.wait_for_disconnect(SITE, Duration::from_secs(10)).await, "round {round}: still connected");
        // A kill inside a write() of a few kilobytes rarely tears a line, so now and then
        // leave what it would: half a line at the end of the newest segment or of the
        // checkpoints file. The restarted node must set it aside and go on.
        let file = match round % 8 {
            3 => newest_segment(&node_log),
            7 => Some(node_log.join(verbund_audit::CHECKPOINTS_FILE)).filter(|p| p.exists()),
            _ => None,
        };
        if let Some(file) = file {
            tear(&file);
            simulated += 1;
        }
        node.restart();
    }

    // Once more up (the log recovers from the last kill), then a graceful stop.
    assert!(sites.wait_for(&[SITE], Duration::from_secs(30)).await, "the node did not reconnect:\n{}", node.tail());
    stop.store(true, Ordering::SeqCst);
    let mut tally = Tally::default();
    for task in researchers {
        let t = task.await.expect("researcher task");
        tally.answered += t.answered;
        tally.incomplete += t.incomplete;
        tally.failed += t.failed;
    }
    let status = node.terminate();
    assert!(status.success(), "the node exited with {status} after SIGTERM; its output:\n{}", node.tail());

    // What the coordinator received from the site: its `answered` records of the site.
    let coordinator_log = network.coordinator.audit().expect("the coordinator keeps a log").log().dir().to_path_buf();
    let mut received: Vec<(String, String)> = Vec::new();
    for entry in verbund_audit::entries(&coordinator_log, Filter::default()).expect("read the coordinator's log") {
        let record = entry.expect("a coordinator record").record;
        for site in record.sites.iter().filter(|s| s.site == SITE && s.outcome == "answered") {
            let hash = site.release_hash.clone().expect("an answered site has a release hash");
            received.push((record.query_id.clone(), hash));
        }
    }

    // What the site recorded as answered.
    let filter = Filter { decision: Some(Decision::Answered), ..Filter::default() };
    let mut recorded: HashMap<String, Option<String>> = HashMap::new();
    for entry in verbund_audit::entries(&node_log, filter).expect("read the site's log") {
        let record = entry.expect("a site record").record;
        recorded.insert(record.query_id, record.release_hash);
    }
    let missing: Vec<String> = received
        .iter()
        .filter(|(id, hash)| recorded.get(id) != Some(&Some(hash.clone())))
        .map(|(id, hash)| match recorded.get(id) {
            None => format!("{id}: no answered record at the site"),
            Some(other) => format!("{id}: the site recorded release hash {other:?}, the coordinator received {hash}"),
        })
        .collect();

    let torn = torn_files(&node_log);
    let public_key = PublicKey::load(&node_log.join(verbund_audit::PUBLIC_KEY_FILE)).expect("the site's public key");
    let report = verbund_audit::verify(&node_log, Some(&public_key)).expect("verify the site's log");
    let cli = Command::new(env!("CARGO_BIN_EXE_verbund"))
        .args(["audit", "verify", "--log"])
        .arg(&node_log)
        .env_remove("VERBUND_AUDIT_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run verbund audit verify");

    eprintln!(
        "crash test: {ROUNDS} SIGKILLs under load (after {} ms on average) and {early_kills} while starting, \
         {} answers received by the coordinator from {SITE} checked against its log ({} answered records there), \
         {} torn tails set aside ({simulated} of them simulated) {torn:?}; \
         researchers: {} answered, {} without the site's answer, {} failed; site log: {} records in {} segments, \
         {} checkpoints ({} signatures); {:.1} s",
        kill_after_ms.iter().sum::<u64>() / ROUNDS as u64,
        received.len(),
        recorded.len(),
        torn.len(),
        tally.answered,
        tally.incomplete,
        tally.failed,
        report.records,
        report.segments,
        report.checkpoints,
        report.signatures,
        started.elapsed().as_secs_f64(),
    );
    assert!(
        missing.is_empty(),
        "seed {seed}: {} of {} answers the coordinator received are not in the site's log:\n{}",
        missing.len(),
        received.len(),
        missing.join("\n")
    );
    assert!(torn.len() >= simulated, "every simulated torn tail was set aside: {torn:?}");
    assert!(report.is_ok(), "seed {seed}: the site's log does not verify: {:?}", report.problem);
    assert!(report.signatures > 0, "the graceful stop signs a checkpoint: {report:?}");
    assert_eq!(
        cli.status.code(),
        Some(0),
        "verbund audit verify:\n{}\n{}",
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );
    // The check is only worth something if answers did flow between the kills.
    assert!(received.len() >= ROUNDS, "seed {seed}: only {} answers reached the coordinator", received.len());
    assert!(tally.answered <= received.len(), "the researchers saw more answers than the coordinator logged");
}
