//! The fence's ordering on real files and in-memory leases: the data file first, then the
//! generation in etcd, then the metadata; a fencer that lost its lease, or met a moved
//! generation, leaves the metadata (and on a lost lease, the file) as they were.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use async_trait::async_trait;
use datapath_api::{
    ids::{HostId, JobId},
    volume::{Format, Legality, VolumeKey},
};
use datapath_coord::{generations::Refused, lease_store::VolumeLeases};

use super::fence_under_lease;
use crate::{error::Error, storage::Storage};

const TOKEN: i64 = 41;

/// One fencer's lease (held at [`TOKEN`] unless `lost`) and the recorded generations, with etcd's
/// compare rules; `moved_to`: someone records this generation just before the fence's write.
#[derive(Default)]
struct MemLeases {
    lost: AtomicBool,
    generations: Mutex<HashMap<VolumeKey, (u64, i64)>>,
    moved_to: Mutex<Option<u64>>,
}

impl MemLeases {
    fn recorded(&self, v: &VolumeKey) -> Option<u64> {
        self.generations.lock().unwrap().get(v).map(|(g, _)| *g)
    }

    fn record(&self, v: &VolumeKey, g: u64) {
        let mut gens = self.generations.lock().unwrap();
        let rev = gens
            .values()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        gens.insert(*v, (g, rev));
    }
}

#[async_trait]
impl VolumeLeases for MemLeases {
    async fn acquire_volume_lease(
        &self,
        _: &VolumeKey,
        _: HostId,
        _: JobId,
        _: i64,
    ) -> datapath_coord::Result<i64> {
        Ok(TOKEN)
    }

    async fn release_volume_lease(
        &self,
        _: &VolumeKey,
        token: i64,
    ) -> datapath_coord::Result<bool> {
        Ok(token == TOKEN && !self.lost.load(Ordering::SeqCst))
    }

    async fn holds_volume_lease(&self, _: &VolumeKey, token: i64) -> datapath_coord::Result<bool> {
        Ok(token == TOKEN && !self.lost.load(Ordering::SeqCst))
    }

    async fn generation(&self, v: &VolumeKey) -> datapath_coord::Result<Option<(u64, i64)>> {
        Ok(self.generations.lock().unwrap().get(v).copied())
    }

    async fn commit_generation(
        &self,
        _: &VolumeKey,
        _: i64,
        _: u64,
    ) -> datapath_coord::Result<Result<(), Refused>> {
        unreachable!("a fence does not commit")
    }

    async fn fence_generation(
        &self,
        v: &VolumeKey,
        token: i64,
        seen: Option<(u64, i64)>,
        to: u64,
    ) -> datapath_coord::Result<Result<(), Refused>> {
        if let Some(moved) = self.moved_to.lock().unwrap().take() {
            self.record(v, moved);
        }
        if !self.holds_volume_lease(v, token).await? {
            return Ok(Err(Refused::LeaseLost));
        }
        let current = self.generations.lock().unwrap().get(v).copied();
        if current != seen {
            return Ok(Err(Refused::GenerationMoved {
                found: current.map_or(0, |(g, _)| g),
            }));
        }
        self.record(v, to);
        Ok(Ok(()))
    }
}

/// A raw 1 MiB volume at `generation` and `legality`, whose data file holds a stale writer's bytes.
async fn volume(storage: &Storage, generation: u64, legality: Legality) -> VolumeKey {
    let (v, mut meta) = crate::storage::test_volume(storage, Format::Raw, legality).await;
    meta.generation = generation;
    storage.write_meta(&v, &meta).unwrap();
    std::fs::write(storage.volume_path(&v), vec![7u8; 1 << 20]).unwrap();
    v
}

/// The volume's data file inode, its metadata's generation and legality.
fn on_disk(storage: &Storage, v: &VolumeKey) -> (u64, u64, Legality) {
    let meta = storage.read_meta(v, "volume").unwrap();
    let ino = std::fs::metadata(storage.volume_path(v)).unwrap().ino();
    (ino, meta.generation, meta.legality)
}

fn reason(e: &Error) -> &'static str {
    match e {
        Error::Precondition { reason, .. } => reason,
        Error::SessionLost => "SESSION_LOST",
        _ => "other",
    }
}

#[tokio::test]
async fn an_uncommitted_copy_is_fenced_file_first_then_generation_then_metadata() {
    let root = tempfile::tempdir().unwrap();
    let (storage, leases) = (Storage::open(root.path()).unwrap(), MemLeases::default());
    let v = volume(&storage, 3, Legality::Illegal).await;
    let (ino, ..) = on_disk(&storage, &v);

    assert!(fence_under_lease(&storage, &leases, &v, TOKEN, 3)
        .await
        .unwrap());
    let (now, generation, legality) = on_disk(&storage, &v);
    assert_ne!(now, ino, "the stale writer's file is still the volume's");
    assert_eq!((generation, legality), (5, Legality::Illegal));
    assert_eq!(leases.recorded(&v), Some(5), "above the lost attempt's 4");
    let data = std::fs::read(storage.volume_path(&v)).unwrap();
    assert!(
        data.iter().all(|b| *b == 0),
        "the fresh file holds old bytes"
    );
}

#[tokio::test]
async fn a_copy_that_committed_is_left_as_it_is() {
    let root = tempfile::tempdir().unwrap();
    let (storage, leases) = (Storage::open(root.path()).unwrap(), MemLeases::default());
    let v = volume(&storage, 4, Legality::Legal).await;
    leases.record(&v, 4);
    let before = on_disk(&storage, &v);

    assert!(!fence_under_lease(&storage, &leases, &v, TOKEN, 3)
        .await
        .unwrap());
    assert_eq!(on_disk(&storage, &v), before);
    assert_eq!(leases.recorded(&v), Some(4));
}

#[tokio::test]
async fn a_fencer_that_lost_its_lease_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (storage, leases) = (Storage::open(root.path()).unwrap(), MemLeases::default());
    let v = volume(&storage, 3, Legality::Illegal).await;
    let before = on_disk(&storage, &v);
    leases.lost.store(true, Ordering::SeqCst);

    let fenced = fence_under_lease(&storage, &leases, &v, TOKEN, 3).await;
    assert_eq!(reason(&fenced.unwrap_err()), "SESSION_LOST");
    assert_eq!(
        on_disk(&storage, &v),
        before,
        "the file or metadata changed"
    );
    assert_eq!(leases.recorded(&v), None);
}

#[tokio::test]
async fn a_generation_moved_under_the_fence_leaves_the_metadata() {
    let root = tempfile::tempdir().unwrap();
    let (storage, leases) = (Storage::open(root.path()).unwrap(), MemLeases::default());
    let v = volume(&storage, 3, Legality::Illegal).await;
    *leases.moved_to.lock().unwrap() = Some(9);

    let fenced = fence_under_lease(&storage, &leases, &v, TOKEN, 3).await;
    assert_eq!(reason(&fenced.unwrap_err()), "GENERATION_MOVED");
    let (_, generation, legality) = on_disk(&storage, &v);
    assert_eq!((generation, legality), (3, Legality::Illegal));
    assert_eq!(
        leases.recorded(&v),
        Some(9),
        "the other write was overwritten"
    );
}

#[tokio::test]
async fn the_top_generation_is_refused_before_anything_changes() {
    let root = tempfile::tempdir().unwrap();
    let (storage, leases) = (Storage::open(root.path()).unwrap(), MemLeases::default());
    let v = volume(&storage, u64::MAX, Legality::Illegal).await;
    let before = on_disk(&storage, &v);

    let fenced = fence_under_lease(&storage, &leases, &v, TOKEN, 3).await;
    assert_eq!(reason(&fenced.unwrap_err()), "GENERATION_EXHAUSTED");
    assert_eq!(on_disk(&storage, &v), before);
    assert_eq!(leases.recorded(&v), None);
}
