//! How a copy job's failure is told: a code from the shared vocabulary ([`JobErrorCode`]), which the
//! engine reads to decide whether the attempt counts or was a passing conflict, and a short message
//! that names volumes by id. Storage paths, exit statuses and qemu-img's raw stderr stay in the
//! host's log — a job record is read by anyone who may list jobs.
use std::{path::Path, process::ExitStatus};

use datapath_api::{job_error::JobErrorCode, volume::VolumeKey};

use crate::error::Error;

/// The two volumes of a copy and the names qemu-img was given for them (see
/// `image_files::OpenChain::names`).
#[derive(Debug, Clone, Copy)]
pub struct CopyEnds<'a> {
    /// The source volume.
    pub src: VolumeKey,
    /// The destination volume.
    pub dst: VolumeKey,
    /// The source's `json:` image and the names of the descriptors in it.
    pub src_names: &'a [String],
    /// The destination's `json:` image and the names of the descriptors in it.
    pub dst_names: &'a [String],
    /// The storage root, cut from any other path qemu-img names.
    pub root: &'a Path,
}

/// Whether qemu-img's `text` names one of `names`: the whole `json:` image, or a descriptor's
/// name as qemu quotes it (`'…'`, `[…]`, in JSON, or before a colon), so fd 7 is not taken for 71.
fn mentions(text: &str, names: &[String]) -> bool {
    names.iter().any(|n| {
        n.starts_with("json:") && text.contains(n.as_str())
            || ['\'', ']', '"', ':']
                .iter()
                .any(|end| text.contains(&format!("{n}{end}")))
    })
}

/// The code and message of a `qemu-img convert` that exited with `status` after printing `stderr`.
pub fn convert_failure(
    stderr: &str,
    status: Option<ExitStatus>,
    ends: &CopyEnds<'_>,
) -> (JobErrorCode, String) {
    let (src, dst) = (ends.src.volume, ends.dst.volume);
    let names_source = mentions(stderr, ends.src_names);
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
    let mut named = line.to_string();
    // Longest first: an image's `json:` before the descriptors in it, fd 71 before fd 7.
    let mut names: Vec<(&String, String)> = ends
        .dst_names
        .iter()
        .map(|n| (n, format!("destination volume {}", ends.dst.volume)))
        .chain(
            ends.src_names
                .iter()
                .map(|n| (n, format!("source volume {}", ends.src.volume))),
        )
        .collect();
    names.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, volume) in names {
        named = named.replace(name.as_str(), &volume);
    }
    let named = named.replace(&format!("{}/", ends.root.display()), "");
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
        let spec = |fds: &[u32]| {
            let node = |fd: u32| {
                format!(
                    r#"{{"driver":"qcow2","file":{{"driver":"file","filename":"/proc/self/fd/{fd}"}}"#
                )
            };
            format!("json:{},\"backing\":{}}}}}", node(fds[0]), node(fds[1]))
        };
        let src_names = vec![
            spec(&[7, 8]),
            "/proc/self/fd/7".into(),
            "/proc/self/fd/8".into(),
        ];
        let dst_names = vec![
            spec(&[71, 10]),
            "/proc/self/fd/71".into(),
            "/proc/self/fd/10".into(),
        ];
        let ends = CopyEnds {
            src,
            dst,
            src_names: &src_names,
            dst_names: &dst_names,
            root,
        };
        let exit1 = Some(ExitStatus::from_raw(256));
        let (s, d) = (&src_names[0], &dst_names[0]);
        let table = [
            (
                format!("qemu-img: Could not open '{d}': Failed to get \"write\" lock\nIs another process using the image [/proc/self/fd/71]?\n"),
                JobErrorCode::ImageLocked,
                format!("destination volume {}", dst.volume),
            ),
            (
                format!("qemu-img: Could not open '{s}': Failed to get shared \"write\" lock\nIs another process using the image [/proc/self/fd/7]?\n"),
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
                "qemu-img: Could not open '/proc/self/fd/8': No such file or directory\n".to_string(),
                JobErrorCode::SourceUnreadable,
                "No such file or directory".to_string(),
            ),
            (
                format!("qemu-img: Could not open '{s}': Could not open '/srv/datapath/x/images/y/z': Permission denied\n"),
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
                !message.contains("/proc/self/fd"),
                "a descriptor in {message:?}"
            );
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
