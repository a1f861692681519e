//! What a volume's copy does after an attempt ended without a copy, decided apart from doing it
//! (`copy.rs` persists the verdict, then waits its pause), so the rules are unit-tested on their own:
//! - a **transient** conflict (an image lock or volume lease still held, a host that did not take
//!   the copy, etcd not answering) is not counted; it is retried after a growing pause (0.5 s,
//!   doubling, at most 5 s) until the run of such tries is as old as the retry budget;
//! - a **lost** attempt (its writer may have outlived its report; the destination decided) counts,
//!   and is retried at once: the destination was fenced, nothing is gained by waiting;
//! - a **failure** of the copy itself counts, and the next attempt waits a growing pause (1 s,
//!   doubling, at most 10 s), so attempts never burn out in a second;
//! - after the last counted attempt, or once the transient budget is spent, the copy gives up.
use std::time::Duration;

use datapath_api::job_error::AttemptClass;

/// The scheduler's limits on one volume's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Counted attempts before the copy gives up (at least one).
    pub attempts: u32,
    /// How long a run of transient conflicts may last.
    pub budget: Duration,
}

/// What comes after an attempt that did not copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Place another attempt after this pause.
    Retry(Duration),
    /// The copy fails with the last error.
    GiveUp,
}

impl RetryPolicy {
    /// After a transient conflict, the `retries`th of a run that began `spent` ago.
    pub fn after_transient(self, retries: u32, spent: Duration) -> Verdict {
        if spent >= self.budget {
            return Verdict::GiveUp;
        }
        Verdict::Retry(transient_pause(retries))
    }

    /// After the `attempts`th counted attempt, which ended as `class` (`Lost` or `Failure`).
    pub fn after_counted(self, attempts: u32, class: AttemptClass) -> Verdict {
        if attempts >= self.attempts.max(1) {
            return Verdict::GiveUp;
        }
        Verdict::Retry(match class {
            AttemptClass::Failure => failure_pause(attempts),
            AttemptClass::Lost | AttemptClass::Transient => Duration::ZERO,
        })
    }
}

/// The pause after the `n`th transient conflict in a volume's copy: 0.5 s, doubling, at most 5 s.
fn transient_pause(n: u32) -> Duration {
    (Duration::from_millis(500) * 2u32.saturating_pow(n.saturating_sub(1).min(4)))
        .min(Duration::from_secs(5))
}

/// The pause after the `n`th failed attempt: 1 s, doubling, at most 10 s.
fn failure_pause(n: u32) -> Duration {
    (Duration::from_secs(1) * 2u32.saturating_pow(n.saturating_sub(1).min(4)))
        .min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 3,
        budget: Duration::from_secs(60),
    };

    #[test]
    fn pauses_grow_and_are_bounded() {
        let t: Vec<_> = (1..=7).map(transient_pause).collect();
        assert_eq!(t[0], Duration::from_millis(500));
        assert_eq!(t[1], Duration::from_secs(1));
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
        assert_eq!(t[6], Duration::from_secs(5));
        let f: Vec<_> = (1..=7).map(failure_pause).collect();
        assert_eq!(f[0], Duration::from_secs(1));
        assert_eq!(f[1], Duration::from_secs(2));
        assert_eq!(f[6], Duration::from_secs(10));
        // Three attempts never burn within a second: two pauses of at least 1 s lie between them.
        assert!(failure_pause(1) + failure_pause(2) >= Duration::from_secs(3));
    }

    #[test]
    fn transient_conflicts_are_retried_however_many_until_the_budget_is_spent() {
        // Many more than the attempt limit: they are not counted.
        for retries in [1, 3, 50] {
            assert!(matches!(
                POLICY.after_transient(retries, Duration::from_secs(59)),
                Verdict::Retry(_)
            ));
        }
        assert_eq!(
            POLICY.after_transient(1, Duration::from_secs(1)),
            Verdict::Retry(Duration::from_millis(500))
        );
        assert_eq!(
            POLICY.after_transient(2, Duration::from_secs(60)),
            Verdict::GiveUp
        );
    }

    #[test]
    fn counted_attempts_give_up_at_the_limit_and_only_failures_pause() {
        assert_eq!(
            POLICY.after_counted(1, AttemptClass::Failure),
            Verdict::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            POLICY.after_counted(2, AttemptClass::Failure),
            Verdict::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            POLICY.after_counted(1, AttemptClass::Lost),
            Verdict::Retry(Duration::ZERO)
        );
        assert_eq!(POLICY.after_counted(3, AttemptClass::Lost), Verdict::GiveUp);
        assert_eq!(
            POLICY.after_counted(3, AttemptClass::Failure),
            Verdict::GiveUp
        );
        // A limit of zero still allows one attempt.
        let one = RetryPolicy {
            attempts: 0,
            ..POLICY
        };
        assert_eq!(one.after_counted(1, AttemptClass::Failure), Verdict::GiveUp);
    }
}
