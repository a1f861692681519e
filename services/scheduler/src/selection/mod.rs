//! Host selection: which host runs a data step. The candidates are the live hosts that reach both
//! storage domains and have a free job slot (counting the copies this scheduler has placed and the
//! host has not reported yet); a policy picks one. Policies are plugins: adding one is a file here and
//! an arm in [`Policy`]. Built-in policies are pure functions of the [`Step`], tested by tables.
mod external;
mod least_loaded;
mod random;
mod round_robin;
mod spm_only;

use std::{collections::HashMap, sync::Arc};

use datapath_api::pb;

pub use external::External;
pub use least_loaded::LeastLoaded;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use spm_only::SpmOnly;

/// A host that could run the step, with its load as the scheduler counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its registration (id, address, domains, slots).
    pub host: pb::Host,
    /// Job slots not in use.
    pub free_slots: u32,
    /// Bytes its running copies still move, plus those placed on it and not yet reported.
    pub bytes_in_flight: u64,
}

/// One data step to place.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Hosts that may run it, in host-id order.
    pub candidates: Vec<Candidate>,
    /// The SPM's host id, when one is elected.
    pub spm: Option<String>,
    /// What will be copied.
    pub params: pb::CopyDataParams,
    /// How many bytes.
    pub size_bytes: u64,
}

/// A placement policy. `None` means "none of these now": the step waits and asks again.
#[tonic::async_trait]
pub trait HostSelector: Send + Sync {
    /// The policy's name, for logs.
    fn name(&self) -> &'static str;
    /// Picks the host id of one candidate.
    async fn select(&self, step: &Step) -> Option<String>;
}

/// The configured policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Any candidate, uniformly (the seed's behaviour).
    Random,
    /// Candidates in turn.
    RoundRobin,
    /// Most free slots, then fewest bytes in flight, then a host that is not the SPM; equals take turns.
    LeastLoaded,
    /// Only the SPM, as before the feature.
    SpmOnly,
    /// Ask an external HostSelectorService (`--host-selector-url`).
    External,
}

/// Builds the policy; `external_url` is required for [`Policy::External`].
pub fn build(
    policy: Policy,
    external_url: Option<&str>,
    tls: Option<&datapath_tls::Tls>,
) -> anyhow::Result<Arc<dyn HostSelector>> {
    Ok(match policy {
        Policy::Random => Arc::new(Random),
        Policy::RoundRobin => Arc::new(RoundRobin::default()),
        Policy::LeastLoaded => Arc::new(LeastLoaded::default()),
        Policy::SpmOnly => Arc::new(SpmOnly),
        Policy::External => {
            let url = external_url.ok_or_else(|| {
                anyhow::anyhow!("--host-selection external needs --host-selector-url")
            })?;
            Arc::new(External::new(url, tls)?)
        }
    })
}

/// Copies the scheduler has placed on each host and not yet seen end: `(copies, bytes)` by host id.
pub type Placed = HashMap<String, (u32, u64)>;

/// The candidates among `hosts` for a copy from `source_sd` to `destination_sd`. A host's load is the
/// larger of what it reports and what this scheduler has placed on it.
pub fn candidates(
    hosts: &[pb::Host],
    placed: &Placed,
    source_sd: &str,
    destination_sd: &str,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = hosts
        .iter()
        .filter(|h| reaches(h, source_sd) && reaches(h, destination_sd))
        .filter_map(|h| {
            let (copies, bytes) = placed.get(&h.host_id).copied().unwrap_or_default();
            let running = h.running_jobs.max(copies);
            (running < h.job_slots).then(|| Candidate {
                host: h.clone(),
                free_slots: h.job_slots - running,
                bytes_in_flight: h.bytes_in_flight.max(bytes),
            })
        })
        .collect();
    out.sort_by(|a, b| a.host.host_id.cmp(&b.host.host_id));
    out
}

/// Whether `host` reaches storage domain `sd`.
pub fn reaches(host: &pb::Host, sd: &str) -> bool {
    host.storage_domain_ids.iter().any(|d| d == sd)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A host `id` reaching domains "a" and "b" with `slots` slots, `running` of them busy.
    pub fn host(id: &str, slots: u32, running: u32, bytes: u64) -> pb::Host {
        pb::Host {
            host_id: id.into(),
            address: format!("{id}:1"),
            storage_domain_ids: vec!["a".into(), "b".into()],
            job_slots: slots,
            running_jobs: running,
            bytes_in_flight: bytes,
            ..Default::default()
        }
    }

    /// A step over `hosts` with `spm`.
    pub fn step(hosts: &[pb::Host], spm: Option<&str>) -> Step {
        Step {
            candidates: candidates(hosts, &Placed::new(), "a", "b"),
            spm: spm.map(String::from),
            params: pb::CopyDataParams::default(),
            size_bytes: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::host, *};

    #[test]
    fn candidates_reach_both_domains_and_have_a_free_slot() {
        let mut far = host("far", 2, 0, 0);
        far.storage_domain_ids = vec!["a".into()];
        let hosts = [host("full", 2, 2, 0), far, host("ok", 2, 1, 5)];
        let c = candidates(&hosts, &Placed::new(), "a", "b");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].host.host_id, "ok");
        assert_eq!(c[0].free_slots, 1);
    }

    #[test]
    fn placed_copies_count_until_the_host_reports_them() {
        let hosts = [host("h1", 2, 0, 0), host("h2", 2, 0, 0)];
        let placed = Placed::from([("h1".to_string(), (2, 100)), ("h2".to_string(), (1, 7))]);
        let c = candidates(&hosts, &placed, "a", "b");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].free_slots, c[0].bytes_in_flight), (1, 7));
    }
}
