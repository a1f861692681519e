//! This host's own jobs (VDSM's `Host.getJobs`): what is queued or running here, with the handle that
//! stops each one. Stopping kills the copier at once with SIGKILL, from whatever task asks — the
//! self-fencing path must not wait for the copy task to be scheduled — through a pidfd, so the
//! signal can only ever reach that copier.
use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::{Arc, Mutex},
};

use datapath_api::{ids::JobId, pb, volume::VolumeKey};
use tokio::sync::{watch, Notify};

/// Why a job was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Someone asked to abort it.
    Aborted,
    /// The host lost its session lease: it must stop writing before etcd hands the volume on.
    Fenced,
    /// The host-worker is shutting down.
    Shutdown,
}

/// Stops one job.
#[derive(Debug)]
pub struct JobControl {
    stop: watch::Sender<Option<StopReason>>,
    copier: Mutex<Option<Copier>>,
}

/// The running copier, killable from any task. A pidfd names exactly this process even after it
/// exits, so a kill racing with its exit can never hit a recycled pid.
#[derive(Debug)]
struct Copier {
    pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Copier {
    fn new(pid: u32) -> Self {
        Self {
            pid,
            pidfd: pidfd_open(pid),
        }
    }

    fn kill(&self) {
        match &self.pidfd {
            Some(fd) => pidfd_kill(fd),
            None => kill(self.pid),
        }
    }
}

impl JobControl {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            stop: watch::channel(None).0,
            copier: Mutex::new(None),
        })
    }

    /// Asks the job to stop (the first reason wins) and kills its copier now.
    pub fn stop(&self, reason: StopReason) {
        self.stop.send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(reason);
            }
            first
        });
        if let Some(copier) = &*self.copier.lock().expect("copier lock") {
            copier.kill();
        }
    }

    /// Records the running copier (call it before the copier can be reaped); if the job was
    /// stopped meanwhile, kills it at once.
    pub fn set_copier(&self, pid: Option<u32>) {
        let mut copier = self.copier.lock().expect("copier lock");
        *copier = pid.map(Copier::new);
        if let (Some(c), Some(_)) = (&*copier, self.reason()) {
            c.kill();
        }
    }

    /// Why the job was stopped, if it was.
    pub fn reason(&self) -> Option<StopReason> {
        *self.stop.borrow()
    }

    /// Resolves once the job is asked to stop.
    pub async fn stopped(&self) -> StopReason {
        let mut rx = self.stop.subscribe();
        loop {
            if let Some(r) = *rx.borrow_and_update() {
                return r;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[allow(unsafe_code)]
fn kill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

#[allow(unsafe_code)]
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) reads no memory; on success it returns a new descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[allow(unsafe_code)]
fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal(2) with a null siginfo reads no memory; the fd is valid while borrowed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Why a job could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A job with this id is already here.
    SameId,
    /// Another job here will write the same destination.
    DestinationBusy(JobId),
    /// As many jobs as allowed already wait for a slot (the number).
    QueueFull(usize),
}

fn writing(entries: &HashMap<JobId, Entry>, destination: &VolumeKey) -> Option<JobId> {
    use pb::JobStatus::{Pending, Running, Unspecified};
    entries
        .iter()
        .filter(|(_, e)| matches!(e.job.status(), Pending | Running | Unspecified))
        .find(|(_, e)| e.destination == *destination)
        .map(|(id, _)| *id)
}

struct Entry {
    job: pb::Job,
    destination: VolumeKey,
    control: Arc<JobControl>,
}

/// The table of this host's jobs.
pub struct HostJobs {
    entries: Mutex<HashMap<JobId, Entry>>,
    /// At most this many jobs wait PENDING for a slot; more are refused.
    max_pending: usize,
    /// Notified whenever the set of jobs or their states change (the host record shows the load).
    pub changed: Notify,
}

impl Default for HostJobs {
    fn default() -> Self {
        Self::with_max_pending(usize::MAX)
    }
}

impl HostJobs {
    /// A table that refuses a job while `max_pending` jobs already wait for a slot.
    pub fn with_max_pending(max_pending: usize) -> Self {
        Self {
            entries: Mutex::default(),
            max_pending,
            changed: Notify::new(),
        }
    }

    /// Adds a job, unless one with that id is here or another job here writes its destination.
    pub fn insert(
        &self,
        id: JobId,
        job: pb::Job,
        destination: VolumeKey,
    ) -> Result<Arc<JobControl>, Refused> {
        let mut entries = self.entries.lock().expect("jobs lock");
        if entries.contains_key(&id) {
            return Err(Refused::SameId);
        }
        // Checked under the same lock as the insert, so two requests racing for one destination on
        // this host cannot both be queued.
        if let Some(other) = writing(&entries, &destination) {
            return Err(Refused::DestinationBusy(other));
        }
        let waiting = entries
            .values()
            .filter(|e| {
                matches!(
                    e.job.status(),
                    pb::JobStatus::Pending | pb::JobStatus::Unspecified
                )
            })
            .count();
        if waiting >= self.max_pending {
            return Err(Refused::QueueFull(self.max_pending));
        }
        let control = JobControl::new();
        entries.insert(
            id,
            Entry {
                job,
                destination,
                control: control.clone(),
            },
        );
        drop(entries);
        self.changed.notify_waiters();
        Ok(control)
    }

    /// Updates the local view of a job. Only a status change counts as a change of the host's load:
    /// progress alone must not rewrite the host's etcd record.
    pub fn update(&self, id: JobId, f: impl FnOnce(&mut pb::Job)) {
        let status_changed = match self.entries.lock().expect("jobs lock").get_mut(&id) {
            Some(e) => {
                let before = e.job.status;
                f(&mut e.job);
                e.job.status != before
            }
            None => false,
        };
        if status_changed {
            self.changed.notify_waiters();
        }
    }

    /// Forgets a finished job.
    pub fn remove(&self, id: JobId) {
        self.entries.lock().expect("jobs lock").remove(&id);
        self.changed.notify_waiters();
    }

    /// A job's local record.
    pub fn get(&self, id: JobId) -> Option<pb::Job> {
        self.entries
            .lock()
            .expect("jobs lock")
            .get(&id)
            .map(|e| e.job.clone())
    }

    /// The job here that will write or writes `destination` (queued or running), if any; a job that
    /// has ended and is only being reported does not count.
    pub fn writing(&self, destination: &VolumeKey) -> Option<JobId> {
        writing(&self.entries.lock().expect("jobs lock"), destination)
    }

    /// Every job here, in id order.
    pub fn list(&self) -> Vec<pb::Job> {
        let mut jobs: Vec<pb::Job> = self
            .entries
            .lock()
            .expect("jobs lock")
            .values()
            .map(|e| e.job.clone())
            .collect();
        jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        jobs
    }

    /// (running jobs, bytes they move).
    pub fn load(&self) -> (u32, u64) {
        let entries = self.entries.lock().expect("jobs lock");
        let running: Vec<&Entry> = entries
            .values()
            .filter(|e| e.job.status() == pb::JobStatus::Running)
            .collect();
        (
            running.len() as u32,
            running.iter().map(|e| e.job.size_bytes).sum(),
        )
    }

    /// Stops one job; false if it is not here.
    pub fn stop(&self, id: JobId, reason: StopReason) -> bool {
        let control = self
            .entries
            .lock()
            .expect("jobs lock")
            .get(&id)
            .map(|e| e.control.clone());
        control.map(|c| c.stop(reason)).is_some()
    }

    /// Stops every job (self-fencing, shutdown). Returns how many.
    pub fn stop_all(&self, reason: StopReason) -> usize {
        let controls: Vec<Arc<JobControl>> = self
            .entries
            .lock()
            .expect("jobs lock")
            .values()
            .map(|e| e.control.clone())
            .collect();
        controls.iter().for_each(|c| c.stop(reason));
        controls.len()
    }

    /// Whether no job is here.
    pub fn is_empty(&self) -> bool {
        self.entries.lock().expect("jobs lock").is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[tokio::test]
    async fn stopping_kills_the_copier_and_a_late_stop_is_harmless() {
        let control = JobControl::new();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        control.set_copier(Some(child.id()));
        control.stop(StopReason::Fenced);
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(control.reason(), Some(StopReason::Fenced));
        // Reaped: its pid may be reused, but the pidfd still names the dead process.
        control.stop(StopReason::Aborted);
        assert_eq!(
            control.reason(),
            Some(StopReason::Fenced),
            "the first reason wins"
        );
        assert!(control
            .copier
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .pidfd
            .is_some());
    }

    #[test]
    fn one_destination_takes_one_job_until_it_ends() {
        use datapath_api::ids::{ImageId, StorageDomainId, VolumeId};
        let jobs = HostJobs::default();
        let dst = VolumeKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
            volume: VolumeId::random(),
        };
        let (a, b) = (JobId::random(), JobId::random());
        assert!(jobs.insert(a, pb::Job::default(), dst).is_ok());
        assert_eq!(
            jobs.insert(a, pb::Job::default(), dst).unwrap_err(),
            Refused::SameId
        );
        assert_eq!(
            jobs.insert(b, pb::Job::default(), dst).unwrap_err(),
            Refused::DestinationBusy(a)
        );
        jobs.update(a, |j| j.set_status(pb::JobStatus::Aborted));
        assert!(
            jobs.insert(b, pb::Job::default(), dst).is_ok(),
            "an ended job still blocked its destination"
        );
    }

    #[tokio::test]
    async fn a_copier_started_after_the_stop_is_killed_at_once() {
        let control = JobControl::new();
        control.stop(StopReason::Aborted);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        control.set_copier(Some(child.id()));
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}
