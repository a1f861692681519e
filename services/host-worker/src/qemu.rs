//! qemu-img: creating volumes and the copier process. The copier never outlives its host-worker: it is
//! started with a parent-death signal (SIGKILL) and killed on drop, because oVirt once shipped a bug
//! where qemu-img kept writing after VDSM died, into a volume already deleted and reused.
use std::{fs::File, os::fd::AsRawFd as _, process::Stdio};

use datapath_api::volume::{Allocation, Format};
use tokio::{
    io::AsyncReadExt as _,
    process::{Child, Command},
};

use crate::{
    error::Error,
    image_files::{self, OpenChain},
};

fn command() -> Command {
    let mut cmd = Command::new("qemu-img");
    cmd.kill_on_drop(true).stdin(Stdio::null());
    die_with_parent(cmd.as_std_mut());
    cmd
}

/// Makes the child die (SIGKILL) when its parent does.
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // prctl(2), getppid(2) and _exit(2).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Writes a new volume's header into `file` (created empty by the worker, beneath the root). With
/// `backing` (the parent's file name in the same image directory, and its format) the name is only
/// written into the header (`-u`): qemu-img does not open it, the caller checked the parent.
pub async fn create(
    file: &File,
    format: Format,
    allocation: Allocation,
    capacity: u64,
    backing: Option<(String, Format)>,
) -> Result<(), Error> {
    let mut cmd = command();
    cmd.arg("create")
        .arg("-q")
        .arg("-f")
        .arg(format.qemu_name());
    let mut opts = Vec::new();
    if format == Format::Cow {
        opts.push("compat=1.1".to_string());
    }
    if allocation == Allocation::Preallocated {
        opts.push("preallocation=falloc".to_string());
    }
    if !opts.is_empty() {
        cmd.arg("-o").arg(opts.join(","));
    }
    if let Some((name, fmt)) = &backing {
        cmd.arg("-u")
            .arg("-b")
            .arg(name)
            .arg("-F")
            .arg(fmt.qemu_name());
    }
    cmd.arg(image_files::fd_path(file))
        .arg(capacity.to_string());
    image_files::inherit(cmd.as_std_mut(), vec![file.as_raw_fd()]);
    run(cmd).await
}

/// What a volume's header says of its backing file, read by `qemu-img info` of that one file: its
/// format given (`-f`, never probed), its backing never opened, no lock taken (`-U`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The backing reference as written in the header (`backing-filename`), if any.
    pub backing: Option<String>,
    /// The backing format the header names (`backing-filename-format`), if any.
    pub backing_format: Option<String>,
    /// An external data file the header names (a qcow2 `data-file`), if any: qemu would open it by
    /// that name, so a volume with one is never opened for a copy.
    pub data_file: Option<String>,
}

/// Reads the header of `file` in `format`.
pub async fn header(file: &File, format: Format) -> Result<Header, Error> {
    let mut cmd = command();
    cmd.args(["info", "-U", "--output=json"])
        .arg(image_files::single(file, format));
    image_files::inherit(cmd.as_std_mut(), vec![file.as_raw_fd()]);
    let out = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .await
        .map_err(|e| Error::Qemu(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        tracing::warn!(stderr = %String::from_utf8_lossy(&out.stderr).trim(), "qemu-img info failed");
        return Err(Error::Qemu("qemu-img info failed".into()));
    }
    parse_header(&out.stdout)
        .ok_or_else(|| Error::Qemu("qemu-img info printed no JSON object".into()))
}

/// The backing fields of `qemu-img info --output=json`.
pub fn parse_header(json: &[u8]) -> Option<Header> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    let field = |name: &str| match value.as_object()?.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    };
    value.as_object()?;
    let data_file = match value.pointer("/format-specific/data/data-file") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
        None => None,
    };
    Some(Header {
        backing: field("backing-filename"),
        backing_format: field("backing-filename-format"),
        data_file,
    })
}

async fn run(mut cmd: Command) -> Result<(), Error> {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| Error::Qemu(format!("cannot run qemu-img: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    // The raw stderr (with paths) stays in the host's log; the error names volumes by id.
    let stderr = String::from_utf8_lossy(&out.stderr);
    tracing::warn!(stderr = %stderr.trim(), status = ?out.status, "qemu-img failed");
    Err(Error::Qemu(crate::storage::scrub_paths(stderr.trim())))
}

/// What to convert: the source chain, the destination (its attempt file and backing chain), and
/// the destination's backing file name (then only the source layer's own data is copied).
#[derive(Debug, Clone)]
pub struct Convert<'a> {
    /// The source volume's chain, opened.
    pub src: &'a OpenChain,
    /// The destination: its attempt file on top of its backing chain, opened (it exists: `-n`).
    pub dst: &'a OpenChain,
    /// The destination's backing file name and format, for a layer of a chain.
    pub dst_backing: Option<(String, Format)>,
    /// Bytes per second, 0 for no limit.
    pub rate_limit: u64,
    /// The destination is PREALLOCATED: write every block (`-S 0`), so zero areas of the source
    /// do not become holes in it.
    pub preallocated: bool,
    /// Run qemu-img under the copier watchdog with this heartbeat deadline (see `watchdog.rs`).
    pub watchdog: Option<std::time::Duration>,
}

/// Whether `file` can be opened with O_DIRECT (not on tmpfs, for one): re-opened through its
/// descriptor, so the very file checked.
pub fn supports_direct_io(file: &File) -> bool {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(image_files::fd_path(file))
        .is_ok()
}

/// Starts `qemu-img convert -p` writing into the existing destination. Both ends bypass the page
/// cache (`-t none -T none`, as VDSM does) where the filesystem allows O_DIRECT — faster here and it
/// keeps a copy from flooding the host's page cache — else writeback; either way qemu-img flushes at
/// the end (its default target mode, unsafe, never does). Both images are `json:` images of
/// inherited descriptors (`image_files.rs`).
pub fn spawn_convert(c: &Convert<'_>) -> Result<Child, Error> {
    let direct = supports_direct_io(c.src.top()) && supports_direct_io(c.dst.top());
    let (target, source) = if direct {
        ("none", "none")
    } else {
        ("writeback", "writeback")
    };
    let mut cmd = match c.watchdog {
        Some(deadline) => watched(deadline)?,
        None => command(),
    };
    cmd.args(["convert", "-p", "-n", "-t", target, "-T", source, "-O"])
        .arg(c.dst.format().qemu_name());
    if c.rate_limit > 0 {
        cmd.arg("-r").arg(c.rate_limit.to_string());
    }
    if c.preallocated {
        cmd.args(["-S", "0"]);
    }
    if let Some((file, fmt)) = &c.dst_backing {
        // With `-n` the name is not opened: it tells qemu-img the destination has a backing file.
        cmd.arg("-B").arg(file).arg("-F").arg(fmt.qemu_name());
    }
    cmd.arg(c.src.spec()).arg(c.dst.spec());
    let mut fds = c.src.fds();
    fds.extend(c.dst.fds());
    image_files::inherit(cmd.as_std_mut(), fds);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn()
        .map_err(|e| Error::Qemu(format!("cannot run qemu-img: {e}")))
}

/// `host-worker copier-watchdog <deadline> qemu-img`, with a pipe on its stdin for heartbeats.
fn watched(deadline: std::time::Duration) -> Result<Command, Error> {
    let me = std::env::current_exe()
        .map_err(|e| Error::Qemu(format!("cannot find the host-worker binary: {e}")))?;
    let mut cmd = Command::new(me);
    cmd.kill_on_drop(true).stdin(Stdio::piped());
    cmd.arg(crate::watchdog::SUBCOMMAND)
        .arg(deadline.as_millis().to_string())
        .arg("qemu-img");
    die_with_parent(cmd.as_std_mut());
    Ok(cmd)
}

/// Parses qemu-img's `-p` output, `    (12.34/100%)` separated by carriage returns, calling `report`
/// with each whole percentage as it rises.
pub async fn follow_progress(
    mut stdout: impl tokio::io::AsyncRead + Unpin,
    mut report: impl FnMut(u32),
) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    let mut line = String::new();
    let mut last = None;
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                if let Some(p) = parse_progress(&line) {
                    if last.is_none_or(|l| p > l) {
                        last = Some(p);
                        report(p);
                    }
                }
                line.clear();
            } else {
                line.push(b as char);
            }
        }
    }
}

/// `(12.34/100%)` → 12.
pub fn parse_progress(line: &str) -> Option<u32> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    let value: f64 = inner.parse().ok()?;
    (0.0..=100.0)
        .contains(&value)
        .then_some(value.floor() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_progress_lines() {
        assert_eq!(parse_progress("    (12.34/100%)"), Some(12));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100));
        assert_eq!(parse_progress("garbage"), None);
        assert_eq!(parse_progress("(140.00/100%)"), None);
    }

    #[tokio::test]
    async fn follows_rising_progress_only() {
        let input: &[u8] =
            b"    (0.00/100%)\r    (1.50/100%)\r    (1.90/100%)\r    (50.00/100%)\r(100.00/100%)\n";
        let mut seen = Vec::new();
        follow_progress(input, |p| seen.push(p)).await.unwrap();
        assert_eq!(seen, vec![0, 1, 50, 100]);
    }
}
