//! The spans of a flow, so an operation reads as one trace: the flow (a child of the call that
//! started it, through the trace context stored in its record — also when another scheduler resumes
//! it), its steps (named as oVirt's engine names them), each volume's copy and each attempt, and the
//! recovery decisions taken when a copy is lost.
use tracing::{field::Empty, Span};

use super::{
    model::{Flow, Volume},
    volume_state::Attempt,
};

/// The span of one run of a flow. `resumed` is set when an earlier run had started it (this run is
/// after a scheduler restart or failover, or a runner restarted after losing etcd).
pub fn flow(op: &str, flow: &Flow) -> Span {
    let kind = flow.kind.name();
    let span = tracing::info_span!(
        "flow",
        otel.name = %format!("flow {kind}"),
        datapath.operation.name = %op,
        datapath.operation.kind = kind,
        datapath.flow.resumed = flow.runs > 1,
        datapath.flow.runs = flow.runs,
        datapath.flow.step_at_start = ?flow.step.to_pb(),
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
pub fn volume(v: &Volume) -> Span {
    tracing::info_span!(
        "flow.copy_volume",
        otel.name = "CopyVolume",
        datapath.volume.id = %v.source.volume,
        datapath.image.id = %v.source.image,
        datapath.source.storage_domain.id = %v.source.storage_domain,
        datapath.destination.storage_domain.id = %v.destination.storage_domain,
        datapath.volume.size_bytes = v.size_bytes,
    )
}

/// The span of one attempt: its host, job and number, and how it ended (`datapath.copy.outcome`).
pub fn attempt(v: &Volume, a: &Attempt) -> Span {
    tracing::info_span!(
        "flow.copy_attempt",
        otel.name = "CopyAttempt",
        datapath.host.id = %a.host,
        datapath.job.id = %a.job,
        datapath.copy.attempt = v.attempts,
        datapath.copy.generation = a.expected_generation,
        datapath.copy.outcome = Empty,
    )
}

/// The span of a recovery decision from the destination volume (`conclude.rs`); its
/// `datapath.recovery.decision` says what the volume showed.
pub fn conclude(a: &Attempt) -> Span {
    tracing::info_span!(
        "flow.recovery",
        otel.name = "ConcludeFromDestination",
        datapath.job.id = %a.job,
        datapath.host.id = %a.host,
        datapath.copy.generation = a.expected_generation,
        datapath.recovery.decision = Empty,
    )
}

/// The span of the check of a reported success against the destination volume (`conclude::settle`);
/// its `datapath.recovery.decision` says what the volume showed (`committed` when it shows the copy).
pub fn verify(a: &Attempt) -> Span {
    tracing::info_span!(
        "flow.verify",
        otel.name = "VerifyDestination",
        datapath.job.id = %a.job,
        datapath.host.id = %a.host,
        datapath.copy.generation = a.expected_generation,
        datapath.recovery.decision = Empty,
    )
}
