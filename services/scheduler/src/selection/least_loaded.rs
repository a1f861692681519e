//! `least-loaded`: the most free slots, then the fewest bytes in flight, then a host that is not the
//! SPM (it has structural work of its own). Hosts equally loaded take turns, so copies one after
//! another on an idle cluster spread too instead of all landing on the lowest host id.
use std::{
    cmp::Reverse,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{Candidate, HostSelector, Step};

/// Spreads copies by load.
#[derive(Default)]
pub struct LeastLoaded {
    turn: AtomicUsize,
}

/// The pure choice: among the least loaded (candidates in host-id order), the one at `turn`.
pub fn pick<'a>(
    candidates: &'a [Candidate],
    spm: Option<&str>,
    turn: usize,
) -> Option<&'a Candidate> {
    let load = |c: &Candidate| {
        (
            Reverse(c.free_slots),
            c.bytes_in_flight,
            Some(c.host.host_id.as_str()) == spm,
        )
    };
    let least = candidates.iter().map(load).min()?;
    let tied: Vec<&Candidate> = candidates.iter().filter(|c| load(c) == least).collect();
    Some(tied[turn % tied.len()])
}

#[tonic::async_trait]
impl HostSelector for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    async fn select(&self, step: &Step) -> Option<String> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        pick(&step.candidates, step.spm.as_deref(), turn).map(|c| c.host.host_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::testing::{host, step};

    /// (case, hosts, SPM, expected choice)
    type Case<'a> = (
        &'a str,
        Vec<datapath_api::pb::Host>,
        Option<&'a str>,
        Option<&'a str>,
    );

    #[test]
    fn table() {
        let cases: &[Case] = &[
            ("no candidates", vec![], None, None),
            (
                "more free slots wins",
                vec![host("h1", 2, 1, 0), host("h2", 3, 1, 0)],
                None,
                Some("h2"),
            ),
            (
                "then fewer bytes in flight",
                vec![host("h1", 2, 1, 50), host("h2", 2, 1, 10)],
                None,
                Some("h2"),
            ),
            (
                "then not the SPM",
                vec![host("h1", 2, 0, 0), host("h2", 2, 0, 0)],
                Some("h1"),
                Some("h2"),
            ),
            (
                "the SPM when it is the least loaded",
                vec![host("h1", 2, 0, 0), host("h2", 2, 1, 0)],
                Some("h1"),
                Some("h1"),
            ),
            (
                "ties: the first by host id at turn 0",
                vec![host("h2", 2, 0, 0), host("h1", 2, 0, 0)],
                None,
                Some("h1"),
            ),
        ];
        for (name, hosts, spm, want) in cases {
            let s = step(hosts, *spm);
            let got = pick(&s.candidates, s.spm.as_deref(), 0).map(|c| c.host.host_id.as_str());
            assert_eq!(got, *want, "{name}");
        }
    }

    #[tokio::test]
    async fn equally_loaded_hosts_take_turns_and_a_busier_one_waits() {
        let hosts = [
            host("h1", 2, 0, 0),
            host("h2", 2, 0, 0),
            host("h3", 2, 1, 0),
        ];
        let policy = LeastLoaded::default();
        let mut picks = Vec::new();
        for _ in 0..4 {
            picks.push(policy.select(&step(&hosts, None)).await.unwrap());
        }
        assert_eq!(picks, ["h1", "h2", "h1", "h2"]);
    }
}
