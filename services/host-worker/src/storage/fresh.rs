//! Fencing at the file itself. A copier writes its destination through a descriptor it opened by
//! name; a stopped process (a frozen host, a paused VM) keeps that descriptor and its qemu image
//! lock, and no lease in etcd reaches into it. So the volume's data is fenced by file identity:
//!
//! - The fencer (FenceVolume, under the volume's lease) gives the volume a **fresh file**: created
//!   beside it with the same format, size, allocation and backing, then renamed over the volume's
//!   name. A stopped writer's descriptor and lock now point at an unlinked inode: whatever it writes
//!   when it wakes reaches nothing a reader opens, and a retry takes the image lock of the new inode.
//! - A copy opens its destination only through its **attempt name** `<vol>.job-<job id>`, a hard
//!   link made while the copy holds the lease and confirmed by a fresh read of that lease *after* the
//!   link exists. So the name points at the inode that was the volume's while the lease stood,
//!   never at a fresh file a fencer made later — however long the copy's host is stopped between
//!   that check and qemu-img's open.
//!
//! Attempt names are removed when their copy ends, and by the fencer, for whom they all name old
//! inodes (it holds the lease, so no copy can be running). Neither kind of file has a `.meta`, so
//! listings never show them; a crash can leave one behind, removed with its image.
use std::{
    fs,
    path::{Path, PathBuf},
};

use datapath_api::{ids::JobId, volume::VolumeKey};

use super::{metadata::VolumeMeta, Storage};
use crate::{error::Error, qemu};

/// The infix of attempt names: `<vol>.job-<job id>`.
const ATTEMPT: &str = ".job-";

impl Storage {
    /// The attempt name of job `job` for volume `v`.
    pub fn attempt_path(&self, v: &VolumeKey, job: JobId) -> PathBuf {
        self.image_dir(v.storage_domain, v.image)
            .join(format!("{}{ATTEMPT}{job}", v.volume))
    }

    /// Links the volume's current data file under job `job`'s attempt name. The caller must hold
    /// the volume's lease and confirm it afterwards (see the module header).
    pub fn link_attempt(&self, v: &VolumeKey, job: JobId) -> Result<AttemptLink, Error> {
        let path = self.attempt_path(v, job);
        // Left by an earlier run of the same job (a restarted worker): it may name an old inode.
        match self.remove(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        let data = self.volume_path(v);
        // Only a regular file reached without a symlink is linked, and the link is opened and
        // checked to be that very file.
        let file = self
            .link_regular(&data, &path)
            .map_err(|e| Error::io("link", &data, e))?;
        Ok(AttemptLink {
            storage: self.clone(),
            path,
            file,
        })
    }

    /// Creates a fresh data file for `v` beside it, as its metadata describes it (the parent's
    /// metadata must be readable: a guessed backing format is never written). Nothing changes for
    /// readers until [`FreshFile::install`].
    pub async fn prepare_fresh_file(
        &self,
        v: &VolumeKey,
        meta: &VolumeMeta,
    ) -> Result<FreshFile, Error> {
        let backing = match meta.parent {
            Some(p) => {
                let parent = VolumeKey { volume: p, ..*v };
                let format = self.read_meta(&parent, "parent")?.format;
                self.checked_volume_path(&parent)?;
                Some((p.to_string(), format))
            }
            None => None,
        };
        let dir = self.image_dir(v.storage_domain, v.image);
        let fresh = FreshFile {
            storage: self.clone(),
            tmp: dir.join(format!("{}.fresh-{}", v.volume, uuid::Uuid::new_v4())),
            target: self.volume_path(v),
            dir,
            volume: v.volume.to_string(),
            installed: false,
        };
        // A random name in a directory reached without a symlink: nothing can be planted there.
        let file = self
            .create_empty(&fresh.tmp)
            .map_err(|e| Error::io("create", &fresh.tmp, e))?;
        qemu::create(&file, meta.format, meta.allocation, meta.capacity, backing).await?;
        file.sync_all()
            .map_err(|e| Error::io("sync", &fresh.tmp, e))?;
        Ok(fresh)
    }
}

/// An attempt name and the file it was made for, open; the name is removed when dropped.
#[derive(Debug)]
pub struct AttemptLink {
    storage: Storage,
    path: PathBuf,
    file: fs::File,
}

impl AttemptLink {
    /// The attempt name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file the copy writes (qemu-img through this descriptor) and flushes.
    pub fn file(&self) -> &fs::File {
        &self.file
    }
}

impl Drop for AttemptLink {
    fn drop(&mut self) {
        let _ = self.storage.remove(&self.path);
    }
}

/// A volume's fresh data file, not yet in place; removed when dropped uninstalled.
#[derive(Debug)]
pub struct FreshFile {
    storage: Storage,
    tmp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    volume: String,
    installed: bool,
}

impl FreshFile {
    /// Renames the fresh file over the volume's data (atomically: a reader opens the old file or
    /// the new one), makes that durable, then removes every attempt name of the volume. The caller
    /// must have just confirmed that it holds the volume's lease.
    pub fn install(mut self) -> Result<(), Error> {
        let storage = &self.storage;
        storage
            .regular(&self.tmp)
            .map_err(|e| Error::io("check", &self.tmp, e))?;
        storage
            .rename_within(&self.tmp, &self.target)
            .map_err(|e| Error::io("rename", &self.tmp, e))?;
        self.installed = true;
        storage
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("sync", &self.dir, e))?;
        let prefix = format!("{}{ATTEMPT}", self.volume);
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = storage.remove(&entry.path());
            }
        }
        Ok(())
    }
}

impl Drop for FreshFile {
    fn drop(&mut self) {
        if !self.installed {
            let _ = self.storage.remove(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::unix::fs::MetadataExt as _};

    use datapath_api::{
        ids::VolumeId,
        volume::{Allocation, Format, Legality, Role},
    };

    use super::*;
    use crate::storage::volume::NewVolume;

    async fn volume(storage: &Storage, format: Format) -> (VolumeKey, VolumeMeta) {
        super::super::test_volume(storage, format, Legality::Illegal).await
    }

    /// A writer that opened the volume through its attempt name before the fence keeps writing
    /// into the old inode; the volume's name, its new data file and every reader see none of it.
    #[tokio::test]
    async fn a_fenced_writer_writes_into_an_unlinked_file() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path()).unwrap();
        let (v, meta) = volume(&storage, Format::Raw).await;
        let job = JobId::random();
        let link = storage.link_attempt(&v, job).unwrap();
        let mut stale = fs::OpenOptions::new()
            .write(true)
            .open(link.path())
            .unwrap();
        let before = fs::metadata(storage.volume_path(&v)).unwrap().ino();

        let fresh = storage.prepare_fresh_file(&v, &meta).await.unwrap();
        fresh.install().unwrap();
        stale.write_all(b"written after the fence").unwrap();
        stale.sync_all().unwrap();

        let now = fs::metadata(storage.volume_path(&v)).unwrap();
        assert_ne!(now.ino(), before, "the volume kept its old file");
        assert_eq!(now.len(), 1 << 20, "the fresh file has the volume's size");
        let data = fs::read(storage.volume_path(&v)).unwrap();
        assert!(
            data.iter().all(|b| *b == 0),
            "the stale write reached the volume"
        );
        assert_eq!(
            stale.metadata().unwrap().nlink(),
            0,
            "the old file is still linked"
        );
        assert!(!link.path().exists(), "the fence left the attempt name");
        let names: Vec<_> = fs::read_dir(storage.volume_path(&v).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// A qcow2 layer's fresh file keeps its backing file and format, read from the parent's metadata.
    #[tokio::test]
    async fn a_fresh_layer_keeps_its_backing_file() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path()).unwrap();
        let (base, _) = volume(&storage, Format::Raw).await;
        let top = VolumeKey {
            volume: VolumeId::random(),
            ..base
        };
        let meta = storage
            .create_volume(&NewVolume {
                volume: top,
                format: Format::Cow,
                allocation: Allocation::Sparse,
                capacity: 0,
                parent: Some(base.volume),
                role: Role::Leaf,
                legality: Legality::Illegal,
                description: String::new(),
            })
            .await
            .unwrap();
        storage
            .prepare_fresh_file(&top, &meta)
            .await
            .unwrap()
            .install()
            .unwrap();
        let out = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(storage.volume_path(&top))
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename"], base.volume.to_string());
        assert_eq!(info["backing-filename-format"], "raw");
        assert_eq!(info["virtual-size"], 1 << 20);
    }

    /// A fresh file never installed leaves nothing behind.
    #[tokio::test]
    async fn an_abandoned_fresh_file_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path()).unwrap();
        let (v, meta) = volume(&storage, Format::Cow).await;
        let before = fs::metadata(storage.volume_path(&v)).unwrap().ino();
        drop(storage.prepare_fresh_file(&v, &meta).await.unwrap());
        assert_eq!(fs::metadata(storage.volume_path(&v)).unwrap().ino(), before);
        let names = fs::read_dir(storage.volume_path(&v).parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(names, 2);
    }
}
