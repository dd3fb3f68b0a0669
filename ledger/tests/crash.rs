//! Crash safety: a child process debits in a loop and acknowledges each debit on stdout; the
//! parent SIGKILLs it at a random point and reopens the ledger. Every acknowledged debit must be
//! there, and at most one more (committed, killed before it could say so).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use verbund_ledger::{Allowance, Cost, Debit, Ledger};

const TEST_NAME: &str = "acknowledged_debits_survive_sigkill";
/// Set in the child: the ledger file to debit, and the number of its first request.
const CHILD_PATH: &str = "VERBUND_LEDGER_CRASH_CHILD";
const CHILD_START: &str = "VERBUND_LEDGER_CRASH_START";
const RUNS: usize = 20;
const COST: Cost = Cost { epsilon_micro: 1, delta_pico: 1 };

fn allowance() -> Allowance {
    Allowance {
        per_period: Cost { epsilon_micro: u64::MAX, delta_pico: u64::MAX },
        period: Duration::from_secs(86_400),
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_083_200)
}

fn digest(n: u64) -> [u8; 32] {
    let mut d = [0xd1; 32];
    d[..8].copy_from_slice(&n.to_le_bytes());
    d
}

#[test]
fn acknowledged_debits_survive_sigkill() {
    if let Ok(path) = std::env::var(CHILD_PATH) {
        let start = std::env::var(CHILD_START).unwrap().parse().unwrap();
        return child(Path::new(&path), start);
    }
    let seed = std::env::var("VERBUND_LEDGER_CRASH_SEED").map_or(0x5eed_1ed6, |s| s.parse().unwrap());
    eprintln!("seed {seed} (set VERBUND_LEDGER_CRASH_SEED to repeat a run)");
    let mut rng = SplitMix64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.redb");
    let started = Instant::now();
    let mut charged = 0u64; // what the file held after the last reopen
    let mut unacknowledged = 0;
    for run in 0..RUNS {
        let kill_after = 1 + rng.next() % 50;
        let mut child = KillOnDrop(
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
                .env(CHILD_PATH, &path)
                .env(CHILD_START, charged.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut acked = 0u64;
        while acked < kill_after {
            let line = lines.next().unwrap_or_else(|| panic!("run {run}: the child stopped after {acked} acks"));
            acked = line.unwrap().strip_prefix("acked ").map_or(acked, |n| n.parse().unwrap());
        }
        child.0.kill().unwrap(); // SIGKILL: no destructor, no flush, no clean close
        child.0.wait().unwrap();
        // The child may have acknowledged more before the signal landed; the pipe still holds it.
        for line in lines {
            acked = line.unwrap().strip_prefix("acked ").map_or(acked, |n| n.parse().unwrap());
        }

        let ledger = Ledger::open(&path).unwrap_or_else(|e| panic!("run {run}: reopening after SIGKILL failed: {e}"));
        let now_charged = ledger.remaining("p", &allowance(), now()).unwrap().queries;
        let new = now_charged - charged;
        assert!(acked <= new && new <= acked + 1, "run {run}: {acked} acknowledged, {new} charged");
        unacknowledged += new - acked;
        // Not just the count: each acknowledged request is there (a repeat now, and writes nothing).
        for n in charged..charged + acked {
            let again = ledger.debit("p", &digest(n), COST, &allowance(), now()).unwrap();
            assert!(matches!(again, Debit::Repeat { .. }), "run {run}: request {n} was acknowledged but is lost");
        }
        charged = now_charged;
    }
    eprintln!(
        "{RUNS} kills, {charged} debits on file, {unacknowledged} committed but not acknowledged, {:?}",
        started.elapsed()
    );
}

/// Debits distinct requests until killed, acknowledging each only after `debit` returned.
fn child(path: &Path, start: u64) {
    use std::io::Write;
    let ledger = Ledger::open(path).expect("child: open the ledger");
    let mut out = std::io::stdout().lock();
    for (acked, n) in (start..start + 100_000).enumerate() {
        let debit = ledger.debit("p", &digest(n), COST, &allowance(), now()).expect("child: debit");
        assert!(matches!(debit, Debit::Charged { .. }));
        writeln!(out, "acked {}", acked + 1).expect("child: write the ack");
        out.flush().expect("child: flush the ack");
    }
}

/// Kills the child if the parent's assertions fail, so no child outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small seeded generator (SplitMix64): the kill points are reproducible from the seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d4_9bb1_33eb_11fb);
        z ^ (z >> 31)
    }
}
