//! The registration loop on an in-memory registry and a paused clock: what it writes and when.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use datapath_api::{ids::HostId, pb};
use datapath_coord::{
    hosts::{HostRegistry, RegistrationChange, RegistrationChanges},
    session::SessionState,
    CoordError,
};
use futures::StreamExt;
use tokio::sync::{watch, Notify};

use super::{keep_registered, Registrant, COALESCE, LOOK_AGAIN, REFRESH};

/// Registrations in memory, with etcd's revisions and a history the watches replay; `failing`
/// writes fail first, and `failing_watches` watches cannot start.
#[derive(Default)]
struct MemHosts {
    records: Mutex<HashMap<HostId, (pb::Host, i64)>>,
    history: Arc<Mutex<Vec<(HostId, RegistrationChange)>>>,
    revision: AtomicI64,
    appended: Arc<Notify>,
    writes: AtomicUsize,
    reads: AtomicUsize,
    watches: AtomicUsize,
    failing: AtomicUsize,
    failing_watches: AtomicUsize,
}

impl MemHosts {
    fn record(&self, host_id: HostId, change: impl FnOnce(i64) -> RegistrationChange) -> i64 {
        let revision = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        self.history
            .lock()
            .unwrap()
            .push((host_id, change(revision)));
        self.appended.notify_waiters();
        revision
    }

    /// Deletes a registration, as an operator's `etcdctl del` would.
    fn delete(&self, host_id: HostId) {
        self.records.lock().unwrap().remove(&host_id);
        self.record(host_id, |revision| RegistrationChange::Deleted { revision });
    }

    /// Writes a registration by hand, as an operator's `etcdctl put` would.
    fn put(&self, host_id: HostId, host: pb::Host) {
        let lease = self
            .records
            .lock()
            .unwrap()
            .get(&host_id)
            .map_or(0, |r| r.1);
        self.records
            .lock()
            .unwrap()
            .insert(host_id, (host.clone(), lease));
        self.record(host_id, |revision| RegistrationChange::Put {
            revision,
            host: Some(host),
        });
    }

    /// Other keys written, then the history up to now forgotten, as etcd's compaction does: a
    /// watch not yet past it (it waits on this host's key only) sees the compaction.
    fn compact(&self) {
        let revision = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        let mut history = self.history.lock().unwrap();
        history.clear();
        history.push((HostId::random(), RegistrationChange::Compacted { revision }));
        self.appended.notify_waiters();
    }
}

#[async_trait]
impl HostRegistry for MemHosts {
    async fn register_host(
        &self,
        host_id: HostId,
        host: &pb::Host,
        lease_id: i64,
    ) -> datapath_coord::Result<i64> {
        let failing = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(CoordError::WatchCanceled("etcd away".into()));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.records
            .lock()
            .unwrap()
            .insert(host_id, (host.clone(), lease_id));
        Ok(self.record(host_id, |revision| RegistrationChange::Put {
            revision,
            host: Some(host.clone()),
        }))
    }

    async fn watch_registration(
        &self,
        host_id: HostId,
        revision: i64,
    ) -> datapath_coord::Result<RegistrationChanges> {
        let failing = self
            .failing_watches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(CoordError::WatchCanceled("etcd away".into()));
        }
        self.watches.fetch_add(1, Ordering::SeqCst);
        let (history, appended) = (self.history.clone(), self.appended.clone());
        // Replays the history after `revision` (a compaction marker included), then waits.
        let changes = futures::stream::unfold(revision, move |after| {
            let (history, appended) = (history.clone(), appended.clone());
            async move {
                loop {
                    let appended = appended.notified();
                    let next = history.lock().unwrap().iter().find_map(|(id, c)| {
                        let at = match c {
                            RegistrationChange::Put { revision, .. }
                            | RegistrationChange::Deleted { revision } => *revision,
                            RegistrationChange::Compacted { revision } => {
                                return (*revision > after).then(|| c.clone());
                            }
                        };
                        (*id == host_id && at > after).then(|| c.clone())
                    });
                    if let Some(c) = next {
                        let after = match &c {
                            RegistrationChange::Put { revision, .. }
                            | RegistrationChange::Deleted { revision } => *revision,
                            // Nothing after a compaction: the stream ends with it.
                            RegistrationChange::Compacted { .. } => i64::MAX,
                        };
                        return Some((Ok(c), after));
                    }
                    if after == i64::MAX {
                        return None;
                    }
                    appended.await;
                }
            }
        });
        Ok(changes.boxed())
    }

    async fn list_hosts(&self) -> datapath_coord::Result<Vec<pb::Host>> {
        let records = self.records.lock().unwrap();
        Ok(records.values().map(|(h, _)| h.clone()).collect())
    }

    async fn count_hosts(&self) -> datapath_coord::Result<i64> {
        Ok(self.records.lock().unwrap().len() as i64)
    }

    async fn get_host(&self, host_id: HostId) -> datapath_coord::Result<Option<pb::Host>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .records
            .lock()
            .unwrap()
            .get(&host_id)
            .map(|(h, _)| h.clone()))
    }
}

/// A host whose record carries `running` as its running jobs.
struct Host {
    hosts: Arc<MemHosts>,
    id: HostId,
    session: watch::Sender<SessionState>,
    registered: watch::Receiver<Option<i64>>,
    changed: Arc<Notify>,
    running: Arc<AtomicU32>,
    firsts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

fn host(session: SessionState) -> Host {
    let (hosts, id) = (Arc::new(MemHosts::default()), HostId::random());
    let (session_tx, session_rx) = watch::channel(session);
    let (registered_tx, registered) = watch::channel(None);
    let (changed, running, firsts) = (Arc::new(Notify::new()), Arc::default(), Arc::default());
    let task = {
        let (hosts, changed) = (hosts.clone(), changed.clone());
        let (running, firsts): (Arc<AtomicU32>, Arc<AtomicUsize>) =
            (Arc::clone(&running), Arc::clone(&firsts));
        tokio::spawn(async move {
            let r = Registrant {
                hosts: &*hosts,
                host_id: id,
                session: session_rx,
                changed: &changed,
            };
            let describe = |lease_id, registered_at| pb::Host {
                host_id: id.to_string(),
                running_jobs: running.load(Ordering::SeqCst),
                session_lease_id: lease_id,
                registered_at,
                ..Default::default()
            };
            let first = || {
                firsts.fetch_add(1, Ordering::SeqCst);
            };
            keep_registered(r, describe, &registered_tx, first).await;
        })
    };
    Host {
        hosts,
        id,
        session: session_tx,
        registered,
        changed,
        running,
        firsts,
        task,
    }
}

impl Host {
    fn writes(&self) -> usize {
        self.hosts.writes.load(Ordering::SeqCst)
    }

    fn lease(&self) -> Option<i64> {
        self.hosts
            .records
            .lock()
            .unwrap()
            .get(&self.id)
            .map(|r| r.1)
    }

    /// Waits (on the paused clock, up to an hour) until `cond` holds.
    async fn until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        while !cond(self) {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

const VALID: SessionState = SessionState::Valid { lease_id: 5 };

#[tokio::test(start_paused = true)]
async fn a_burst_of_job_changes_is_one_write() {
    let h = host(VALID);
    h.until("registered", |h| h.writes() == 1).await;
    assert_eq!(*h.registered.borrow(), Some(5));
    assert_eq!(h.lease(), Some(5));

    for running in 1..=3 {
        h.running.store(running, Ordering::SeqCst);
        h.changed.notify_waiters();
        tokio::time::sleep(COALESCE / 4).await;
    }
    h.until("the burst written", |h| h.writes() == 2).await;
    tokio::time::sleep(COALESCE * 5).await;
    assert_eq!(h.writes(), 2, "one write for the burst");
    let stored = h.hosts.get_host(h.id).await.unwrap().unwrap();
    assert_eq!(stored.running_jobs, 3, "the last change is the one written");
    assert_eq!(h.firsts.load(Ordering::SeqCst), 1);
    h.task.abort();
}

impl Host {
    fn reads(&self) -> usize {
        self.hosts.reads.load(Ordering::SeqCst)
    }

    fn watches(&self) -> usize {
        self.hosts.watches.load(Ordering::SeqCst)
    }

    /// The record as stored, if any.
    fn stored(&self) -> Option<pb::Host> {
        self.hosts
            .records
            .lock()
            .unwrap()
            .get(&self.id)
            .map(|r| r.0.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_host_neither_reads_nor_writes_and_writes_a_deleted_record_again_at_once() {
    let h = host(VALID);
    h.until("registered and watched", |h| {
        h.writes() == 1 && h.watches() == 1
    })
    .await;
    tokio::time::sleep(REFRESH * 10).await;
    assert_eq!(h.writes(), 1, "an idle host wrote");
    assert_eq!(h.reads(), 0, "an idle host read its record back");
    assert_eq!(h.watches(), 1, "the watch was started again");

    h.hosts.delete(h.id);
    let deleted = tokio::time::Instant::now();
    h.until("written again", |h| h.lease() == Some(5)).await;
    assert!(deleted.elapsed() < COALESCE, "{:?}", deleted.elapsed());
    assert_eq!(h.writes(), 2);
    assert_eq!(h.firsts.load(Ordering::SeqCst), 1, "reconciled once");
    // Its own write does not wake it again, and the watch goes on.
    tokio::time::sleep(REFRESH).await;
    assert_eq!((h.writes(), h.reads(), h.watches()), (2, 0, 1));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_record_edited_by_hand_is_written_back_and_the_same_record_left_alone() {
    let h = host(VALID);
    h.until("registered and watched", |h| {
        h.writes() == 1 && h.watches() == 1
    })
    .await;
    let mine = h.stored().unwrap();
    h.hosts.put(h.id, mine.clone());
    tokio::time::sleep(LOOK_AGAIN * 3).await;
    assert_eq!(h.writes(), 1, "the same record written again");

    let edited = pb::Host {
        job_slots: 99,
        ..mine.clone()
    };
    h.hosts.put(h.id, edited);
    h.until("written back", |h| h.stored().as_ref() == Some(&mine))
        .await;
    assert_eq!(h.writes(), 2);
    assert_eq!(h.reads(), 0);
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_compacted_history_is_one_read_and_a_new_watch() {
    let h = host(VALID);
    h.until("registered and watched", |h| {
        h.writes() == 1 && h.watches() == 1
    })
    .await;
    h.hosts.compact();
    h.until("watched again", |h| h.watches() == 2).await;
    assert_eq!(h.reads(), 1, "read back once after the compaction");
    assert_eq!(h.writes(), 1, "an intact record written again");
    tokio::time::sleep(REFRESH * 3).await;
    assert_eq!((h.writes(), h.reads(), h.watches()), (1, 1, 2));

    // The new watch still sees a deletion.
    h.hosts.delete(h.id);
    h.until("written again", |h| h.lease() == Some(5)).await;
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn without_a_watch_the_record_is_read_back_every_refresh() {
    let h = host(SessionState::Lost);
    h.hosts.failing_watches.store(usize::MAX, Ordering::SeqCst);
    h.session.send_replace(VALID);
    h.until("registered", |h| h.writes() == 1).await;
    tokio::time::sleep(REFRESH * 10).await;
    assert_eq!(h.writes(), 1, "an idle host wrote");
    let reads = h.reads();
    assert!((9..=11).contains(&reads), "{reads} reads in ten refreshes");

    h.hosts.delete(h.id);
    let deleted = tokio::time::Instant::now();
    h.until("written again", |h| h.lease() == Some(5)).await;
    assert!(deleted.elapsed() <= REFRESH + LOOK_AGAIN);

    // Once etcd takes watches again, the reads stop.
    h.hosts.failing_watches.store(0, Ordering::SeqCst);
    h.until("watched", |h| h.watches() == 1).await;
    let reads = h.reads();
    tokio::time::sleep(REFRESH * 3).await;
    assert_eq!(h.reads(), reads, "read back while watched");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_new_lease_registers_again_and_a_lost_session_writes_nothing() {
    let h = host(VALID);
    h.until("registered", |h| h.writes() == 1).await;
    h.session.send_replace(SessionState::Valid { lease_id: 6 });
    h.until("registered on the new lease", |h| h.lease() == Some(6))
        .await;
    assert_eq!(*h.registered.borrow(), Some(6));

    h.session.send_replace(SessionState::Lost);
    let writes = h.writes();
    h.running.store(9, Ordering::SeqCst);
    h.changed.notify_waiters();
    tokio::time::sleep(REFRESH * 3).await;
    assert_eq!(h.writes(), writes, "written without a session");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_tried_again_and_the_lease_published_only_once_written() {
    let h = host(SessionState::Lost);
    h.hosts.failing.store(2, Ordering::SeqCst);
    h.session.send_replace(VALID);
    tokio::time::sleep(LOOK_AGAIN / 2).await;
    assert_eq!(*h.registered.borrow(), None, "published before any write");
    assert_eq!(h.firsts.load(Ordering::SeqCst), 0);
    h.until("registered", |h| h.writes() == 1).await;
    assert_eq!(*h.registered.borrow(), Some(5));
    h.task.abort();
}
