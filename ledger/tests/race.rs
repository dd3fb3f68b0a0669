//! Concurrent debits cannot overspend: 64 threads race for a budget of 10 queries. The same
//! race against a check-then-write debit (`naive_debit`) overspends, which shows the race is
//! real and that the ledger's single write transaction is what stops it.

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use verbund_ledger::{Allowance, Cost, Debit, Ledger, LedgerError};

const THREADS: usize = 64;
const COST: Cost = Cost { epsilon_micro: 250_000, delta_pico: 1_000 };

fn allowance() -> Allowance {
    let per_period = Cost { epsilon_micro: 10 * COST.epsilon_micro, delta_pico: 10 * COST.delta_pico };
    Allowance { per_period, period: Duration::from_secs(30 * 86_400) }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_083_200)
}

/// Runs `debit(i)` on THREADS threads released at once; returns how many succeeded.
fn race(debit: impl Fn(usize) -> bool + Send + Sync + 'static) -> usize {
    let debit = Arc::new(debit);
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let (debit, barrier) = (debit.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                debit(i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("a racing thread panicked")).filter(|&ok| ok).count()
}

#[test]
fn concurrent_debits_never_overspend() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("budget.redb")).unwrap());
    let exhausted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (l, x) = (ledger.clone(), exhausted.clone());
    let charged = race(move |i| {
        let digest = [i as u8; 32];
        match l.debit("p", &digest, COST, &allowance(), now()) {
            Ok(Debit::Charged { .. }) => true,
            Ok(Debit::Repeat { .. }) => panic!("a distinct request was taken for a repeat"),
            Err(LedgerError::Exhausted(_)) => {
                x.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                false
            }
            Err(e) => panic!("{e}"),
        }
    });
    assert_eq!(charged, 10);
    assert_eq!(exhausted.load(std::sync::atomic::Ordering::SeqCst), THREADS - 10);
    let r = ledger.remaining("p", &allowance(), now()).unwrap();
    assert_eq!(r.spent, allowance().per_period);
    assert_eq!((r.left, r.queries), (Cost::ZERO, 10));

    // The attack's other form: the same request many times at once is charged once.
    let (l, x) = (ledger.clone(), exhausted.clone());
    x.store(0, std::sync::atomic::Ordering::SeqCst);
    let charged = race(move |_| match l.debit("q", &[7; 32], COST, &allowance(), now()).unwrap() {
        Debit::Charged { .. } => true,
        Debit::Repeat { .. } => false,
    });
    assert_eq!(charged, 1);
    assert_eq!(ledger.remaining("q", &allowance(), now()).unwrap().spent, COST);

    // And the defence is not luck: the same race without it overspends.
    let naive_path = dir.path().join("naive.redb");
    let naive = Arc::new(Database::create(&naive_path).unwrap());
    let n = naive.clone();
    let succeeded = race(move |_| naive_debit(&n, COST, allowance().per_period));
    assert!(succeeded > 10, "the naive debit overspent only {succeeded} of 10: the race did not happen");
    eprintln!("naive debit: {succeeded} of {THREADS} succeeded against a budget of 10");
}

const NAIVE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("spent");

/// Check-then-write in two transactions: read what was spent, then, if the cost fits, write
/// spent + cost. Between the two another thread does the same, and both pay from the same
/// balance.
fn naive_debit(db: &Database, cost: Cost, limit: Cost) -> bool {
    let spent = {
        let tx = db.begin_read().expect("naive: begin read");
        match tx.open_table(NAIVE) {
            Ok(table) => table.get("p").expect("naive: read").map_or((0, 0), |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => (0, 0),
            Err(e) => panic!("{e}"),
        }
    };
    let after = (spent.0 + cost.epsilon_micro, spent.1 + cost.delta_pico);
    if after.0 > limit.epsilon_micro || after.1 > limit.delta_pico {
        return false;
    }
    // The node would run the query here; any delay at all widens the window.
    std::thread::sleep(Duration::from_millis(5));
    let mut tx = db.begin_write().expect("naive: begin write");
    tx.set_durability(Durability::Immediate).expect("naive: durability");
    tx.open_table(NAIVE).expect("naive: table").insert("p", after).expect("naive: write");
    tx.commit().expect("naive: commit");
    true
}
