//! The spans of a flow, so an operation reads as one trace: the flow (a child of the call that
//! started it, through the trace context stored in its record — also when another scheduler resumes
//! it), its steps (named as oVirt's engine names them), each volume's copy and each attempt, and the
//! recovery decisions taken when a copy is lost.
use datapath_api::pb::{self, OperationKind, OperationStep};
use tracing::{field::Empty, Span};

use super::state::meta;

/// The span of one run of a flow. `resumed` is set when an earlier run had started it (this run is
/// after a scheduler restart or failover, or a runner restarted after losing etcd).
pub fn flow(op: &str, flow: &pb::Flow) -> Span {
    let m = meta(flow);
    let kind = match OperationKind::try_from(m.kind).unwrap_or_default() {
        OperationKind::MoveDisk => "MoveDisk",
        OperationKind::CloneDisk => "CloneDisk",
        OperationKind::Unspecified => "Operation",
    };
    let step = OperationStep::try_from(m.step).unwrap_or_default();
    let span = tracing::info_span!(
        "flow",
        otel.name = %format!("flow {kind}"),
        datapath.operation.name = %op,
        datapath.operation.kind = kind,
        datapath.flow.resumed = flow.runs > 1,
        datapath.flow.runs = flow.runs,
        datapath.flow.step_at_start = ?step,
        datapath.flow.volumes = flow.volumes.len(),
    );
    datapath_telemetry::continue_from(&span, &flow.trace_context);
    span
}

/// The span of one step (`CloneImageGroupVolumesStructure`, `CopyImageGroupVolumesData`, …).
pub fn step(name: &'static str) -> Span {
    tracing::info_span!("flow.step", otel.name = name)
}

/// The span of one volume's copy within `CopyImageGroupVolumesData`.
pub fn volume(v: &pb::FlowVolume) -> Span {
    let (src, dst) = (
        v.source.clone().unwrap_or_default(),
        v.destination.clone().unwrap_or_default(),
    );
    tracing::info_span!(
        "flow.copy_volume",
        otel.name = "CopyVolume",
        datapath.volume.id = %src.volume_id,
        datapath.image.id = %src.image_id,
        datapath.source.storage_domain.id = %src.storage_domain_id,
        datapath.destination.storage_domain.id = %dst.storage_domain_id,
        datapath.volume.size_bytes = v.size_bytes,
    )
}

/// The span of one attempt: its host, job and number, and how it ended (`datapath.copy.outcome`).
pub fn attempt(v: &pb::FlowVolume) -> Span {
    tracing::info_span!(
        "flow.copy_attempt",
        otel.name = "CopyAttempt",
        datapath.host.id = %v.host_id,
        datapath.job.id = %v.job_id,
        datapath.copy.attempt = v.attempts,
        datapath.copy.generation = v.expected_generation,
        datapath.copy.outcome = Empty,
    )
}

/// The span of a recovery decision from the destination volume (`conclude.rs`); its
/// `datapath.recovery.decision` says what the volume showed.
pub fn conclude(v: &pb::FlowVolume) -> Span {
    tracing::info_span!(
        "flow.recovery",
        otel.name = "ConcludeFromDestination",
        datapath.job.id = %v.job_id,
        datapath.host.id = %v.host_id,
        datapath.copy.generation = v.expected_generation,
        datapath.recovery.decision = Empty,
    )
}

/// The span of the check of a reported success against the destination volume (`conclude::settle`);
/// its `datapath.recovery.decision` says what the volume showed (`committed` when it shows the copy).
pub fn verify(v: &pb::FlowVolume) -> Span {
    tracing::info_span!(
        "flow.verify",
        otel.name = "VerifyDestination",
        datapath.job.id = %v.job_id,
        datapath.host.id = %v.host_id,
        datapath.copy.generation = v.expected_generation,
        datapath.recovery.decision = Empty,
    )
}
