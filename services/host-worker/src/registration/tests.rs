//! The registration loop on an in-memory registry and a paused clock: what it writes and when.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use datapath_api::{ids::HostId, pb};
use datapath_coord::{hosts::HostRegistry, session::SessionState, CoordError};
use tokio::sync::{watch, Notify};

use super::{keep_registered, Registrant, COALESCE, LOOK_AGAIN, REFRESH};

/// Registrations in memory; `failing` writes fail first.
#[derive(Default)]
struct MemHosts {
    records: Mutex<HashMap<HostId, (pb::Host, i64)>>,
    writes: AtomicUsize,
    reads: AtomicUsize,
    failing: AtomicUsize,
}

#[async_trait]
impl HostRegistry for MemHosts {
    async fn register_host(
        &self,
        host_id: HostId,
        host: &pb::Host,
        lease_id: i64,
    ) -> datapath_coord::Result<()> {
        let failing = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(CoordError::WatchCanceled("etcd away".into()));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mut records = self.records.lock().unwrap();
        records.insert(host_id, (host.clone(), lease_id));
        Ok(())
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

#[tokio::test(start_paused = true)]
async fn an_idle_host_only_reads_and_writes_a_deleted_record_again() {
    let h = host(VALID);
    h.until("registered", |h| h.writes() == 1).await;
    tokio::time::sleep(REFRESH * 10).await;
    assert_eq!(h.writes(), 1, "an idle host wrote");
    let reads = h.hosts.reads.load(Ordering::SeqCst);
    assert!((9..=11).contains(&reads), "{reads} reads in ten refreshes");

    h.hosts.records.lock().unwrap().clear();
    let deleted = tokio::time::Instant::now();
    h.until("written again", |h| h.lease() == Some(5)).await;
    assert!(deleted.elapsed() <= REFRESH + LOOK_AGAIN);
    assert_eq!(h.firsts.load(Ordering::SeqCst), 1, "reconciled once");
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
