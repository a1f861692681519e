//! `random`: any candidate, uniformly — the seed's policy.
use rand::seq::IndexedRandom as _;

use super::{HostSelector, Step};

/// Picks uniformly among the candidates.
pub struct Random;

#[tonic::async_trait]
impl HostSelector for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    async fn select(&self, step: &Step) -> Option<String> {
        step.candidates
            .choose(&mut rand::rng())
            .map(|c| c.host.host_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::testing::{host, step};

    #[tokio::test]
    async fn picks_only_candidates() {
        let hosts = [host("h1", 1, 1, 0), host("h2", 1, 0, 0)];
        for _ in 0..20 {
            assert_eq!(
                Random.select(&step(&hosts, None)).await.as_deref(),
                Some("h2")
            );
        }
        assert_eq!(Random.select(&step(&[], None)).await, None);
    }
}
