//! `least-loaded`: the most free slots, then the fewest bytes in flight, then a host that is not the
//! SPM (it has structural work of its own), then the host id for a stable choice.
use std::cmp::Reverse;

use super::{Candidate, HostSelector, Step};

/// Spreads copies by load.
pub struct LeastLoaded;

/// The pure choice.
pub fn pick<'a>(candidates: &'a [Candidate], spm: Option<&str>) -> Option<&'a Candidate> {
    candidates.iter().min_by_key(|c| {
        (
            Reverse(c.free_slots),
            c.bytes_in_flight,
            Some(c.host.host_id.as_str()) == spm,
            c.host.host_id.clone(),
        )
    })
}

#[tonic::async_trait]
impl HostSelector for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    async fn select(&self, step: &Step) -> Option<String> {
        pick(&step.candidates, step.spm.as_deref()).map(|c| c.host.host_id.clone())
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
                "then the host id",
                vec![host("h2", 2, 0, 0), host("h1", 2, 0, 0)],
                None,
                Some("h1"),
            ),
        ];
        for (name, hosts, spm, want) in cases {
            let s = step(hosts, *spm);
            let got = pick(&s.candidates, s.spm.as_deref()).map(|c| c.host.host_id.as_str());
            assert_eq!(got, *want, "{name}");
        }
    }
}
