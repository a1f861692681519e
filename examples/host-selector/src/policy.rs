//! The example policy, as pure functions so every rule is a table row in a unit test:
//! 1. the first host of the operator's preference list that is among the candidates;
//! 2. otherwise the candidate with the most free job slots (`job_slots - running_jobs`),
//! 3. then the fewest bytes in flight,
//! 4. then the smallest host id, so the answer never depends on the order candidates arrive in.
//!
//! Incoming candidates are validated first ([`candidates`]): a malformed or repeated host id is an
//! error naming the field, never a silent skip, because a scheduler that sends one has a bug to see.
use std::collections::HashSet;

use datapath_api::{error::FieldViolation, ids::HostId, pb};

/// One candidate host, as the policy weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The host.
    pub host_id: HostId,
    /// Job slots not in use; 0 when a host reports more running jobs than slots.
    pub free_slots: u32,
    /// Bytes its running copies still move.
    pub bytes_in_flight: u64,
}

/// Why no host was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// A field of the request is malformed.
    #[error(transparent)]
    Invalid(#[from] FieldViolation),
    /// The request names no candidate: there is nothing to choose from.
    #[error("no candidate hosts: the scheduler found no live host that reaches both domains")]
    NoCandidates,
}

impl From<SelectError> for tonic::Status {
    fn from(e: SelectError) -> Self {
        match e {
            SelectError::Invalid(v) => v.into(),
            SelectError::NoCandidates => datapath_api::error::status(
                tonic::Code::FailedPrecondition,
                "NO_CANDIDATES",
                e.to_string(),
                Some("candidates"),
            ),
        }
    }
}

/// The request's candidates, validated: each host id a UUID and none repeated; `spm_host_id`, when
/// set, a UUID too.
pub fn candidates(request: &pb::SelectHostRequest) -> Result<Vec<Candidate>, SelectError> {
    if !request.spm_host_id.is_empty() {
        HostId::parse("spm_host_id", &request.spm_host_id)?;
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(request.candidates.len());
    for (i, host) in request.candidates.iter().enumerate() {
        let field = format!("candidates[{i}].host_id");
        let host_id = HostId::parse(&field, &host.host_id)?;
        if !seen.insert(host_id) {
            return Err(FieldViolation::new(
                field,
                "DUPLICATE_ID",
                format!("host {host_id} is listed twice"),
            )
            .into());
        }
        out.push(Candidate {
            host_id,
            free_slots: host.job_slots.saturating_sub(host.running_jobs),
            bytes_in_flight: host.bytes_in_flight,
        });
    }
    Ok(out)
}

/// The chosen host among `candidates`, given the operator's `prefer` list (in order of preference).
pub fn choose(candidates: &[Candidate], prefer: &[HostId]) -> Result<HostId, SelectError> {
    if let Some(preferred) = prefer
        .iter()
        .find(|p| candidates.iter().any(|c| c.host_id == **p))
    {
        return Ok(*preferred);
    }
    candidates
        .iter()
        .min_by(|a, b| {
            b.free_slots
                .cmp(&a.free_slots)
                .then(a.bytes_in_flight.cmp(&b.bytes_in_flight))
                .then(a.host_id.cmp(&b.host_id))
        })
        .map(|c| c.host_id)
        .ok_or(SelectError::NoCandidates)
}

/// Validates `request` and chooses: the whole policy, from the wire message to the answer.
pub fn select(request: &pb::SelectHostRequest, prefer: &[HostId]) -> Result<HostId, SelectError> {
    choose(&candidates(request)?, prefer)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
