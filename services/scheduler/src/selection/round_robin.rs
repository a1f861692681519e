//! `round-robin`: candidates in turn, by host id.
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{HostSelector, Step};

/// Takes the candidates in turn; the turn survives changes in the candidate set.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

#[tonic::async_trait]
impl HostSelector for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    async fn select(&self, step: &Step) -> Option<String> {
        if step.candidates.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(
            step.candidates[turn % step.candidates.len()]
                .host
                .host_id
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::testing::{host, step};

    #[tokio::test]
    async fn cycles_through_the_candidates() {
        let hosts = [
            host("h1", 2, 0, 0),
            host("h2", 2, 0, 0),
            host("h3", 2, 0, 0),
        ];
        let rr = RoundRobin::default();
        let mut picks = Vec::new();
        for _ in 0..6 {
            picks.push(rr.select(&step(&hosts, None)).await.unwrap());
        }
        assert_eq!(picks, ["h1", "h2", "h3", "h1", "h2", "h3"]);
    }
}
