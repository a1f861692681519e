//! Freezing a whole host for fault tests: the host-worker and every process under it (its copier
//! watchdogs and their qemu-img) stopped at once with the cgroup-v1 freezer, as a paused VM, a hung
//! kernel or a stuck storage client stops a real host — alive, holding its open files and image
//! locks, doing nothing. Unlike SIGSTOP of one process, nothing of the host can act in between.
//! The group is thawed and removed when it drops, before the processes are killed (a frozen process
//! cannot die until thawed). Needs root and `/sys/fs/cgroup/freezer`.
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Where the cgroup-v1 freezer hierarchy is mounted.
pub const FREEZER_ROOT: &str = "/sys/fs/cgroup/freezer";

/// How long the kernel may take to freeze or thaw every task of a group.
const SETTLE: Duration = Duration::from_secs(5);

/// One freezer group holding a process tree.
#[derive(Debug)]
pub struct Freezer {
    dir: PathBuf,
}

impl Freezer {
    /// Moves `pid` and all its descendants into a new freezer group and freezes it; returns when
    /// the kernel reports every task frozen.
    pub fn freeze_tree(pid: u32) -> anyhow::Result<Self> {
        let root = Path::new(FREEZER_ROOT);
        if !root.join("cgroup.procs").exists() {
            bail!("no cgroup-v1 freezer at {FREEZER_ROOT}");
        }
        let dir = root.join(format!("datapath-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let group = Self { dir };
        // The root first: whatever it forks from now on is born in the group, so listing its
        // descendants afterwards misses none.
        group.add(pid)?;
        for child in descendants(pid) {
            // A process may exit between the listing and the write.
            let _ = group.add(child);
        }
        group.set_state("FROZEN")?;
        Ok(group)
    }

    /// The pids in the group.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Thaws every task of the group (they stay in it until it drops).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.set_state("THAWED")
    }

    fn add(&self, pid: u32) -> anyhow::Result<()> {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move process {pid} into {}", self.dir.display()))
    }

    fn set_state(&self, state: &str) -> anyhow::Result<()> {
        let file = self.dir.join("freezer.state");
        fs::write(&file, state).with_context(|| format!("write {state} to {}", file.display()))?;
        let until = Instant::now() + SETTLE;
        loop {
            let now = fs::read_to_string(&file).unwrap_or_default();
            if now.trim() == state {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!("freezer group still {} after {SETTLE:?}", now.trim());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = self.thaw();
        let root = Path::new(FREEZER_ROOT).join("cgroup.procs");
        for pid in self.pids() {
            let _ = fs::write(&root, pid.to_string());
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Every descendant of `pid`, from `/proc/<pid>/task/*/children`, parents before children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        let tasks = fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !found.contains(&child) {
                    found.push(child);
                    next.push(child);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell and its child both stop making progress while frozen and go on once thawed.
    #[test]
    fn a_frozen_tree_makes_no_progress_until_thawed() {
        assert!(
            Path::new(FREEZER_ROOT).join("cgroup.procs").exists(),
            "this machine has a cgroup-v1 freezer at {FREEZER_ROOT}; the fault tests need it"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ticks");
        let script = format!(
            "sh -c 'while :; do echo x >> {0}; sleep 0.01; done' & wait",
            out.display()
        );
        let mut shell = std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        let grows = |out: &Path| {
            let before = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(300));
            fs::metadata(out).map(|m| m.len()).unwrap_or(0) > before
        };
        let until = Instant::now() + Duration::from_secs(5);
        while descendants(shell.id()).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(grows(&out), "the writer never ran");
        let group = Freezer::freeze_tree(shell.id()).unwrap();
        assert!(group.pids().len() >= 2, "{:?}", group.pids());
        assert!(!grows(&out), "written while frozen");
        group.thaw().unwrap();
        assert!(grows(&out), "not written after the thaw");
        drop(group);
        for pid in descendants(shell.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = shell.kill();
        let _ = shell.wait();
    }
}
