//! A `qemu-nbd` serving one image on a private Unix socket, for as long as this handle lives: what
//! the native copier opens its source and destination through, and what the tests serve images
//! with.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{error::NbdError, Client, Result};

/// A running `qemu-nbd`; killed (and its socket removed) when dropped.
pub struct QemuNbd {
    /// Always set; an `Option` only so that the handle can be built before it is spawned.
    child: Option<Child>,
    socket: PathBuf,
}

/// How long `qemu-nbd` is given to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

impl QemuNbd {
    /// Serves `image` (of `format`: raw, qcow2) on `socket`, with `args` besides (`--read-only`,
    /// `--allocation-depth`, `--cache=none`, `--shared=N`, …). It serves one client unless
    /// `--shared` or `--persistent` says otherwise, and exits when the last leaves.
    pub fn start(socket: &Path, image: &Path, format: &str, args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg(format!("--socket={}", socket.display()))
            .arg(format!("--format={format}"))
            .args(args)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Self::spawn(cmd, socket)
    }

    /// Runs `cmd`, a `qemu-nbd` (or a program that runs one, such as a watchdog) prepared by the
    /// caller to listen on `socket`: what a caller needs that [`QemuNbd::start`] does not offer
    /// (descriptors to inherit, a `json:` image, piped stdin or stderr).
    pub fn spawn(mut cmd: Command, socket: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let child = cmd.spawn()?;
        Ok(Self {
            child: Some(child),
            socket: socket.to_path_buf(),
        })
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects to `export` once it listens (it creates the socket at bind, and refuses until it
    /// listens), selecting `contexts`.
    pub async fn connect(&mut self, export: &str, contexts: &[&str]) -> Result<Client> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child_mut().try_wait()? {
                return Err(NbdError::Protocol(format!("qemu-nbd exited: {status}")));
            }
            if self.socket.exists() {
                match Client::connect(&self.socket, export, contexts).await {
                    Err(NbdError::Io(e))
                        if e.kind() == std::io::ErrorKind::ConnectionRefused
                            && Instant::now() < deadline => {}
                    other => return other,
                }
            }
            if Instant::now() >= deadline {
                return Err(NbdError::Protocol(format!(
                    "qemu-nbd did not listen on {} within {START_TIMEOUT:?}",
                    self.socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The process id, for a watchdog or a test that kills it.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The process, for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("taken only by exited(), which consumes the handle")
    }

    /// Waits up to `timeout` for the process to exit on its own, as `qemu-nbd` does once its last
    /// client has left; its exit status. Past the timeout it is killed, and that is an error.
    pub async fn exit_within(mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child_mut().try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                // Dropping `self` kills it.
                return Err(NbdError::Protocol(format!(
                    "qemu-nbd did not exit within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
