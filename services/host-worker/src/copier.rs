//! The copier of a CopyData job: `qemu-img convert` under its watchdog, with the heartbeats that keep
//! it alive only while this worker holds its session lease, its progress relayed to the job-tracker,
//! and its stderr split into error text and the watchdog's measured bytes written.
use std::sync::Arc;

use datapath_api::{ids::JobId, job_error::JobErrorCode};
use tokio::sync::watch;
use tracing::{warn, Instrument as _, Span};

use crate::{
    copy::Failure,
    copy_failure::{convert_failure, CopyEnds},
    jobs::{JobControl, StopReason},
    metrics::CopyMeter,
    qemu, spans,
    worker::Worker,
};

/// Runs qemu-img, reporting progress, until it exits or the job is stopped. A failure is told by
/// `copy_failure` (code and a message without paths); qemu-img's own words go to the log.
pub(crate) async fn run_copier(
    worker: &Arc<Worker>,
    id: JobId,
    control: &JobControl,
    convert: &qemu::Convert<'_>,
    ends: &CopyEnds<'_>,
    meter: &CopyMeter,
) -> Result<(), Failure> {
    if worker.simulated_copy_rate > 0 {
        return simulate(worker, id, control, ends, meter).await;
    }
    if worker.copier == crate::native_copier::CopierKind::Native {
        return crate::native_copier::run(worker, id, control, convert, ends, meter).await;
    }
    let mut child = qemu::spawn_convert(convert)
        .map_err(|e| Failure::failed(JobErrorCode::CopyFailed, e.to_string()))?;
    meter.copier_started();
    control.set_copier(child.id());
    let heartbeats = child
        .stdin
        .take()
        .map(|stdin| tokio::spawn(heartbeat(worker.clone(), stdin)));
    let (progress_tx, progress_rx) = watch::channel(0u32);
    let sender = tokio::spawn(send_progress(worker.clone(), id, progress_rx).in_current_span());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let follow = async {
        if let Some(out) = stdout {
            let _ = qemu::follow_progress(out, |p| {
                worker.jobs.update(id, |j| j.progress = j.progress.max(p));
                progress_tx.send_replace(p);
            })
            .await;
        }
    };
    let errors = async {
        let mut text = String::new();
        if let Some(err) = stderr {
            let _ = read_stderr(err, &mut text, meter).await;
        }
        text
    };
    let copier = async {
        let ((), text) = tokio::join!(follow, errors);
        (child.wait().await, text)
    };
    let result = tokio::select! {
        done = copier => Ok(done),
        reason = control.stopped() => Err(reason),
    };
    spans::copier_ended(&Span::current(), &result, meter.bytes());
    control.set_copier(None);
    meter.copier_ended();
    sender.abort();
    if let Some(h) = heartbeats {
        h.abort();
    }
    match result {
        Err(reason) => {
            let _ = child.kill().await;
            Err(Failure::Stopped(reason))
        }
        Ok(_) if control.reason().is_some() => Err(Failure::Stopped(
            control.reason().unwrap_or(StopReason::Aborted),
        )),
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((status, text)) => {
            let status = status.ok();
            let (code, message) = convert_failure(&text, status, ends);
            warn!(job_id = %id, %code, exit = ?status, stderr = %text.trim(), "qemu-img convert failed");
            Err(Failure::failed(code, message))
        }
    }
}

/// `--simulated-copy-rate` (benchmarks only): the copy takes the source's allocated bytes at that
/// rate, in ten steps of progress, and writes nothing. It stops as a real copy does.
async fn simulate(
    worker: &Arc<Worker>,
    id: JobId,
    control: &JobControl,
    ends: &CopyEnds<'_>,
    meter: &CopyMeter,
) -> Result<(), Failure> {
    const STEPS: u32 = 10;
    let bytes = worker.storage.allocated_bytes(&ends.src);
    let step = std::time::Duration::from_secs_f64(
        bytes as f64 / worker.simulated_copy_rate as f64 / f64::from(STEPS),
    );
    meter.copier_started();
    let mut result = Ok(());
    for i in 1..=STEPS {
        tokio::select! {
            () = tokio::time::sleep(step) => {}
            reason = control.stopped() => {
                result = Err(Failure::Stopped(reason));
                break;
            }
        }
        let p = i * 100 / STEPS;
        worker.jobs.update(id, |j| j.progress = j.progress.max(p));
        worker.reporter.progress(id, p).await;
    }
    meter.copier_ended();
    result
}

/// Reads the copier's stderr into `text`, except the watchdog's bytes-written reports, which go to
/// `meter` as they come.
pub(crate) async fn read_stderr(
    stderr: impl tokio::io::AsyncRead + Unpin,
    text: &mut String,
    meter: &CopyMeter,
) -> std::io::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    while lines.read_until(b'\n', &mut line).await? > 0 {
        let decoded = String::from_utf8_lossy(&line);
        let (message, written) = crate::watchdog::split_report(&decoded);
        if let Some(n) = written {
            meter.written(n);
        }
        if !message.trim().is_empty() {
            text.push_str(message);
            if written.is_some() {
                text.push('\n');
            }
        }
        line.clear();
    }
    Ok(())
}

/// Tells the copier's watchdog that this worker is alive, while its session lease is valid. Runs on
/// the runtime like everything else, so a stopped or wedged worker falls silent and its copier dies.
pub(crate) async fn heartbeat(worker: Arc<Worker>, mut stdin: tokio::process::ChildStdin) {
    use tokio::io::AsyncWriteExt as _;
    let (_, every) = crate::watchdog::timing(worker.session_ttl);
    loop {
        if worker.lease_id().is_ok() && stdin.write_all(b".").await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Sends the newest progress to the job-tracker whenever it changes, without holding up the copier.
pub(crate) async fn send_progress(worker: Arc<Worker>, id: JobId, mut rx: watch::Receiver<u32>) {
    while rx.changed().await.is_ok() {
        let p = *rx.borrow_and_update();
        worker.reporter.progress(id, p).await;
    }
}
