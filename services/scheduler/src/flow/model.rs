//! A flow as the scheduler reasons about it: its kind and step as enums, its disks and volumes as
//! typed keys, each volume's copy as a typed [`CopyState`]. `pb::Flow` is only how a flow is stored
//! and shown: a record becomes a [`Flow`] through [`Flow::from_pb`] when its run begins, and goes
//! back through [`Flow::to_pb`] at every save (`state.rs`).
//!
//! A record written by another version or edited by hand may name a step, a kind, a volume state
//! or format this scheduler does not know, or ids that do not parse. Running such a flow from a
//! default would be wrong in the worst way — an unknown step read as the first one re-runs the
//! structure step over a half-moved disk, a corrupt disk reference becomes the nil id — so it does
//! not convert, and the flow is **parked** instead (`runner::park`): nothing of it runs, its disks
//! stay locked, and its operation ends with `NEEDS_OPERATOR` naming what is wrong, visible in
//! `dpctl ops list` and kept (no retention lease) until an operator deletes it.
use std::collections::HashMap;

use datapath_api::{
    ids::{OperationId, VolumeId},
    pb::{self, OperationKind, OperationStep},
    volume::{DiskKey, VolumeKey},
};
use prost_types::Timestamp;

use super::volume_state::{Attempt, CopyState};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// MoveDisk: copy a disk's chain to another domain, then delete the source.
    MoveDisk,
    /// CloneDisk: collapse a template volume into a new disk.
    CloneDisk,
}

impl Kind {
    /// Its stored and shown value.
    pub fn to_pb(self) -> OperationKind {
        match self {
            Self::MoveDisk => OperationKind::MoveDisk,
            Self::CloneDisk => OperationKind::CloneDisk,
        }
    }

    /// The name oVirt's users know it by (span names).
    pub fn name(self) -> &'static str {
        match self {
            Self::MoveDisk => "MoveDisk",
            Self::CloneDisk => "CloneDisk",
        }
    }
}

/// Where a flow stands (see `machine.rs` for how it moves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create the destination volumes on the SPM.
    CloneStructure,
    /// Copy every volume on selected hosts.
    CopyData,
    /// Delete the source (moves only); past the point of no return.
    DeleteSource,
    /// Undo what was created, then end with the failure.
    Rollback,
    /// End the operation.
    Done,
}

impl Step {
    /// Its stored and shown value.
    pub fn to_pb(self) -> OperationStep {
        match self {
            Self::CloneStructure => OperationStep::CloneStructure,
            Self::CopyData => OperationStep::CopyData,
            Self::DeleteSource => OperationStep::DeleteSource,
            Self::Rollback => OperationStep::Rollback,
            Self::Done => OperationStep::Done,
        }
    }

    /// The step a stored value names; `None` for one this scheduler does not know.
    pub fn from_pb(raw: i32) -> Option<Self> {
        Some(match OperationStep::try_from(raw).ok()? {
            OperationStep::Unspecified => return None,
            OperationStep::CloneStructure => Self::CloneStructure,
            OperationStep::CopyData => Self::CopyData,
            OperationStep::DeleteSource => Self::DeleteSource,
            OperationStep::Rollback => Self::Rollback,
            OperationStep::Done => Self::Done,
        })
    }
}

/// How an ended operation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The disk as it is after the operation.
    Succeeded(DiskKey),
    /// Why it failed (or was parked, or cancelled).
    Failed(pb::OperationError),
}

/// One volume of a flow: where its data comes from, the volume the structure step creates for it,
/// and its copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// The volume read.
    pub source: VolumeKey,
    /// The volume written (created ILLEGAL by the structure step).
    pub destination: VolumeKey,
    /// The destination's format, allocation, size, parent and role, as the structure step creates it.
    pub format: pb::VolumeFormat,
    /// See `format`.
    pub allocation: pb::VolumeAllocation,
    /// Virtual size of the destination.
    pub capacity_bytes: u64,
    /// The destination's parent in its image (a layer of a moved chain).
    pub parent: Option<VolumeId>,
    /// See `format`.
    pub role: pb::VolumeRole,
    /// Bytes to copy: the volume's weight in the operation's progress.
    pub size_bytes: u64,
    /// Where its copy stands.
    pub copy: CopyState,
    /// The latest attempt, also once it ended (which job to show, which host failed).
    pub last_attempt: Option<Attempt>,
    /// Attempts that count against the limit.
    pub attempts: u32,
    /// The current job's progress (0–100), as last seen.
    pub progress: u32,
    /// The current job's status, as last seen.
    pub job_status: pb::JobStatus,
    /// Hosts (as registered) whose attempt failed; a retry prefers another.
    pub failed_hosts: Vec<String>,
    /// Tries ended by a transient conflict (not counted as attempts).
    pub transient_retries: u32,
    /// When the current run of transient conflicts began.
    pub transient_since: Option<Timestamp>,
    /// Why the last attempt or try ended without a copy.
    pub last_error: Option<pb::JobError>,
}

impl Volume {
    /// A volume no attempt has touched.
    pub fn pending(source: VolumeKey, destination: VolumeKey) -> Self {
        Self {
            source,
            destination,
            format: pb::VolumeFormat::Raw,
            allocation: pb::VolumeAllocation::Sparse,
            capacity_bytes: 0,
            parent: None,
            role: pb::VolumeRole::Leaf,
            size_bytes: 0,
            copy: CopyState::Pending,
            last_attempt: None,
            attempts: 0,
            progress: 0,
            job_status: pb::JobStatus::Unspecified,
            failed_hosts: Vec::new(),
            transient_retries: 0,
            transient_since: None,
            last_error: None,
        }
    }

    /// Sets the copy state; an attempt also becomes the latest one.
    pub fn set_copy(&mut self, state: CopyState) {
        if let CopyState::Copying(a) = state {
            self.last_attempt = Some(a);
        }
        self.copy = state;
    }

    /// The stored form's job and host of the latest attempt (empty before the first).
    fn attempt_ids(&self) -> (String, String) {
        self.last_attempt
            .map(|a| (a.job.to_string(), a.host.to_string()))
            .unwrap_or_default()
    }

    fn from_pb(i: usize, v: &pb::FlowVolume) -> Result<Self, String> {
        let copy = CopyState::of(v).map_err(|bad| format!("volume {i}: {bad}"))?;
        let key = |field, r: &Option<pb::VolumeRef>| {
            VolumeKey::from_pb(field, r.as_ref())
                .map_err(|_| format!("volume {i} has no valid {field}"))
        };
        let known = |what: &str, raw: i32, ok: bool| {
            ok.then_some(())
                .ok_or_else(|| format!("volume {i}: {what} {raw} is not one this scheduler knows"))
        };
        let format = pb::VolumeFormat::try_from(v.format).unwrap_or_default();
        known("format", v.format, format != pb::VolumeFormat::Unspecified)?;
        let allocation = pb::VolumeAllocation::try_from(v.allocation).unwrap_or_default();
        known(
            "allocation",
            v.allocation,
            allocation != pb::VolumeAllocation::Unspecified,
        )?;
        let role = pb::VolumeRole::try_from(v.role).unwrap_or_default();
        known("role", v.role, role != pb::VolumeRole::Unspecified)?;
        let job_status = pb::JobStatus::try_from(v.job_status)
            .map_err(|_| format!("volume {i}: job status {} is unknown", v.job_status))?;
        let parent = match v.parent_volume_id.as_str() {
            "" => None,
            id => Some(
                VolumeId::parse("parent_volume_id", id)
                    .map_err(|_| format!("volume {i} has no valid parent_volume_id"))?,
            ),
        };
        // A past attempt's ids are history: kept when they parse (a copy in progress must have
        // valid ones, which `CopyState::of` checked).
        let last_attempt = copy.attempt().or_else(|| {
            Some(Attempt {
                job: v.job_id.parse().ok()?,
                host: v.host_id.parse().ok()?,
                expected_generation: v.expected_generation,
            })
        });
        Ok(Self {
            source: key("source", &v.source)?,
            destination: key("destination", &v.destination)?,
            format,
            allocation,
            capacity_bytes: v.capacity_bytes,
            parent,
            role,
            size_bytes: v.size_bytes,
            copy,
            last_attempt,
            attempts: v.attempts,
            progress: v.progress,
            job_status,
            failed_hosts: v.failed_hosts.clone(),
            transient_retries: v.transient_retries,
            transient_since: v.transient_since,
            last_error: v.last_error.clone(),
        })
    }

    fn to_pb(&self) -> pb::FlowVolume {
        let (job_id, host_id) = self.attempt_ids();
        let mut v = pb::FlowVolume {
            source: Some(self.source.to_pb()),
            destination: Some(self.destination.to_pb()),
            format: self.format as i32,
            allocation: self.allocation as i32,
            capacity_bytes: self.capacity_bytes,
            parent_volume_id: self.parent.map(|p| p.to_string()).unwrap_or_default(),
            role: self.role as i32,
            size_bytes: self.size_bytes,
            state: 0,
            job_id,
            host_id,
            expected_generation: self.last_attempt.map_or(0, |a| a.expected_generation),
            attempts: self.attempts,
            progress: self.progress,
            job_status: self.job_status as i32,
            failed_hosts: self.failed_hosts.clone(),
            transient_retries: self.transient_retries,
            transient_since: self.transient_since,
            last_error: self.last_error.clone(),
        };
        self.copy.store(&mut v);
        v
    }

    /// The volume's line in the operation's public view.
    pub fn progress_view(&self) -> pb::VolumeProgress {
        let (job_id, host_id) = self.attempt_ids();
        pb::VolumeProgress {
            volume_id: self.destination.volume.to_string(),
            job_id,
            host_id,
            progress: if self.copy == CopyState::Copied {
                100
            } else {
                self.progress
            },
            size_bytes: self.size_bytes,
            status: self.job_status as i32,
            attempts: self.attempts,
            transient_retries: self.transient_retries,
        }
    }
}

/// An operation's flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// The operation.
    pub op: OperationId,
    /// What it does.
    pub kind: Kind,
    /// Where it stands.
    pub step: Step,
    /// The disk the operation is about (a move's source, a clone's new disk).
    pub disk: DiskKey,
    /// The disk the flow writes: the move's destination or the clone's new disk.
    pub destination: DiskKey,
    /// The caller's idempotency key (AIP-155), when given.
    pub request_id: String,
    /// Every volume to create and copy, base first.
    pub volumes: Vec<Volume>,
    /// Why the flow is rolling back, set when rollback starts.
    pub failure: Option<pb::OperationError>,
    /// The disks the flow owns, released when it ends.
    pub exclusive_locks: Vec<DiskKey>,
    /// The disks the flow reads (a clone's template), released when it ends.
    pub shared_locks: Vec<DiskKey>,
    /// The trace context of the call that started the operation.
    pub trace_context: HashMap<String, String>,
    /// How many times a scheduler started running the flow.
    pub runs: u32,
    /// A cancel was asked (CancelOperation writes it into the record).
    pub cancel_requested: bool,
    /// The progress shown (0–100); never goes down (`progress.rs`).
    pub progress: u32,
    /// When the operation was accepted.
    pub created_at: Option<Timestamp>,
    /// When the record was last saved.
    pub updated_at: Option<Timestamp>,
    /// The operation's trace id, for a tracing backend.
    pub trace_id: String,
    /// How it ended, once it has.
    pub end: Option<End>,
}

impl Flow {
    /// A new flow of `kind` about `disk`, at its first step, with no volume and no lock yet, in
    /// the trace of the call that asks for it.
    pub fn new(op: OperationId, kind: Kind, request_id: &str, disk: DiskKey) -> Self {
        let now = datapath_api::time::now();
        Self {
            op,
            kind,
            step: Step::CloneStructure,
            disk,
            destination: disk,
            request_id: request_id.to_string(),
            volumes: Vec::new(),
            failure: None,
            exclusive_locks: Vec::new(),
            shared_locks: Vec::new(),
            trace_context: datapath_telemetry::current_carrier(),
            runs: 0,
            cancel_requested: false,
            progress: 0,
            created_at: Some(now),
            updated_at: Some(now),
            trace_id: datapath_telemetry::current_trace_id().unwrap_or_default(),
            end: None,
        }
    }

    /// The flow stored as `flow` for operation `op`, or why it cannot be run safely.
    pub fn from_pb(op: OperationId, flow: &pb::Flow) -> Result<Self, String> {
        let operation = flow.operation.as_ref().ok_or("the flow has no operation")?;
        let m = operation
            .metadata
            .as_ref()
            .ok_or("the operation has no metadata")?;
        let step = Step::from_pb(m.step)
            .ok_or_else(|| format!("step {} is not one this scheduler knows", m.step))?;
        let kind = match OperationKind::try_from(m.kind) {
            Ok(OperationKind::MoveDisk) => Kind::MoveDisk,
            Ok(OperationKind::CloneDisk) => Kind::CloneDisk,
            _ => return Err(format!("kind {} is not one this scheduler knows", m.kind)),
        };
        let volumes = flow
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| Volume::from_pb(i, v))
            .collect::<Result<_, _>>()?;
        let disk = |field: &str, d: Option<&pb::DiskRef>| {
            DiskKey::from_pb(field, d).map_err(|_| format!("its {field} names no valid disk"))
        };
        let disks = |field: &str, ds: &[pb::DiskRef]| {
            ds.iter()
                .map(|d| disk(field, Some(d)))
                .collect::<Result<Vec<_>, _>>()
        };
        let end = match (&operation.done, &operation.result) {
            (false, _) => None,
            (true, Some(pb::operation::Result::Error(e))) => Some(End::Failed(e.clone())),
            (true, Some(pb::operation::Result::Response(d))) => {
                Some(End::Succeeded(disk("response", Some(d))?))
            }
            (true, None) => return Err("the operation is done without a result".into()),
        };
        Ok(Self {
            op,
            kind,
            step,
            disk: disk("disk", m.disk.as_ref())?,
            destination: disk("destination", flow.destination.as_ref())?,
            request_id: flow.request_id.clone(),
            volumes,
            failure: flow.failure.clone(),
            exclusive_locks: disks("exclusive_locks", &flow.exclusive_locks)?,
            shared_locks: disks("shared_locks", &flow.shared_locks)?,
            trace_context: flow.trace_context.clone(),
            runs: flow.runs,
            cancel_requested: m.cancel_requested,
            progress: m.progress,
            created_at: m.created_at,
            updated_at: m.updated_at,
            trace_id: m.trace_id.clone(),
            end,
        })
    }

    /// The stored form, with the operation's public view.
    pub fn to_pb(&self) -> pb::Flow {
        let result = self.end.as_ref().map(|end| match end {
            End::Succeeded(d) => pb::operation::Result::Response(d.to_pb()),
            End::Failed(e) => pb::operation::Result::Error(e.clone()),
        });
        pb::Flow {
            operation: Some(pb::Operation {
                name: self.op.name(),
                metadata: Some(pb::OperationMetadata {
                    kind: self.kind.to_pb() as i32,
                    step: self.step.to_pb() as i32,
                    progress: self.progress,
                    disk: Some(self.disk.to_pb()),
                    volumes: self.volumes.iter().map(Volume::progress_view).collect(),
                    created_at: self.created_at,
                    updated_at: self.updated_at,
                    cancel_requested: self.cancel_requested,
                    trace_id: self.trace_id.clone(),
                }),
                done: self.end.is_some(),
                result,
            }),
            request_id: self.request_id.clone(),
            volumes: self.volumes.iter().map(Volume::to_pb).collect(),
            destination: Some(self.destination.to_pb()),
            failure: self.failure.clone(),
            exclusive_locks: self.exclusive_locks.iter().map(DiskKey::to_pb).collect(),
            shared_locks: self.shared_locks.iter().map(DiskKey::to_pb).collect(),
            trace_context: self.trace_context.clone(),
            runs: self.runs,
        }
    }

    /// Every disk whose lock the flow holds.
    pub fn locked_disks(&self) -> Vec<DiskKey> {
        self.exclusive_locks
            .iter()
            .chain(&self.shared_locks)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests;
