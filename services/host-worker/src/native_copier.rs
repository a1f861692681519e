//! The native copier (`--copier native`; issue 14): the source and the destination each served by
//! a `qemu-nbd` on a private Unix socket, opened from the same `json:` images of inherited
//! descriptors as `qemu-img convert` (so no name on shared storage is followed), and the engine of
//! `crates/copier` between them: only what block status calls data is read, zeroes go without a
//! payload, one layer of a chain is copied on its own from `qemu:allocation-depth`. The sockets
//! live in `<state dir>/nbd/<job id>/`.
//!
//! The destination's `qemu-nbd` — the only process that writes — runs under the copier watchdog
//! exactly as `qemu-img` does: it lives only while this worker's heartbeats come, which they do only
//! while the session lease is valid, so a frozen or fenced worker's writer dies before its lease
//! can expire. The source's `qemu-nbd` only reads. Every data piece is paid for from the host's
//! bandwidth budget, shared by its running copies, and from the copy's own limit if one is set.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use datapath_api::{ids::JobId, job_error::JobErrorCode};
use datapath_copier::{copy, CopyError, CopyOptions, Scope, TokenBucket};
use datapath_nbd::QemuNbd;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    copier::{heartbeat, read_stderr, send_progress},
    copy::Failure,
    copy_failure::{convert_failure, CopyEnds},
    image_files,
    jobs::{JobControl, StopReason},
    metrics::CopyMeter,
    qemu,
    worker::Worker,
};

/// Which program copies a volume's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CopierKind {
    /// `qemu-img convert` (the default).
    QemuImg,
    /// The native copier over NBD.
    Native,
}

/// How long the destination's `qemu-nbd` is given to exit once its client has left.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failed copy's destination `qemu-nbd` is given to show it had already exited.
const FAILED_EXIT_TIMEOUT: Duration = Duration::from_millis(500);

/// Copies `convert`'s source into its destination natively, reporting progress, until done or
/// stopped.
pub(crate) async fn run(
    worker: &Arc<Worker>,
    id: JobId,
    control: &JobControl,
    convert: &qemu::Convert<'_>,
    ends: &CopyEnds<'_>,
    meter: &CopyMeter,
) -> Result<(), Failure> {
    let dir = SocketDir::new(&worker.nbd_dir, id)
        .map_err(|e| failed(format!("socket directory: {e}")))?;
    let layer_only = convert.dst_backing.is_some();
    info!(job_id = %id, layer_only, "copying natively over NBD");
    let direct =
        qemu::supports_direct_io(convert.src.top()) && qemu::supports_direct_io(convert.dst.top());
    let cache = if direct { "none" } else { "writeback" };
    let mut source = QemuNbd::spawn(
        source_command(convert, &dir.source(), cache, layer_only),
        &dir.source(),
    )
    .map_err(|e| failed(format!("cannot run qemu-nbd: {e}")))?;
    let deadline = convert
        .watchdog
        .unwrap_or(crate::watchdog::timing(worker.session_ttl).0);
    let mut destination = QemuNbd::spawn(
        destination_command(convert, &dir.destination(), cache, deadline)
            .map_err(|e| failed(format!("cannot run the watchdog: {e}")))?,
        &dir.destination(),
    )
    .map_err(|e| failed(format!("cannot run qemu-nbd: {e}")))?;
    let heartbeats = destination
        .child_mut()
        .stdin
        .take()
        .and_then(|s| tokio::process::ChildStdin::from_std(s).ok())
        .map(|stdin| tokio::spawn(heartbeat(worker.clone(), stdin)));
    let errors = destination
        .child_mut()
        .stderr
        .take()
        .and_then(|s| tokio::process::ChildStderr::from_std(s).ok());
    // The watchdog's stderr (its reports of bytes written, qemu-nbd's messages) ends when it exits.
    let read_errors = async {
        let mut text = String::new();
        if let Some(err) = errors {
            let _ = read_stderr(err, &mut text, meter).await;
        }
        text
    };
    meter.copier_started();
    control.set_copier(Some(destination.id()));
    let copying = async {
        let result = copy_between(
            worker,
            id,
            control,
            &mut source,
            &mut destination,
            layer_only,
            convert.preallocated,
        )
        .await;
        drop(source);
        let status = match &result {
            // The destination's qemu-nbd exits once its client has left; a watchdog that killed it
            // says so in its exit status. The heartbeats go on until then: without them the
            // watchdog would kill a qemu-nbd that is only closing.
            Ok(Ok(())) if control.reason().is_none() => {
                destination.exit_within(EXIT_TIMEOUT).await.ok()
            }
            // A failed copy: its writer may have died first (killed by its watchdog, which its
            // exit status tells); else it is killed.
            Ok(Err(_)) if control.reason().is_none() => {
                destination.exit_within(FAILED_EXIT_TIMEOUT).await.ok()
            }
            // A stopped copy: its writer is killed (dropped) at once.
            _ => {
                drop(destination);
                None
            }
        };
        control.set_copier(None);
        if let Some(h) = heartbeats {
            h.abort();
        }
        (result, status)
    };
    let ((result, status), text) = tokio::join!(copying, read_errors);
    meter.copier_ended();
    let span = tracing::Span::current();
    span.record("datapath.copy.bytes_written", meter.bytes());
    if let Some(code) = status.and_then(|s| s.code()) {
        span.record("process.exit.code", code);
    }
    match result {
        Err(reason) => Err(Failure::Stopped(reason)),
        Ok(_) if control.reason().is_some() => Err(Failure::Stopped(
            control.reason().unwrap_or(StopReason::Aborted),
        )),
        Ok(Ok(())) if status.is_some_and(|s| s.success()) => Ok(()),
        Ok(copied) => {
            let (code, message) = match (&copied, status) {
                (_, Some(s)) if !s.success() => convert_failure(&text, Some(s), ends),
                (Err(e), _) => (JobErrorCode::CopyFailed, format!("native copy: {e}")),
                _ => (
                    JobErrorCode::CopyFailed,
                    "native copy: the destination's qemu-nbd did not exit".into(),
                ),
            };
            warn!(job_id = %id, %code, exit = ?status, stderr = %text.trim(), "native copy failed");
            Err(Failure::failed(code, message))
        }
    }
}

/// Connects to both ends and runs the engine, its progress sent to the job; `Err` when the job
/// was stopped first. The clients are closed before it returns.
async fn copy_between(
    worker: &Arc<Worker>,
    id: JobId,
    control: &JobControl,
    source: &mut QemuNbd,
    destination: &mut QemuNbd,
    layer_only: bool,
    preallocated: bool,
) -> Result<Result<(), CopyError>, StopReason> {
    let contexts: &[&str] = if layer_only {
        &["base:allocation", "qemu:allocation-depth"]
    } else {
        &["base:allocation"]
    };
    let work = async {
        let src = source
            .connect("", contexts)
            .await
            .map_err(CopyError::Source)?;
        let dst = destination
            .connect("", &[])
            .await
            .map_err(CopyError::Destination)?;
        let opts = CopyOptions {
            scope: if layer_only {
                Scope::LayerOnly
            } else {
                Scope::Whole
            },
            allocate_zeroes: preallocated,
            limits: limits(worker),
            ..Default::default()
        };
        let size = src.size().max(1);
        let (progress_tx, progress_rx) = watch::channel(0u32);
        let sender = tokio::spawn(send_progress(worker.clone(), id, progress_rx));
        let copied = copy(&src, &dst, &opts, |p| {
            let percent = (p.done.saturating_mul(100) / size).min(100) as u32;
            worker
                .jobs
                .update(id, |j| j.progress = j.progress.max(percent));
            progress_tx.send_if_modified(|v| std::mem::replace(v, percent) != percent);
        })
        .await;
        sender.abort();
        let _ = src.disconnect().await;
        let _ = dst.disconnect().await;
        copied.map(drop)
    };
    tokio::select! {
        copied = work => Ok(copied),
        reason = control.stopped() => Err(reason),
    }
}

/// The buckets a native copy pays from: the host's, and one of its own for a per-copy limit.
fn limits(worker: &Worker) -> Vec<Arc<TokenBucket>> {
    let own =
        (worker.per_copy_limit > 0).then(|| Arc::new(TokenBucket::new(worker.per_copy_limit)));
    worker.host_bandwidth.iter().cloned().chain(own).collect()
}

fn failed(message: String) -> Failure {
    Failure::failed(JobErrorCode::CopyFailed, message)
}

/// `qemu-nbd` serving the source chain read-only.
fn source_command(
    convert: &qemu::Convert<'_>,
    socket: &Path,
    cache: &str,
    layer_only: bool,
) -> std::process::Command {
    let mut cmd = std::process::Command::new("qemu-nbd");
    cmd.arg("--read-only")
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--cache={cache}"));
    if layer_only {
        cmd.arg("--allocation-depth");
    }
    cmd.arg(convert.src.spec());
    image_files::inherit(&mut cmd, convert.src.fds());
    qemu::die_with_parent(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// The copier watchdog running `qemu-nbd` over the destination (its backing chain read-only).
fn destination_command(
    convert: &qemu::Convert<'_>,
    socket: &Path,
    cache: &str,
    deadline: Duration,
) -> std::io::Result<std::process::Command> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg(crate::watchdog::SUBCOMMAND)
        .arg(deadline.as_millis().to_string())
        .arg("qemu-nbd")
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--cache={cache}"))
        .arg(convert.dst.spec());
    image_files::inherit(&mut cmd, convert.dst.fds());
    qemu::die_with_parent(&mut cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// The root of the per-job socket directories, `<state dir>/nbd`, emptied at start: what a worker
/// killed mid-copy left there (its drop never ran) goes with the next start, when no copy of this
/// host runs. Falls back to the temporary directory when a socket path under the state directory
/// would be too long for a Unix socket (108 bytes).
pub fn prepare_socket_root(state_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    const LONGEST_SOCKET_UNDER_ROOT: usize = "/00000000-0000-0000-0000-000000000000/dst.sock".len();
    let mut root = state_dir.join("nbd");
    if root.as_os_str().len() + LONGEST_SOCKET_UNDER_ROOT >= 108 {
        root = std::env::temp_dir().join(format!("datapath-nbd-{}", std::process::id()));
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)?;
    Ok(root)
}

/// A private directory for one job's two sockets, removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(root: &Path, id: JobId) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = root.join(id.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Self(dir))
    }

    fn source(&self) -> PathBuf {
        self.0.join("src.sock")
    }

    fn destination(&self) -> PathBuf {
        self.0.join("dst.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_root_is_emptied_at_start_and_never_too_long_for_a_socket() {
        let state = tempfile::tempdir().unwrap();
        let root = prepare_socket_root(state.path()).unwrap();
        assert_eq!(root, state.path().join("nbd"));
        std::fs::create_dir(root.join("left-by-a-killed-worker")).unwrap();
        assert_eq!(prepare_socket_root(state.path()).unwrap(), root);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "not emptied");

        let deep = state.path().join("x".repeat(90));
        let root = prepare_socket_root(&deep).unwrap();
        let socket = root.join(JobId::random().to_string()).join("dst.sock");
        assert!(socket.as_os_str().len() < 108, "{}", socket.display());
        let _ = std::fs::remove_dir_all(root);
    }
}
