//! How a copy job's failure is told: a code from the shared vocabulary ([`JobErrorCode`]), which the
//! engine reads to decide whether the attempt counts or was a passing conflict, and a short message
//! that names volumes by id. Storage paths, exit statuses and qemu-img's raw stderr stay in the
//! host's log — a job record is read by anyone who may list jobs.
use std::{path::Path, process::ExitStatus};

use datapath_api::{job_error::JobErrorCode, volume::VolumeKey};

use crate::error::Error;

/// The two volumes of a copy and the file names qemu-img was given for them.
#[derive(Debug, Clone, Copy)]
pub struct CopyEnds<'a> {
    /// The source volume.
    pub src: VolumeKey,
    /// The destination volume.
    pub dst: VolumeKey,
    /// The source's file, as given to qemu-img.
    pub src_path: &'a Path,
    /// The destination's attempt name, as given to qemu-img.
    pub dst_path: &'a Path,
    /// The storage root, cut from any other path qemu-img names (a backing file, say).
    pub root: &'a Path,
}

/// The code and message of a `qemu-img convert` that exited with `status` after printing `stderr`.
pub fn convert_failure(
    stderr: &str,
    status: Option<ExitStatus>,
    ends: &CopyEnds<'_>,
) -> (JobErrorCode, String) {
    let (src, dst) = (ends.src.volume, ends.dst.volume);
    let names_source = stderr.contains(&format!("'{}'", ends.src_path.display()));
    if stderr.contains("copier-watchdog: copier killed") {
        return (
            JobErrorCode::WatchdogExpired,
            format!("the copy of volume {src} to {dst} was killed by its watchdog: the host-worker stopped sending heartbeats"),
        );
    }
    if stderr.contains("\"write\" lock") || stderr.contains("Failed to lock byte") {
        let which = if names_source {
            format!("source volume {src}")
        } else {
            format!("destination volume {dst}")
        };
        return (
            JobErrorCode::ImageLocked,
            format!("the image of {which} is locked by another process"),
        );
    }
    if stderr.contains("No space left on device") {
        return (
            JobErrorCode::NoSpace,
            format!(
                "no space left in storage domain {} for volume {dst}",
                ends.dst.storage_domain
            ),
        );
    }
    if stderr.contains("Input/output error") {
        let side = if stderr.contains("while reading") || names_source {
            format!("reading source volume {src}")
        } else {
            format!("writing destination volume {dst}")
        };
        return (JobErrorCode::IoError, format!("I/O error {side}"));
    }
    if names_source {
        return (
            JobErrorCode::SourceUnreadable,
            format!(
                "cannot read source volume {src}: {}",
                last_cause(stderr, ends)
            ),
        );
    }
    let how = match status.and_then(|s| s.code()) {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_string(),
    };
    (
        JobErrorCode::CopyFailed,
        format!(
            "qemu-img convert of volume {src} to {dst} {how}: {}",
            last_cause(stderr, ends)
        ),
    )
}

/// The most specific cause qemu-img gave — its last error's text after the last `: ` — with the
/// copy's file names replaced by volume ids and the storage root cut off any other path.
fn last_cause(stderr: &str, ends: &CopyEnds<'_>) -> String {
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("copier-watchdog:"))
        .unwrap_or("no message");
    let named = line
        .replace(
            &ends.dst_path.display().to_string(),
            &format!("destination volume {}", ends.dst.volume),
        )
        .replace(
            &ends.src_path.display().to_string(),
            &format!("source volume {}", ends.src.volume),
        )
        .replace(&format!("{}/", ends.root.display()), "");
    let cause = named.rsplit(": ").next().unwrap_or(&named);
    cause.chars().take(200).collect()
}

/// The code and message of a storage operation of the copy that failed: `what` (a verb phrase)
/// volume `volume`. The errno decides the code; no path is named.
pub fn storage_failure(what: &str, volume: &VolumeKey, e: &Error) -> (JobErrorCode, String) {
    match e {
        Error::Io { source, .. } => {
            let code = match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => JobErrorCode::NoSpace,
                Some(libc::EIO) => JobErrorCode::IoError,
                _ => JobErrorCode::StorageError,
            };
            (code, format!("cannot {what} volume {volume}: {source}"))
        }
        Error::Qemu(_) => (
            JobErrorCode::StorageError,
            format!("cannot {what} volume {volume}: qemu-img failed (see the host's log)"),
        ),
        Error::UnsafeFile { .. } => (JobErrorCode::UnsafeFile, e.to_string()),
        Error::Precondition { reason, .. }
            if *reason == JobErrorCode::UnsafeBackingFile.as_str() =>
        {
            (JobErrorCode::UnsafeBackingFile, e.to_string())
        }
        other => (
            JobErrorCode::StorageError,
            format!("cannot {what}: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use datapath_api::ids::{ImageId, StorageDomainId, VolumeId};

    use super::*;

    fn key() -> VolumeKey {
        VolumeKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
            volume: VolumeId::random(),
        }
    }

    /// Real qemu-img 10 messages, with this copy's paths in them.
    #[test]
    fn qemu_img_failures_get_a_code_and_a_message_without_paths() {
        let (src, dst) = (key(), key());
        let root = Path::new("/srv/datapath");
        let src_path = root.join(format!(
            "{}/images/{}/{}",
            src.storage_domain, src.image, src.volume
        ));
        let dst_path = root.join(format!(
            "{}/images/{}/{}.job-x",
            dst.storage_domain, dst.image, dst.volume
        ));
        let ends = CopyEnds {
            src,
            dst,
            src_path: &src_path,
            dst_path: &dst_path,
            root,
        };
        let exit1 = Some(ExitStatus::from_raw(256));
        let (s, d) = (src_path.display(), dst_path.display());
        let table = [
            (
                format!("qemu-img: Could not open '{d}': Failed to get \"write\" lock\nIs another process using the image [{d}]?\n"),
                JobErrorCode::ImageLocked,
                format!("destination volume {}", dst.volume),
            ),
            (
                format!("qemu-img: Could not open '{s}': Failed to get shared \"write\" lock\n"),
                JobErrorCode::ImageLocked,
                format!("source volume {}", src.volume),
            ),
            (
                "qemu-img: error while writing at byte 1048576: No space left on device\n".to_string(),
                JobErrorCode::NoSpace,
                format!("storage domain {}", dst.storage_domain),
            ),
            (
                "qemu-img: error while reading at byte 0: Input/output error\n".to_string(),
                JobErrorCode::IoError,
                format!("reading source volume {}", src.volume),
            ),
            (
                format!("qemu-img: Could not open '{s}': Could not open '{s}': No such file or directory\n"),
                JobErrorCode::SourceUnreadable,
                "No such file or directory".to_string(),
            ),
            (
                format!("qemu-img: Could not open '{s}': Could not open backing file: Could not open '/srv/datapath/x/images/y/z': Permission denied\n"),
                JobErrorCode::SourceUnreadable,
                "Permission denied".to_string(),
            ),
            (
                "copier-watchdog: copier killed: no heartbeat from its worker for 2.1s\n".to_string(),
                JobErrorCode::WatchdogExpired,
                "watchdog".to_string(),
            ),
            (
                format!("qemu-img: Could not open '{d}': Image is not in qcow2 format\n"),
                JobErrorCode::CopyFailed,
                "exited with status 1: Image is not in qcow2 format".to_string(),
            ),
        ];
        for (stderr, code, says) in table {
            let (got, message) = convert_failure(&stderr, exit1, &ends);
            assert_eq!(got, code, "{stderr}");
            assert!(message.contains(&says), "{message:?} lacks {says:?}");
            assert!(!message.contains("/srv"), "a path in {message:?}");
            assert!(
                !message.contains("ExitStatus"),
                "debug output in {message:?}"
            );
        }
    }

    #[test]
    fn storage_errors_are_coded_by_errno_and_name_the_volume_only() {
        let v = key();
        let path = Path::new("/srv/datapath/a/images/b/c.meta");
        let full = Error::io(
            "write",
            path,
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let (code, message) = storage_failure("mark ILLEGAL", &v, &full);
        assert_eq!(code, JobErrorCode::NoSpace);
        assert!(message.contains(&v.volume.to_string()), "{message}");
        assert!(!message.contains("/srv"), "{message}");
        let eio = Error::io("read", path, std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(storage_failure("read", &v, &eio).0, JobErrorCode::IoError);
    }
}
