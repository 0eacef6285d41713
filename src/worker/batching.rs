//! How many queue rows the worker claims for a model's next batch.
//!
//! A batch's cost is mostly per parameter written, and a parameter touched by many events of one
//! batch is written (and gets a history row) once, so large batches drain a backlog several
//! times faster than small ones; but a batch is also one transaction that holds the model's
//! lock, and an event arriving meanwhile waits for it. [`BatchSizer`] therefore sizes each batch
//! from the model's backlog and a latency budget, with no query of its own (no count over the
//! queue): the previous claim tells it whether more was pending (it came back full) or not, and
//! the previous batch's duration tells it how many rows fit in the budget.
//!
//! - Under backlog (full claims) the limit doubles at each batch, up to `max` and to the rows
//!   that fit in `budget` at the measured time per row.
//! - When the queue is shallow (a claim that took everything pending), the next limit is twice
//!   what was pending, never below `min`: a sudden burst after a quiet period is met by a short
//!   batch first, and the limit then grows again.
//!
//! Batch boundaries never change what is learned: examples are learned one at a time in queue
//! order whatever the batches are, and each batch is one version.
//!
//! Pure (no I/O): the worker feeds it what each batch claimed and how long it took.

use std::time::Duration;

/// The bounds of adaptive batching (`olps worker --min-batch --max-batch --batch-budget-ms`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveBatching {
    /// The smallest limit of a claim.
    pub min: i64,
    /// The largest claim: bounds the worker's memory and the transaction's length.
    pub max: i64,
    /// How long a batch may take (claim to commit), as far as `min` allows: how long an event
    /// that arrives during a batch can wait for it to end.
    pub budget: Duration,
}

impl AdaptiveBatching {
    /// The old fixed batch: under a load that makes 1,000 rows outlast the budget, smaller
    /// batches only cost more per event while the backlog grows.
    pub const DEFAULT_MIN: i64 = 1000;
    pub const DEFAULT_MAX: i64 = 20_000;
    pub const DEFAULT_BUDGET_MS: u64 = 1000;

    /// Checks the bounds: `1 <= min <= max` and a budget above zero.
    pub fn validate(&self) -> Result<(), String> {
        if self.min < 1 {
            return Err(format!(
                "the minimum batch must be at least 1, not {}",
                self.min
            ));
        }
        if self.max < self.min {
            return Err(format!(
                "the maximum batch ({}) is below the minimum batch ({})",
                self.max, self.min
            ));
        }
        if self.budget.is_zero() {
            return Err("the batch latency budget must be above 0 ms".into());
        }
        Ok(())
    }
}

impl Default for AdaptiveBatching {
    fn default() -> Self {
        AdaptiveBatching {
            min: Self::DEFAULT_MIN,
            max: Self::DEFAULT_MAX,
            budget: Duration::from_millis(Self::DEFAULT_BUDGET_MS),
        }
    }
}

/// The claim limit of one model, adapted after each batch.
#[derive(Debug, Clone)]
pub struct BatchSizer {
    bounds: AdaptiveBatching,
    limit: i64,
    /// Smoothed seconds per claimed row (None until a batch was measured).
    per_row: Option<f64>,
}

impl BatchSizer {
    /// Starts at `min`: nothing is known about the backlog yet.
    pub fn new(bounds: AdaptiveBatching) -> BatchSizer {
        BatchSizer {
            bounds,
            limit: bounds.min,
            per_row: None,
        }
    }

    /// The limit of the next claim.
    pub fn limit(&self) -> i64 {
        self.limit
    }

    /// The rows that fit in the budget at the measured time per row (`max` before any batch).
    fn budget_rows(&self) -> i64 {
        match self.per_row {
            Some(per_row) if per_row > 0.0 => {
                (self.bounds.budget.as_secs_f64() / per_row).min(self.bounds.max as f64) as i64
            }
            _ => self.bounds.max,
        }
    }

    /// A batch claimed `claimed` rows with limit `limit` and took `elapsed` (claim to commit).
    pub fn observe(&mut self, limit: i64, claimed: usize, elapsed: Duration) {
        let claimed = claimed as i64;
        if claimed > 0 {
            // The time per row of the batch includes its fixed costs (lock, commit), so small
            // batches overstate it: the estimate only errs towards shorter batches, and as the
            // batches grow it comes down. Smoothed so that one slow commit does not halve the
            // limit.
            let sample = elapsed.as_secs_f64() / claimed as f64;
            self.per_row = Some(match self.per_row {
                Some(old) => 0.5 * old + 0.5 * sample,
                None => sample,
            });
        }
        let wanted = if claimed >= limit {
            // Full: more is (probably) pending.
            limit.saturating_mul(2)
        } else {
            // The claim took everything pending.
            claimed.saturating_mul(2)
        };
        self.limit = wanted
            .min(self.budget_rows())
            .min(self.bounds.max)
            .max(self.bounds.min);
    }

    /// An empty claim: nothing pending. The limit stays (the last claim that found rows already
    /// sized it to the backlog).
    pub fn observe_empty(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(min: i64, max: i64, budget_ms: u64) -> AdaptiveBatching {
        AdaptiveBatching {
            min,
            max,
            budget: Duration::from_millis(budget_ms),
        }
    }

    #[test]
    fn grows_under_backlog_up_to_max_and_shrinks_when_shallow() {
        let mut s = BatchSizer::new(bounds(10, 1000, 10_000));
        assert_eq!(s.limit(), 10);
        let mut seen = vec![];
        for _ in 0..10 {
            let limit = s.limit();
            s.observe(limit, limit as usize, Duration::from_millis(1));
            seen.push(s.limit());
        }
        assert_eq!(seen, [20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]);
        // Three rows were pending: next time at most six, but never below min.
        s.observe(1000, 3, Duration::from_millis(1));
        assert_eq!(s.limit(), 10);
        s.observe(10, 7, Duration::from_millis(1));
        assert_eq!(s.limit(), 14);
        s.observe_empty();
        assert_eq!(s.limit(), 14);
    }

    #[test]
    fn the_budget_caps_the_limit_but_never_below_min() {
        // 1 ms per row and a 100 ms budget: at most 100 rows.
        let mut s = BatchSizer::new(bounds(10, 1000, 100));
        for _ in 0..10 {
            let limit = s.limit();
            s.observe(limit, limit as usize, Duration::from_millis(limit as u64));
        }
        assert_eq!(s.limit(), 100);
        // Slower than the budget allows even for min rows: min.
        let mut s = BatchSizer::new(bounds(10, 1000, 100));
        s.observe(10, 10, Duration::from_secs(5));
        assert_eq!(s.limit(), 10);
    }

    #[test]
    fn bounds_are_checked() {
        assert!(bounds(0, 10, 1).validate().is_err());
        assert!(bounds(20, 10, 1).validate().is_err());
        assert!(bounds(1, 10, 0).validate().is_err());
        assert!(bounds(1, 1, 1).validate().is_ok());
        assert!(AdaptiveBatching::default().validate().is_ok());
    }
}
