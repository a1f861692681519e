//! A flow's record: as stored ([`StoredFlow`], protobuf, until its run begins and it is converted,
//! or parked when it does not convert) and while it runs ([`FlowRecord`]: the typed flow the runner
//! works on, saved to etcd by compare-and-swap under the leadership guard). The only other writer is
//! CancelOperation, which sets `cancel_requested`; a save that meets it merges the flag and tries
//! again.
use std::{sync::Arc, time::Duration};

use datapath_api::volume::DiskKey;
use datapath_api::{ids::OperationId, pb};
use datapath_coord::{
    disk_locks::LOCK_RETRIES, election::Leadership, flow_store::FlowStore, flows::Versioned,
    CoordError,
};
use tokio::{sync::Mutex, time::Instant};
use tracing::warn;

use super::{
    model::{End, Flow},
    progress, Stop,
};

/// Progress-only saves happen at most this often per flow.
const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// How a run of a flow begins ([`StoredFlow::begin_run`]).
pub enum Begin {
    /// Counted; the flow as saved, to run.
    Running(FlowRecord),
    /// The flow has ended.
    Ended,
    /// It cannot be run safely, for this reason: it is parked ([`StoredFlow::park`]).
    Unreadable(StoredFlow, String),
}

/// A flow's record as stored, before its run begins: only protobuf, which may not convert.
pub struct StoredFlow {
    /// The operation.
    pub op: OperationId,
    store: Arc<dyn FlowStore>,
    leader: Leadership,
    record: Versioned<pb::Flow>,
}

impl StoredFlow {
    /// Loads the flow; `None` if it does not exist.
    pub async fn load(
        store: Arc<dyn FlowStore>,
        leader: Leadership,
        op: OperationId,
    ) -> Result<Option<Self>, Stop> {
        let Some(record) = store.get_flow(op).await? else {
            return Ok(None);
        };
        Ok(Some(Self::new(store, leader, op, record)))
    }

    /// The flow as read elsewhere (listed or watched). Only its runner writes it besides a cancel
    /// request, and every save compares the mod revision: a record changed since it was read fails
    /// the first save, whose merge adopts the cancel; one deleted stops the runner (`Gone`).
    pub fn new(
        store: Arc<dyn FlowStore>,
        leader: Leadership,
        op: OperationId,
        record: Versioned<pb::Flow>,
    ) -> Self {
        Self {
            op,
            store,
            leader,
            record,
        }
    }

    /// The record as last read.
    pub fn stored(&self) -> &pb::Flow {
        &self.record.value
    }

    /// Counts this run (`runs`) on the record as known, unless the flow has ended or cannot be
    /// run safely (`model.rs`: then nothing is written). When the record changed since it was
    /// read (listed or watched before a later write reached this scheduler), nothing has been
    /// acted on yet: it is read again and judged afresh, never merged into an outdated copy.
    pub async fn begin_run(mut self) -> Result<Begin, Stop> {
        loop {
            if self.record.value.operation.as_ref().is_some_and(|o| o.done) {
                return Ok(Begin::Ended);
            }
            let mut flow = match Flow::from_pb(self.op, &self.record.value) {
                Ok(flow) => flow,
                Err(why) => {
                    // Judged on the stored record, never on an outdated copy (parking writes).
                    let remote = self.store.get_flow(self.op).await?.ok_or(Stop::Gone)?;
                    if remote.mod_revision == self.record.mod_revision {
                        return Ok(Begin::Unreadable(self, why));
                    }
                    self.record = remote;
                    continue;
                }
            };
            flow.runs += 1;
            progress::refresh(&mut flow);
            let (op, rev, leader) = (self.op, self.record.mod_revision, &self.leader);
            let written = self
                .store
                .put_flow_if(op, &flow.to_pb(), rev, leader)
                .await?;
            if let Some(rev) = written {
                return Ok(Begin::Running(FlowRecord {
                    op,
                    store: self.store,
                    leader: self.leader,
                    inner: Mutex::new(Inner {
                        flow,
                        mod_revision: rev,
                        last_save: Instant::now(),
                    }),
                }));
            }
            let remote = self.store.get_flow(self.op).await?.ok_or(Stop::Gone)?;
            if remote.mod_revision == self.record.mod_revision {
                return Err(Stop::LeadershipLost);
            }
            self.record = remote;
        }
    }

    /// Ends the operation with `error` on the stored record as it is, keeping everything else of
    /// it (its locks, its volumes): a flow that cannot be run is parked, not interpreted. Kept
    /// without a retention lease, for an operator to look at.
    pub async fn park(mut self, error: pb::OperationError) -> Result<(), Stop> {
        loop {
            let mut parked = self.record.value.clone();
            let op = parked.operation.get_or_insert_with(Default::default);
            op.done = true;
            op.result = Some(pb::operation::Result::Error(error.clone()));
            let (rev, leader) = (self.record.mod_revision, &self.leader);
            if self
                .store
                .put_flow_if(self.op, &parked, rev, leader)
                .await?
                .is_some()
            {
                return Ok(());
            }
            let remote = self.store.get_flow(self.op).await?.ok_or(Stop::Gone)?;
            if remote.mod_revision == self.record.mod_revision {
                return Err(Stop::LeadershipLost);
            }
            self.record = remote;
        }
    }
}

struct Inner {
    flow: Flow,
    mod_revision: i64,
    last_save: Instant,
}

/// A flow being run by this scheduler: the typed flow the runner works on, saved to its etcd
/// record by compare-and-swap under the leadership guard. The only other writer is CancelOperation,
/// which sets `cancel_requested`; a save that meets it merges the flag and tries again.
pub struct FlowRecord {
    /// The operation.
    pub op: OperationId,
    store: Arc<dyn FlowStore>,
    leader: Leadership,
    inner: Mutex<Inner>,
}

impl FlowRecord {
    /// The flow as the runner last left it.
    pub async fn get(&self) -> Flow {
        self.inner.lock().await.flow.clone()
    }

    /// Whether a cancel has been requested (as last seen).
    pub async fn cancel_requested(&self) -> bool {
        self.inner.lock().await.flow.cancel_requested
    }

    /// Notes a cancel request seen on the watch.
    pub async fn note_cancel(&self) {
        self.inner.lock().await.flow.cancel_requested = true;
    }

    /// Applies `change` and saves it before returning: the caller may act on it afterwards.
    pub async fn update(&self, change: impl FnOnce(&mut Flow)) -> Result<Flow, Stop> {
        let mut inner = self.inner.lock().await;
        change(&mut inner.flow);
        self.save(&mut inner, None).await?;
        Ok(inner.flow.clone())
    }

    /// Applies a change that is saved with the next save, for a change whose loss a resumed run
    /// redoes by itself; the caller must not act on it before that save.
    pub async fn stage(&self, change: impl FnOnce(&mut Flow)) {
        change(&mut self.inner.lock().await.flow);
    }

    /// Applies a progress-only change; it is saved if the last save is old enough (losing one is
    /// harmless: the next state change saves it).
    pub async fn update_progress(&self, change: impl FnOnce(&mut Flow)) -> Result<(), Stop> {
        let mut inner = self.inner.lock().await;
        change(&mut inner.flow);
        if inner.last_save.elapsed() >= PROGRESS_SAVE_INTERVAL {
            self.save(&mut inner, None).await?;
        }
        Ok(())
    }

    /// Saves the end, bound to a retention lease, and releases the flow's locks on `disks` in the
    /// same transaction: a flow is never seen done while it holds a lock.
    pub async fn finish(
        &self,
        disks: &[DiskKey],
        end: End,
        change: impl FnOnce(&mut Flow),
    ) -> Result<(), Stop> {
        let mut inner = self.inner.lock().await;
        change(&mut inner.flow);
        inner.flow.end = Some(end);
        self.save(&mut inner, Some(disks)).await
    }

    /// Saves the record by compare-and-swap; `ending`: with its end (`finish`).
    async fn save(&self, inner: &mut Inner, ending: Option<&[DiskKey]>) -> Result<(), Stop> {
        progress::refresh(&mut inner.flow);
        let (mut failures, mut lock_changes) = (0, 0);
        loop {
            let (op, rev, leader) = (self.op, inner.mod_revision, &self.leader);
            let stored = inner.flow.to_pb();
            let written = match ending {
                Some(disks) => {
                    self.store
                        .end_flow_if(op, &stored, rev, leader, disks)
                        .await
                }
                None => self.store.put_flow_if(op, &stored, rev, leader).await,
            };
            match written {
                Ok(Some(rev)) => {
                    inner.mod_revision = rev;
                    inner.last_save = Instant::now();
                    return Ok(());
                }
                Ok(None) if self.merge_remote(inner).await? => {}
                // The record is as read: the leadership guard failed, or one of the locks changed.
                Ok(None) => {
                    let Some(disks) = ending else {
                        return Err(Stop::LeadershipLost);
                    };
                    if !self.store.still_leads(&self.leader).await? {
                        return Err(Stop::LeadershipLost);
                    }
                    lock_changes += 1;
                    if lock_changes >= LOCK_RETRIES {
                        let disk = disks.first().map(|d| d.to_string()).unwrap_or_default();
                        return Err(CoordError::LockBusy(disk).into());
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures >= 10 {
                        return Err(e.into());
                    }
                    warn!(op = %self.op, error = %e, "could not save the flow; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// After a failed compare: whether someone else wrote the record (their cancel flag is
    /// merged, and the next save compares against their revision).
    async fn merge_remote(&self, inner: &mut Inner) -> Result<bool, Stop> {
        let remote = self.store.get_flow(self.op).await?.ok_or(Stop::Gone)?;
        if remote.mod_revision == inner.mod_revision {
            return Ok(false);
        }
        if meta(&remote.value).cancel_requested {
            inner.flow.cancel_requested = true;
        }
        inner.mod_revision = remote.mod_revision;
        Ok(true)
    }
}

/// The operation metadata of a flow (always present in a flow this scheduler wrote).
pub fn meta(flow: &pb::Flow) -> &pb::OperationMetadata {
    static EMPTY: std::sync::OnceLock<pb::OperationMetadata> = std::sync::OnceLock::new();
    flow.operation
        .as_ref()
        .and_then(|o| o.metadata.as_ref())
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use async_trait::async_trait;
    use datapath_api::{
        ids::{ImageId, StorageDomainId},
        pb::OperationStep,
    };

    use super::*;
    use crate::flow::model::{Kind, Step};

    /// The operation metadata, created if missing.
    fn meta_mut(flow: &mut pb::Flow) -> &mut pb::OperationMetadata {
        flow.operation
            .get_or_insert_with(Default::default)
            .metadata
            .get_or_insert_with(Default::default)
    }

    /// Flow records in memory, with etcd's compare rules: a write needs the record's revision and
    /// the leadership; `lock_changes` ends fail as if a lock had moved (the record unchanged).
    #[derive(Default)]
    struct MemFlows {
        records: std::sync::Mutex<(i64, HashMap<OperationId, Versioned<pb::Flow>>)>,
        deposed: AtomicBool,
        lock_changes: AtomicUsize,
        ends: AtomicUsize,
    }

    impl MemFlows {
        fn write(&self, op: OperationId, flow: &pb::Flow, rev: i64) -> Option<i64> {
            let mut records = self.records.lock().unwrap();
            let current = records.1.get(&op).map(|v| v.mod_revision);
            if self.deposed.load(Ordering::SeqCst) || current != Some(rev) {
                return None;
            }
            records.0 += 1;
            let mod_revision = records.0;
            let value = flow.clone();
            records.1.insert(
                op,
                Versioned {
                    value,
                    mod_revision,
                },
            );
            Some(mod_revision)
        }

        /// Someone else's write (CancelOperation, another run): the record as `change` makes it.
        fn external(&self, op: OperationId, change: impl FnOnce(&mut pb::Flow)) -> i64 {
            let mut records = self.records.lock().unwrap();
            records.0 += 1;
            let mod_revision = records.0;
            let v = records.1.entry(op).or_insert_with(|| Versioned {
                value: running_flow(),
                mod_revision,
            });
            change(&mut v.value);
            v.mod_revision = mod_revision;
            mod_revision
        }

        fn stored(&self, op: OperationId) -> Versioned<pb::Flow> {
            self.records.lock().unwrap().1[&op].clone()
        }
    }

    #[async_trait]
    impl FlowStore for MemFlows {
        async fn get_flow(
            &self,
            op: OperationId,
        ) -> datapath_coord::Result<Option<Versioned<pb::Flow>>> {
            Ok(self.records.lock().unwrap().1.get(&op).cloned())
        }

        async fn put_flow_if(
            &self,
            op: OperationId,
            flow: &pb::Flow,
            rev: i64,
            _: &Leadership,
        ) -> datapath_coord::Result<Option<i64>> {
            Ok(self.write(op, flow, rev))
        }

        async fn end_flow_if(
            &self,
            op: OperationId,
            flow: &pb::Flow,
            rev: i64,
            _: &Leadership,
            _: &[DiskKey],
        ) -> datapath_coord::Result<Option<i64>> {
            let moved = self
                .lock_changes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if moved.is_ok() {
                return Ok(None);
            }
            let written = self.write(op, flow, rev);
            if written.is_some() {
                self.ends.fetch_add(1, Ordering::SeqCst);
            }
            Ok(written)
        }

        async fn still_leads(&self, _: &Leadership) -> datapath_coord::Result<bool> {
            Ok(!self.deposed.load(Ordering::SeqCst))
        }
    }

    fn running_flow() -> pb::Flow {
        let (src, dst) = (disk(), disk());
        let mut f = Flow::new(OperationId::time_ordered(), Kind::MoveDisk, "", src);
        f.destination = dst;
        f.exclusive_locks = vec![src, dst];
        f.to_pb()
    }

    fn disk() -> DiskKey {
        DiskKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
        }
    }

    fn stored(store: &Arc<MemFlows>, op: OperationId, known: Versioned<pb::Flow>) -> StoredFlow {
        let store: Arc<dyn FlowStore> = store.clone();
        StoredFlow::new(store, Leadership::detached("leader", 1), op, known)
    }

    /// The record, its run begun.
    async fn running(store: &Arc<MemFlows>, op: OperationId) -> FlowRecord {
        match stored(store, op, store.stored(op))
            .begin_run()
            .await
            .unwrap()
        {
            Begin::Running(r) => r,
            _ => panic!("not running"),
        }
    }

    fn end() -> End {
        End::Failed(super::super::machine::cancelled_error())
    }

    #[tokio::test]
    async fn a_run_begun_on_an_outdated_record_leaves_an_ended_flow_alone() {
        let (store, op) = (Arc::new(MemFlows::default()), OperationId::time_ordered());
        store.external(op, |_| {});
        let outdated = store.stored(op);
        store.external(op, |f| f.operation.as_mut().unwrap().done = true);
        let ended = store.stored(op);

        let begun = stored(&store, op, outdated).begin_run().await.unwrap();
        assert!(matches!(begun, Begin::Ended));
        assert_eq!(
            store.stored(op).mod_revision,
            ended.mod_revision,
            "nothing written"
        );
    }

    #[tokio::test]
    async fn a_run_begun_on_an_outdated_record_goes_on_from_the_stored_one() {
        let (store, op) = (Arc::new(MemFlows::default()), OperationId::time_ordered());
        store.external(op, |_| {});
        let outdated = store.stored(op);
        store.external(op, |f| {
            f.runs = 2;
            meta_mut(f).step = OperationStep::CopyData as i32;
            meta_mut(f).cancel_requested = true;
        });

        let Begin::Running(r) = stored(&store, op, outdated).begin_run().await.unwrap() else {
            panic!("not running");
        };
        let flow = r.get().await;
        assert_eq!(flow.runs, 3, "counted on the stored record");
        assert_eq!(flow.step, Step::CopyData);
        assert!(flow.cancel_requested);
        assert_eq!(store.stored(op).value.runs, 3);
    }

    #[tokio::test]
    async fn a_flow_is_parked_only_on_its_stored_record_and_kept_as_it_is() {
        let (store, op) = (Arc::new(MemFlows::default()), OperationId::time_ordered());
        store.external(op, |f| f.destination = None);
        let outdated = store.stored(op);
        let begun = stored(&store, op, outdated.clone())
            .begin_run()
            .await
            .unwrap();
        let Begin::Unreadable(parked, why) = begun else {
            panic!("not parked")
        };
        assert!(why.contains("destination"), "{why}");
        let error = super::super::machine::cancelled_error();
        parked.park(error.clone()).await.unwrap();
        let kept = store.stored(op).value;
        let operation = kept.operation.clone().unwrap();
        assert!(operation.done);
        assert_eq!(operation.result, Some(pb::operation::Result::Error(error)));
        assert_eq!(kept.destination, None, "the record was interpreted");
        assert_eq!(kept.exclusive_locks.len(), 2, "its locks are kept");

        // An outdated unreadable copy of a record since made whole is run, not parked.
        let (store, op) = (Arc::new(MemFlows::default()), OperationId::time_ordered());
        store.external(op, |f| f.destination = None);
        let outdated = store.stored(op);
        store.external(op, |f| *f = running_flow());
        let begun = stored(&store, op, outdated).begin_run().await.unwrap();
        assert!(matches!(begun, Begin::Running(_)));
    }

    #[tokio::test]
    async fn a_save_that_meets_a_cancel_keeps_both() {
        let (store, op) = (Arc::new(MemFlows::default()), OperationId::time_ordered());
        store.external(op, |_| {});
        let r = running(&store, op).await;
        store.external(op, |f| meta_mut(f).cancel_requested = true);

        r.update(|f| f.step = Step::CopyData).await.unwrap();
        let saved = store.stored(op).value;
        assert_eq!(meta(&saved).step, OperationStep::CopyData as i32);
        assert!(meta(&saved).cancel_requested, "the cancel was lost");
        assert!(r.cancel_requested().await);
    }

    #[tokio::test]
    async fn a_deposed_scheduler_stops_at_its_next_save() {
        let (store, op) = (Arc::new(MemFlows::default()), OperationId::time_ordered());
        store.external(op, |_| {});
        let r = running(&store, op).await;
        store.deposed.store(true, Ordering::SeqCst);

        let saved = r.update(|f| f.runs += 1).await;
        assert!(matches!(saved, Err(Stop::LeadershipLost)), "{saved:?}");
        let ended = r.finish(&[], end(), |_| {}).await;
        assert!(matches!(ended, Err(Stop::LeadershipLost)), "{ended:?}");
        assert_eq!(
            store.stored(op).value.runs,
            1,
            "nothing written after the start"
        );
    }

    #[tokio::test]
    async fn an_end_tries_again_while_a_lock_moves_and_gives_up_at_the_bound() {
        let (store, op) = (Arc::new(MemFlows::default()), OperationId::time_ordered());
        store.external(op, |_| {});
        let r = running(&store, op).await;
        store.lock_changes.store(2, Ordering::SeqCst);
        r.finish(&[], end(), |_| {}).await.unwrap();
        assert_eq!(store.ends.load(Ordering::SeqCst), 1);
        assert!(store.stored(op).value.operation.unwrap().done);

        let (store, op) = (Arc::new(MemFlows::default()), OperationId::time_ordered());
        store.external(op, |_| {});
        let r = running(&store, op).await;
        store.lock_changes.store(usize::MAX, Ordering::SeqCst);
        let ended = r.finish(&[], end(), |_| {}).await;
        assert!(
            matches!(ended, Err(Stop::Coord(CoordError::LockBusy(_)))),
            "{ended:?}"
        );
        assert_eq!(store.ends.load(Ordering::SeqCst), 0);
    }
}
