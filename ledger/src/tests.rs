use crate::{Allowance, Cost, Debit, Ledger, LedgerError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

fn eps(micro: u64) -> Cost {
    Cost { epsilon_micro: micro, delta_pico: 0 }
}

fn allowance(per_period: Cost) -> Allowance {
    Allowance { per_period, period: Duration::from_secs(30 * DAY) }
}

/// 2026-12-01T00:00:00Z, inside the 30-day period [2026-11-03, 2026-12-03).
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_083_200)
}

fn digest(n: u8) -> [u8; 32] {
    [n; 32]
}

fn open() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("budget.redb")).unwrap();
    (dir, ledger)
}

#[test]
fn charge_then_repeat_costs_nothing() {
    let (_dir, ledger) = open();
    let a = allowance(eps(10_000_000));
    let first = ledger.debit("p", &digest(1), eps(1_000_000), &a, now()).unwrap();
    assert!(matches!(first, Debit::Charged { left, .. } if left == eps(9_000_000)), "{first:?}");
    let again = ledger.debit("p", &digest(1), eps(1_000_000), &a, now()).unwrap();
    assert!(matches!(again, Debit::Repeat { left, .. } if left == eps(9_000_000)), "{again:?}");
    let r = ledger.remaining("p", &a, now()).unwrap();
    assert_eq!((r.spent, r.left, r.queries), (eps(1_000_000), eps(9_000_000), 1));
    // The digest is per project: another project asking the same is charged.
    assert!(matches!(ledger.debit("q", &digest(1), eps(1), &a, now()).unwrap(), Debit::Charged { .. }));
}

#[test]
fn exhausted_writes_nothing_and_says_what_is_left() {
    let (_dir, ledger) = open();
    let a = allowance(eps(10_000_000));
    ledger.debit("p", &digest(1), eps(9_500_000), &a, now()).unwrap();
    let err = ledger.debit("p", &digest(2), eps(1_000_000), &a, now()).unwrap_err();
    let LedgerError::Exhausted(ex) = &err else { panic!("{err}") };
    assert_eq!((ex.left, ex.cost), (eps(500_000), eps(1_000_000)));
    assert_eq!(ex.renews_at, UNIX_EPOCH + Duration::from_secs(1_796_256_000));
    assert_eq!(
        err.to_string(),
        "the privacy budget of project 'p' at this site is spent: this query costs ε 1.0, ε 0.5 of 10.0 is left \
         until 2026-12-03T00:00:00Z (the budget renews every 30 days)"
    );
    let r = ledger.remaining("p", &a, now()).unwrap();
    assert_eq!((r.spent, r.queries), (eps(9_500_000), 1));
    // Refused, so not recorded as charged: the same request is refused again, not a free repeat.
    assert!(matches!(ledger.debit("p", &digest(2), eps(1_000_000), &a, now()), Err(LedgerError::Exhausted(_))));
    // What is left can still be spent, exactly to the last unit.
    assert!(
        matches!(ledger.debit("p", &digest(3), eps(500_000), &a, now()).unwrap(), Debit::Charged { left, .. } if left == Cost::ZERO)
    );
}

#[test]
fn delta_exhausts_as_well_as_epsilon() {
    let (_dir, ledger) = open();
    let a = allowance(Cost { epsilon_micro: 10_000_000, delta_pico: 10_000_000 }); // ε 10, δ 1e-5
    let cost = Cost { epsilon_micro: 1, delta_pico: 6_000_000 };
    ledger.debit("p", &digest(1), cost, &a, now()).unwrap();
    let err = ledger.debit("p", &digest(2), cost, &a, now()).unwrap_err();
    let LedgerError::Exhausted(ex) = &err else { panic!("{err}") };
    assert_eq!(ex.left, Cost { epsilon_micro: 9_999_999, delta_pico: 4_000_000 });
    let text = err.to_string();
    assert!(
        text.contains("costs ε 0.000001 and δ 0.000006, ε 9.999999 of 10.0 and δ 0.000004 of 0.00001 are left"),
        "{text}"
    );
    assert_eq!(ledger.remaining("p", &a, now()).unwrap().spent, cost);
}

#[test]
fn the_budget_renews_at_the_period_boundary() {
    let (_dir, ledger) = open();
    let a = allowance(eps(1_000_000));
    let renews = UNIX_EPOCH + Duration::from_secs(1_796_256_000);
    ledger.debit("p", &digest(1), eps(1_000_000), &a, now()).unwrap();
    let last_second = renews - Duration::from_secs(1);
    assert!(matches!(ledger.debit("p", &digest(2), eps(1), &a, last_second), Err(LedgerError::Exhausted(_))));
    let next = ledger.debit("p", &digest(2), eps(1), &a, renews).unwrap();
    assert_eq!(next, Debit::Charged { left: eps(999_999), renews_at: renews + Duration::from_secs(30 * DAY) });
    // A request charged in the last period is still a repeat, and the old period's spending stays.
    assert!(matches!(ledger.debit("p", &digest(1), eps(1_000_000), &a, renews).unwrap(), Debit::Repeat { .. }));
    assert_eq!(ledger.remaining("p", &a, now()).unwrap().spent, eps(1_000_000));
    assert_eq!(ledger.projects(renews, a.period).unwrap(), vec![("p".to_owned(), eps(1))]);
}

#[test]
fn projects_lists_this_periods_spending() {
    let (_dir, ledger) = open();
    let a = allowance(eps(10_000_000));
    ledger.debit("beta", &digest(1), eps(2), &a, now()).unwrap();
    ledger.debit("alpha", &digest(2), eps(3), &a, now()).unwrap();
    ledger.debit("alpha", &digest(3), eps(4), &a, now()).unwrap();
    let listed = ledger.projects(now(), a.period).unwrap();
    assert_eq!(listed, vec![("alpha".to_owned(), eps(7)), ("beta".to_owned(), eps(2))]);
}

#[test]
fn spending_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.redb");
    let a = allowance(eps(10));
    Ledger::open(&path).unwrap().debit("p", &digest(1), eps(7), &a, now()).unwrap();
    let ledger = Ledger::open(&path).unwrap();
    assert_eq!(ledger.remaining("p", &a, now()).unwrap().left, eps(3));
    assert!(matches!(ledger.debit("p", &digest(1), eps(7), &a, now()).unwrap(), Debit::Repeat { .. }));
}

#[test]
fn a_second_process_or_handle_is_refused() {
    let (dir, _ledger) = open();
    let Err(err) = Ledger::open(&dir.path().join("budget.redb")) else { panic!("opened twice") };
    assert!(matches!(err, LedgerError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("another process has it open"), "{err}");
}

#[test]
fn a_file_of_garbage_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.redb");
    let garbage: Vec<u8> = (0..16_384u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let Err(err) = Ledger::open(&path) else { panic!("garbage opened as a ledger") };
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("restore it from backup; never delete it"), "{text}");
    // Refusing did not touch the file: it is kept for whoever investigates.
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn a_damaged_ledger_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.redb");
    let a = allowance(eps(1_000_000_000));
    {
        let ledger = Ledger::open(&path).unwrap();
        for n in 0..50 {
            ledger.debit("p", &digest(n), eps(1), &a, now()).unwrap();
        }
    }
    // Flip bytes in every page past the header: the checksums no longer match.
    let mut bytes = std::fs::read(&path).unwrap();
    for page in (4096..bytes.len()).step_by(4096) {
        for b in &mut bytes[page + 100..page + 200] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Ledger::open(&path).err().expect("a damaged ledger opened");
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("is damaged"), "{err}");
}

#[test]
fn costs_round_up_but_decimals_are_exact() {
    assert_eq!(Cost::from_f64(0.1, 1e-6).unwrap(), Cost { epsilon_micro: 100_000, delta_pico: 1_000_000 });
    assert_eq!(Cost::from_f64(0.3, 0.0).unwrap().epsilon_micro, 300_000);
    assert_eq!(Cost::from_f64(0.1000001, 0.0).unwrap().epsilon_micro, 100_001);
    assert_eq!(Cost::from_f64(1e-9, 1e-15).unwrap(), Cost { epsilon_micro: 1, delta_pico: 1 });
    assert_eq!(Cost::from_f64(0.0, -0.0).unwrap(), Cost::ZERO);
    for bad in [f64::NAN, -0.5, f64::INFINITY, 1e20] {
        assert!(matches!(Cost::from_f64(bad, 0.0), Err(LedgerError::InvalidCost(_))), "{bad}");
        assert!(matches!(Cost::from_f64(0.0, bad), Err(LedgerError::InvalidCost(_))), "{bad}");
    }
    let c = Cost::from_f64(2.5, 1e-5).unwrap();
    assert_eq!((c.epsilon(), c.delta()), (2.5, 1e-5));
}

#[test]
fn no_overflow_and_no_nonsense_periods() {
    let (_dir, ledger) = open();
    let a = allowance(eps(u64::MAX));
    ledger.debit("p", &digest(1), eps(u64::MAX - 1), &a, now()).unwrap();
    assert!(matches!(ledger.debit("p", &digest(2), eps(u64::MAX), &a, now()), Err(LedgerError::Exhausted(_))));
    for period in [Duration::ZERO, Duration::from_millis(1500)] {
        let a = Allowance { per_period: eps(1), period };
        assert!(matches!(ledger.debit("p", &digest(3), eps(1), &a, now()), Err(LedgerError::InvalidAllowance(_))));
    }
    let before_1970 = UNIX_EPOCH - Duration::from_secs(1);
    assert!(matches!(ledger.remaining("p", &allowance(eps(1)), before_1970), Err(LedgerError::Clock(_))));
}
