//! A watched copy of every volume's generation record, lease and read holds (`generations/`,
//! `leases/volumes/`, `holds/volumes/`), so that the frequent reads of a volume — GetVolumeInfo, CopyData's checks —
//! cost no etcd round trip. Built from one range read of each prefix at one revision, then kept by a
//! watch of each from the next revision; a broken or compacted watch sends it back to a full read,
//! and until that read is done the view answers nothing.
//!
//! The view may lag etcd by the time a watch event takes to arrive (well under a millisecond
//! locally). It is used only where that lag cannot mislead (PROTOCOLS.md, "Reads from the volume
//! view"):
//! - a lease the view shows is confirmed against etcd before anything is refused for it; a lease it
//!   does not show may just have been taken, which the taker's own create-if-absent transaction
//!   already rules out for anyone else;
//! - a generation record is only ever read to overrule the volume's metadata file (a fence that
//!   raised etcd first and died before the file), and both commit and fence write etcd before the
//!   file: so a view behind etcd shows what the file already shows, and a record above the file is
//!   confirmed against etcd before it is reported.
//!
//! - a read hold is read only to refuse a copy into the held volume early; the view says "no hold"
//!   at worst a moment late, and the copy's own lease transaction requires no hold anyway.
//!
//! A record that does not decode is kept as "unknown" and its readers go to etcd, which reports
//! the decode error as before.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use datapath_api::{pb::VolumeLease, volume::VolumeKey};
use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions, WatchResponse};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::{generations::decode_generation, hosts::decode, Coord, CoordError, Result};

/// The longest pause between two attempts to read and watch again.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// What the view knows of one volume.
#[derive(Debug, Clone, PartialEq)]
pub enum Known<T> {
    /// The view is not in step with etcd (starting, or its watch broke): ask etcd.
    Unknown,
    /// No record.
    Absent,
    /// The record, as of the view's revision.
    Present(T),
}

#[derive(Default)]
struct State {
    /// Which following of etcd may write this state: bumped by every start and stop, so a task
    /// stopped in the middle of a poll cannot write after its stop.
    epoch: u64,
    synced: bool,
    revision: i64,
    /// Generation and the record's mod revision; `None`: the record does not decode.
    generations: HashMap<VolumeKey, Option<(u64, i64)>>,
    /// `None`: the record does not decode.
    leases: HashMap<VolumeKey, Option<VolumeLease>>,
    /// The keys of each volume's read holds (never empty).
    holds: HashMap<VolumeKey, HashSet<Vec<u8>>>,
}

/// The watched view; cheap to clone. The watch stops when the last clone is dropped, or when the
/// view is told to stop following ([`VolumeView::unfollow`]).
#[derive(Clone)]
pub struct VolumeView {
    state: Arc<RwLock<State>>,
    task: Arc<std::sync::Mutex<Option<TaskGuard>>>,
}

struct TaskGuard(AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl VolumeView {
    /// The generation record of `volume` and its mod revision.
    pub fn generation(&self, volume: &VolumeKey) -> Known<(u64, i64)> {
        let state = self.state.read().expect("volume view lock");
        match (state.synced, state.generations.get(volume)) {
            (false, _) | (true, Some(None)) => Known::Unknown,
            (true, None) => Known::Absent,
            (true, Some(Some(g))) => Known::Present(*g),
        }
    }

    /// The lease of `volume`, its `revision` set to the fencing token.
    pub fn lease(&self, volume: &VolumeKey) -> Known<VolumeLease> {
        let state = self.state.read().expect("volume view lock");
        match (state.synced, state.leases.get(volume)) {
            (false, _) | (true, Some(None)) => Known::Unknown,
            (true, None) => Known::Absent,
            (true, Some(Some(l))) => Known::Present(l.clone()),
        }
    }

    /// Whether the view alone can say that `volume` has no lease. It never says a lease is held:
    /// that is for etcd to confirm (a lease shown may have been released since).
    pub fn lease_free(&self, volume: &VolumeKey) -> bool {
        self.lease(volume) == Known::Absent
    }

    /// Whether the view alone can say that no copy holds `volume` for reading. It never says one
    /// does: a hold shown may have been released since.
    pub fn hold_free(&self, volume: &VolumeKey) -> bool {
        let state = self.state.read().expect("volume view lock");
        state.synced && !state.holds.contains_key(volume)
    }

    /// Whether the view alone can say that no generation record of `volume` is above `on_file`.
    /// It never says one is: a record shown above may have been deleted with its image since.
    pub fn generation_not_above(&self, volume: &VolumeKey, on_file: u64) -> bool {
        match self.generation(volume) {
            Known::Absent => true,
            Known::Present((g, _)) => g <= on_file,
            Known::Unknown => false,
        }
    }

    /// Whether the view is in step with etcd, and the revision it reflects.
    pub fn synced(&self) -> (bool, i64) {
        let state = self.state.read().expect("volume view lock");
        (state.synced, state.revision)
    }
}

impl VolumeView {
    /// A view that does not follow etcd (yet): it answers [`Known::Unknown`] for everything, so
    /// every read goes to etcd. Each following view turns every lease, hold and generation write
    /// into one more watch event for etcd to send, so in a large cluster hosts read etcd instead
    /// (BENCHMARKS.md, "The control plane with many hosts").
    pub fn unwatched() -> Self {
        Self {
            state: Arc::new(RwLock::new(State::default())),
            task: Arc::default(),
        }
    }

    /// Starts following etcd, unless the view already does; it answers [`Known::Unknown`] until
    /// its first full read is done.
    pub fn follow(&self, coord: &Coord) {
        let mut task = self.task.lock().expect("volume view task lock");
        if task.is_none() {
            let epoch = {
                let mut s = self.state.write().expect("volume view lock");
                s.epoch += 1;
                s.epoch
            };
            let handle = tokio::spawn(follow_forever(coord.clone(), self.state.clone(), epoch));
            *task = Some(TaskGuard(handle.abort_handle()));
        }
    }

    /// Stops following etcd and forgets what it knew: from now on it answers
    /// [`Known::Unknown`], and reads go to etcd.
    pub fn unfollow(&self) {
        let stopped = self.task.lock().expect("volume view task lock").take();
        drop(stopped);
        let mut s = self.state.write().expect("volume view lock");
        *s = State {
            epoch: s.epoch + 1,
            ..State::default()
        };
    }

    /// Whether the view follows etcd (it may still be reading, or out of step).
    pub fn following(&self) -> bool {
        self.task.lock().expect("volume view task lock").is_some()
    }
}

impl Coord {
    /// Starts the volume view: it is [`Known::Unknown`] until its first full read is done.
    pub fn volume_view(&self) -> VolumeView {
        let view = VolumeView::unwatched();
        view.follow(self);
        view
    }
}

async fn follow_forever(coord: Coord, state: Arc<RwLock<State>>, epoch: u64) {
    let mut pause = Duration::from_millis(50);
    loop {
        let outcome = follow(&coord, &state, epoch).await;
        {
            let mut s = state.write().expect("volume view lock");
            if s.epoch != epoch {
                return;
            }
            s.synced = false;
        }
        crate::metrics::metrics().volume_view_resyncs.inc();
        match outcome {
            Ok(()) => info!("volume view: a watch ended; reading everything again"),
            Err(e) => {
                warn!(error = %e, "volume view: out of step with etcd; reading everything again")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// One full read, then the watches until one of them ends or fails.
async fn follow(coord: &Coord, state: &RwLock<State>, epoch: u64) -> Result<()> {
    let keys = coord.keys();
    let mut client = coord.client();
    let gens = client
        .get(keys.generations(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = gens.header().map(|h| h.revision()).unwrap_or_default();
    let at_revision = GetOptions::new().with_prefix().with_revision(revision);
    let leases = client
        .get(keys.volume_leases(), Some(at_revision.clone()))
        .await?;
    let holds = client.get(keys.volume_holds(), Some(at_revision)).await?;
    let from = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut gen_watch = client.watch(keys.generations(), Some(from.clone())).await?;
    let mut lease_watch = client
        .watch(keys.volume_leases(), Some(from.clone()))
        .await?;
    let mut hold_watch = client.watch(keys.volume_holds(), Some(from)).await?;
    {
        let mut s = state.write().expect("volume view lock");
        if s.epoch != epoch {
            return Err(stopped());
        }
        s.generations = gens
            .kvs()
            .iter()
            .filter_map(|kv| generation_of(coord, kv))
            .collect();
        s.leases = leases
            .kvs()
            .iter()
            .filter_map(|kv| lease_of(coord, kv))
            .collect();
        s.holds = HashMap::new();
        for kv in holds.kvs() {
            if let Some(volume) = keys.parse_volume_hold(kv.key()) {
                s.holds.entry(volume).or_default().insert(kv.key().to_vec());
            }
        }
        s.revision = revision;
        s.synced = true;
        debug!(
            revision,
            generations = s.generations.len(),
            leases = s.leases.len(),
            "volume view in step"
        );
    }
    loop {
        let resp = tokio::select! {
            r = gen_watch.message() => r?,
            r = lease_watch.message() => r?,
            r = hold_watch.message() => r?,
        };
        let Some(resp) = resp else { return Ok(()) };
        apply(coord, state, epoch, &resp)?;
    }
}

/// The error of a following that was stopped.
fn stopped() -> CoordError {
    CoordError::WatchCanceled("the volume view stopped following etcd".into())
}

fn apply(coord: &Coord, state: &RwLock<State>, epoch: u64, resp: &WatchResponse) -> Result<()> {
    if resp.compact_revision() > 0 {
        return Err(CoordError::Compacted {
            requested: state.read().expect("volume view lock").revision + 1,
            compacted: resp.compact_revision(),
        });
    }
    if resp.canceled() {
        return Err(CoordError::WatchCanceled(resp.cancel_reason().to_string()));
    }
    let keys = coord.keys();
    let mut s = state.write().expect("volume view lock");
    if s.epoch != epoch {
        return Err(stopped());
    }
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let put = event.event_type() == EventType::Put;
        if let Some(volume) = keys.parse_generation(kv.key()) {
            match put.then(|| generation_of(coord, kv)).flatten() {
                Some((_, g)) => s.generations.insert(volume, g),
                None => s.generations.remove(&volume),
            };
        } else if let Some(volume) = keys.parse_volume_lease(kv.key()) {
            match put.then(|| lease_of(coord, kv)).flatten() {
                Some((_, l)) => s.leases.insert(volume, l),
                None => s.leases.remove(&volume),
            };
        } else if let Some(volume) = keys.parse_volume_hold(kv.key()) {
            let held = s.holds.entry(volume).or_default();
            if put {
                held.insert(kv.key().to_vec());
            } else {
                held.remove(kv.key());
            }
            if held.is_empty() {
                s.holds.remove(&volume);
            }
        }
        s.revision = s.revision.max(kv.mod_revision());
    }
    Ok(())
}

fn generation_of(coord: &Coord, kv: &KeyValue) -> Option<(VolumeKey, Option<(u64, i64)>)> {
    let volume = coord.keys().parse_generation(kv.key())?;
    let generation = decode_generation(kv.key(), kv.value()).ok();
    Some((volume, generation.map(|g| (g, kv.mod_revision()))))
}

fn lease_of(coord: &Coord, kv: &KeyValue) -> Option<(VolumeKey, Option<VolumeLease>)> {
    let volume = coord.keys().parse_volume_lease(kv.key())?;
    let lease = decode::<VolumeLease>(kv.key(), kv.value())
        .ok()
        .map(|mut l| {
            l.revision = kv.create_revision();
            l
        });
    Some((volume, lease))
}

#[cfg(test)]
mod tests {
    use datapath_api::ids::{ImageId, StorageDomainId, VolumeId};

    use super::*;

    fn volume() -> VolumeKey {
        VolumeKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
            volume: VolumeId::random(),
        }
    }

    fn view(state: State) -> VolumeView {
        VolumeView {
            state: Arc::new(RwLock::new(state)),
            task: Arc::default(),
        }
    }

    fn lease() -> VolumeLease {
        VolumeLease {
            host_id: "h".into(),
            job_id: "j".into(),
            revision: 9,
        }
    }

    #[test]
    fn the_view_only_ever_answers_free_and_not_above() {
        let (free, held, raised, bad) = (volume(), volume(), volume(), volume());
        let in_step = view(State {
            synced: true,
            revision: 10,
            generations: HashMap::from([(raised, Some((4, 8))), (bad, None)]),
            leases: HashMap::from([(held, Some(lease())), (bad, None)]),
            holds: HashMap::from([(held, HashSet::from([b"k".to_vec()]))]),
            ..State::default()
        });
        assert!(in_step.lease_free(&free));
        assert!(in_step.hold_free(&free));
        assert!(
            !in_step.hold_free(&held),
            "a hold shown is confirmed in etcd"
        );
        assert!(
            !in_step.lease_free(&held),
            "a lease shown is confirmed in etcd"
        );
        assert!(
            !in_step.lease_free(&bad),
            "an undecodable lease is read from etcd"
        );
        assert_eq!(in_step.lease(&held), Known::Present(lease()));
        assert_eq!(in_step.lease(&bad), Known::Unknown);
        assert!(
            !in_step.generation_not_above(&bad, 0),
            "an undecodable generation is read from etcd"
        );
        assert!(in_step.generation_not_above(&free, 0));
        assert!(in_step.generation_not_above(&raised, 4));
        assert!(in_step.generation_not_above(&raised, 5));
        assert!(
            !in_step.generation_not_above(&raised, 3),
            "a record above the file is confirmed in etcd"
        );

        let out_of_step = view(State {
            synced: false,
            ..State::default()
        });
        assert!(!out_of_step.lease_free(&free));
        assert!(!out_of_step.hold_free(&free));
        assert!(!out_of_step.generation_not_above(&free, 0));
        assert_eq!(out_of_step.generation(&free), Known::Unknown);
    }
}
