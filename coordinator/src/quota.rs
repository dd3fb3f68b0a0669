//! Per-researcher quotas: questions per minute and per week, counted over sliding windows.
//! A question over the quota is refused with when to retry. Counts live in memory: a
//! coordinator restart forgets them (the sites' privacy budgets, which are what protects
//! the data, are durable at each site).

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);
const WEEK: Duration = Duration::from_secs(7 * 86_400);

/// Over quota: which one, and when the researcher may ask again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "you have asked {limit} questions in the last {window}, this network's limit per researcher; retry after {} s",
    retry_after.as_secs().max(1)
)]
pub struct OverQuota {
    pub limit: u32,
    pub window: &'static str,
    pub retry_after: Duration,
}

#[derive(Default)]
pub struct Quotas {
    per_minute: u32,
    per_week: u32,
    asked: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Quotas {
    /// 0 means no limit.
    pub fn new(per_minute: u32, per_week: u32) -> Self {
        Self { per_minute, per_week, asked: Mutex::default() }
    }

    /// Counts a question of `researcher` at `now`, or says when they may ask again.
    pub fn admit(&self, researcher: &str, now: Instant) -> Result<(), OverQuota> {
        if self.per_minute == 0 && self.per_week == 0 {
            return Ok(());
        }
        let mut asked = self.asked.lock();
        let times = asked.entry(researcher.to_string()).or_default();
        let keep = if self.per_week > 0 { WEEK } else { MINUTE };
        while times.front().is_some_and(|t| now.duration_since(*t) >= keep) {
            times.pop_front();
        }
        for (limit, window, name) in [(self.per_minute, MINUTE, "minute"), (self.per_week, WEEK, "week")] {
            if limit == 0 {
                continue;
            }
            let within = times.iter().rev().take_while(|t| now.duration_since(**t) < window).count();
            if within >= limit as usize {
                // The oldest question inside the window leaves it first.
                let oldest = times[times.len() - within];
                return Err(OverQuota { limit, window: name, retry_after: window - now.duration_since(oldest) });
            }
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minute_and_the_week_are_counted_per_researcher() {
        let q = Quotas::new(3, 5);
        let t0 = Instant::now();
        for i in 0..3 {
            q.admit("alice", t0 + Duration::from_secs(i)).unwrap();
        }
        let over = q.admit("alice", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!((over.window, over.retry_after), ("minute", Duration::from_secs(50)));
        assert!(over.to_string().contains("retry after 50 s"), "{over}");
        q.admit("bob", t0 + Duration::from_secs(10)).unwrap();
        // After the minute, two more fit in the week, then the week is full.
        q.admit("alice", t0 + Duration::from_secs(61)).unwrap();
        q.admit("alice", t0 + Duration::from_secs(62)).unwrap();
        let over = q.admit("alice", t0 + Duration::from_secs(200)).unwrap_err();
        assert_eq!(over.window, "week");
        assert_eq!(over.retry_after, WEEK - Duration::from_secs(200));
        assert!(Quotas::new(0, 0).admit("alice", t0).is_ok());
    }
}
