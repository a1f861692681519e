//! The host's spans of a copy, so the operation's trace shows what happened here: the job (a child
//! of the CopyData call; its context is stored in the job record) and the `qemu-img convert` run
//! itself, with formats, bytes, duration (the span's own) and exit status.
use std::process::ExitStatus;

use datapath_api::volume::CopyDataSpec;
use tracing::{field::Empty, Span};

use crate::{jobs::StopReason, qemu::Convert};

/// The span of a CopyData job, from acceptance to its final report.
pub fn job(spec: &CopyDataSpec, size_bytes: u64) -> Span {
    tracing::info_span!(
        "copy_data.job",
        otel.name = "CopyData job",
        datapath.job.id = %spec.job_id,
        datapath.source.volume = %spec.source.volume,
        datapath.destination.volume = %spec.destination.volume,
        datapath.job.size_bytes = size_bytes,
    )
}

/// The span of one copier run: `qemu-img convert`, or the native copier over NBD (`native`).
pub fn copier(c: &Convert<'_>, native: bool) -> Span {
    macro_rules! copier_span {
        ($name:literal, $otel:literal, $exe:literal) => {
            tracing::info_span!(
                $name,
                otel.name = $otel,
                process.executable.name = $exe,
                datapath.copy.source_format = c.src.format().qemu_name(),
                datapath.copy.destination_format = c.dst.format().qemu_name(),
                datapath.copy.preallocated = c.preallocated,
                datapath.copy.rate_limit_bytes_per_second = c.rate_limit,
                datapath.copy.bytes_written = Empty,
                process.exit.code = Empty,
                datapath.copy.stopped = Empty,
                otel.status_code = Empty,
                otel.status_description = Empty,
            )
        };
    }
    if native {
        copier_span!("nbd.copy", "native copy", "qemu-nbd")
    } else {
        copier_span!("qemu_img.convert", "qemu-img convert", "qemu-img")
    }
}

fn failed(span: &Span, why: String) {
    span.record("otel.status_code", "error");
    span.record("otel.status_description", why);
}

/// Records how the copier ended on its span: the bytes it wrote (measured by its watchdog), its exit
/// code, or why the job stopped it.
pub fn copier_ended<T>(
    span: &Span,
    result: &Result<(std::io::Result<ExitStatus>, T), StopReason>,
    bytes_written: u64,
) {
    span.record("datapath.copy.bytes_written", bytes_written);
    match result {
        Ok((Ok(status), _)) => {
            use std::os::unix::process::ExitStatusExt as _;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            span.record("process.exit.code", code);
            if !status.success() {
                failed(span, format!("qemu-img exited with {code}"));
            }
        }
        Ok((Err(e), _)) => failed(span, format!("qemu-img: {e}")),
        Err(reason) => {
            span.record("datapath.copy.stopped", format!("{reason:?}"));
            failed(span, format!("copier stopped: {reason:?}"));
        }
    }
}
