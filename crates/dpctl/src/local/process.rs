//! One child process of a local cluster, in the spirit of neon's `background_process.rs`: its output is
//! appended to one log file, its command is remembered so it can be restarted, it can be signalled
//! (SIGSTOP/SIGCONT to freeze a host, SIGKILL to crash it), stopped gracefully with a deadline, and it
//! never outlives its owner: it is killed and reaped on drop.
use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use nix::{sys::signal::Signal, unistd::Pid};

/// How often a stopping process is polled for its exit.
const POLL: Duration = Duration::from_millis(20);
/// The deadline of the graceful stop that [`ManagedProcess::restart`] makes.
pub const RESTART_STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What to run: a program, its arguments and its environment.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    /// A short name: the log file is `<log_dir>/<name>.log`.
    pub name: String,
    /// The binary to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables set in its environment (on top of the inherited one).
    pub env: Vec<(String, String)>,
    /// Inherited variables removed from its environment.
    pub env_remove: Vec<String>,
    /// Start it in its own process group, so a terminal's Ctrl-C reaches only its owner.
    pub own_process_group: bool,
}

impl ProcessSpec {
    /// A spec running `program` under `name`, with no arguments.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            ..Self::default()
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command line, for logs and errors.
    pub fn command_line(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }
}

/// A running (or stopped) child process with its log file. Killed and reaped when dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    spec: ProcessSpec,
    log_path: PathBuf,
    child: Option<Child>,
    last_status: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `spec`, appending its stdout and stderr to `<log_dir>/<name>.log`.
    pub fn start(spec: ProcessSpec, log_dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(log_dir)
            .with_context(|| format!("create log directory {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("{}.log", spec.name));
        let mut process = Self {
            spec,
            log_path,
            child: None,
            last_status: None,
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open log file {}", self.log_path.display()))?;
        writeln!(
            log,
            "--- dpctl: starting at {}: {}",
            humantime::format_rfc3339_millis(SystemTime::now()),
            self.spec.command_line()
        )
        .with_context(|| format!("write log file {}", self.log_path.display()))?;
        let stderr = log.try_clone().context("clone log file handle")?;
        let mut command = Command::new(&self.spec.program);
        command
            .args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        for key in &self.spec.env_remove {
            command.env_remove(key);
        }
        command.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        if self.spec.own_process_group {
            command.process_group(0);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", self.spec.command_line()))?;
        tracing::debug!(name = %self.spec.name, pid = child.id(), "started process");
        self.child = Some(child);
        self.last_status = None;
        Ok(())
    }

    /// What the next (re)start runs: tests change a flag or variable here, then restart.
    pub fn spec_mut(&mut self) -> &mut ProcessSpec {
        &mut self.spec
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What it runs.
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it still runs (a process frozen by SIGSTOP runs). Reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// How it exited, once it has; `None` while it runs or before it was ever reaped.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    self.last_status = Some(status);
                }
                Ok(None) => return None,
                Err(e) => tracing::warn!(name = %self.spec.name, "cannot wait for process: {e}"),
            }
        }
        self.last_status
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM, SIGKILL, …). Fails when it is not running.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!("{} is not running", self.spec.name);
        }
        let pid = self.pid().context("read process id")?;
        let pid = i32::try_from(pid).context("convert process id")?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("send {signal} to {}", self.spec.name))
    }

    /// SIGTERM (and SIGCONT, in case it is frozen), then waits up to `deadline` for it to exit, then
    /// SIGKILL. Returns how it exited; `None` when it was not running.
    pub async fn stop(&mut self, deadline: Duration) -> anyhow::Result<Option<ExitStatus>> {
        if !self.is_running() {
            return Ok(None);
        }
        self.signal(Signal::SIGTERM)?;
        // A frozen process keeps SIGTERM pending until it is thawed.
        let _ = self.signal(Signal::SIGCONT);
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Some(status) = self.exit_status() {
                return Ok(Some(status));
            }
            tokio::time::sleep(POLL).await;
        }
        tracing::warn!(name = %self.spec.name, ?deadline, "process ignored SIGTERM; killing it");
        self.kill().map(Some)
    }

    /// SIGKILL, then reaps it. Returns how it exited.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return self
                .last_status
                .with_context(|| format!("{} was never started", self.spec.name));
        };
        // Fails only when it has already exited; the wait below reaps it either way.
        let _ = child.kill();
        let status = child
            .wait()
            .with_context(|| format!("wait for {}", self.spec.name))?;
        self.last_status = Some(status);
        Ok(status)
    }

    /// Starts it again with the same command: stops it first (SIGTERM, then SIGKILL after
    /// [`RESTART_STOP_DEADLINE`]) if it still runs. Kill it first to restart after a crash.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop(RESTART_STOP_DEADLINE).await?;
        self.spawn()
    }

    /// The last `lines` lines of its log file.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of the file at `path` (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
