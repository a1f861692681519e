//! Volumes and images: create, read and replace metadata, list, delete.
use std::fs;

use datapath_api::{
    ids::{ImageId, StorageDomainId, VolumeId},
    volume::{Allocation, Format, Legality, Role, VolumeKey},
};

use super::{metadata::VolumeMeta, Storage};
use crate::{error::Error, qemu};

/// What CreateVolume asks for, validated.
#[derive(Debug, Clone)]
pub struct NewVolume {
    /// Where.
    pub volume: VolumeKey,
    /// Disk format.
    pub format: Format,
    /// Allocation policy.
    pub allocation: Allocation,
    /// Virtual size; 0 with a parent means the parent's.
    pub capacity: u64,
    /// Backing volume in the same image.
    pub parent: Option<VolumeId>,
    /// Place in the chain.
    pub role: Role,
    /// Initial legality.
    pub legality: Legality,
    /// Free text.
    pub description: String,
}

impl Storage {
    /// A volume's metadata; `VolumeNotFound` naming `field`.
    pub fn read_meta(&self, v: &VolumeKey, field: &str) -> Result<VolumeMeta, Error> {
        self.domain(v.storage_domain, &format!("{field}.storage_domain_id"))?;
        let path = self.meta_path(v);
        let text = self.read_text(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::VolumeNotFound {
                volume: *v,
                field: field.to_string(),
            },
            _ => Error::io("read", &path, e),
        })?;
        VolumeMeta::parse(&text).map_err(|m| Error::io("parse", &path, std::io::Error::other(m)))
    }

    /// Replaces a volume's metadata atomically.
    pub fn write_meta(&self, v: &VolumeKey, meta: &VolumeMeta) -> Result<(), Error> {
        let path = self.meta_path(v);
        self.write_atomic(&path, meta.render().as_bytes())
            .map_err(|e| Error::io("write", &path, e))
    }

    /// Bytes the data file occupies (0 if it is not a regular file reached safely).
    pub fn allocated_bytes(&self, v: &VolumeKey) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        self.regular(&self.volume_path(v))
            .map(|m| m.blocks().saturating_mul(512))
            .unwrap_or(0)
    }

    /// The data file of `v`, opened: a regular file reached without a symlink. qemu-img is
    /// handed its descriptor, never its name (`image_files.rs`).
    pub fn open_volume(&self, v: &VolumeKey) -> Result<std::fs::File, Error> {
        let path = self.volume_path(v);
        self.open_regular(&path)
            .map_err(|e| Error::io("open", &path, e))
    }

    /// The data file of `v`, checked to be a regular file reached without a symlink (a parent
    /// whose name a new volume's header will carry).
    pub fn checked_volume_path(&self, v: &VolumeKey) -> Result<std::path::PathBuf, Error> {
        let path = self.volume_path(v);
        self.regular(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok(path)
    }

    /// Creates a volume: metadata first (ILLEGAL, created whole and exclusively, so a taken id fails
    /// without touching anything and a reader never sees it half written), then the data file, then
    /// the requested legality. A crash in between leaves an
    /// ILLEGAL volume that can be deleted, never a LEGAL one without data.
    pub async fn create_volume(&self, new: &NewVolume) -> Result<VolumeMeta, Error> {
        let v = &new.volume;
        self.domain(v.storage_domain, "volume.storage_domain_id")?;
        let mut meta = VolumeMeta {
            format: new.format,
            allocation: new.allocation,
            capacity: new.capacity,
            parent: new.parent,
            role: new.role,
            legality: Legality::Illegal,
            generation: 0,
            description: new.description.clone(),
            created: datapath_api::time::now().seconds,
        };
        // The parent's format comes from its metadata, never guessed, and its data file must be a
        // regular file: checked before anything is made.
        let mut parent = None;
        if let Some(p) = new.parent {
            let pkey = VolumeKey { volume: p, ..*v };
            let pmeta = self.read_meta(&pkey, "parent_volume_id")?;
            if new.capacity == 0 {
                meta.capacity = pmeta.capacity;
            } else if new.capacity < pmeta.capacity {
                return Err(Error::precondition(
                    "CAPACITY_BELOW_PARENT",
                    "capacity_bytes",
                    format!(
                        "capacity {} is below the parent's {}",
                        new.capacity, pmeta.capacity
                    ),
                ));
            }
            self.checked_volume_path(&pkey)?;
            parent = Some((p.to_string(), pmeta.format));
        }
        let img_dir = self.image_dir(v.storage_domain, v.image);
        self.ensure_dir(&img_dir)
            .map_err(|e| Error::io("create", &img_dir, e))?;
        let meta_path = self.meta_path(v);
        match self.create_exclusive(&meta_path, meta.render().as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::VolumeExists(*v))
            }
            Err(e) => return Err(Error::io("create", &meta_path, e)),
        }
        // The data file is made here, exclusively and beneath the root, before qemu-img writes its
        // header into it: a name planted in advance (a symlink to a host file) is never opened.
        let data = self.volume_path(v);
        let file = match self.create_empty(&data) {
            Ok(file) => file,
            Err(e) => {
                let _ = self.remove(&meta_path);
                return Err(match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Error::UnsafeFile {
                        subject: super::subject(&data),
                        why: "a file of that name exists without the volume's metadata",
                    },
                    _ => Error::io("create", &data, e),
                });
            }
        };
        qemu::create(&file, meta.format, meta.allocation, meta.capacity, parent).await?;
        self.sync_dir(&img_dir)
            .map_err(|e| Error::io("sync", &img_dir, e))?;
        meta.legality = new.legality;
        self.write_meta(v, &meta)?;
        Ok(meta)
    }

    /// The image ids of a domain, in id order: one directory listing, no metadata read.
    pub fn image_ids(&self, sd: StorageDomainId) -> Result<Vec<ImageId>, Error> {
        self.domain(sd, "storage_domain_id")?;
        let dir = self.images_dir(sd);
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
        let mut ids: Vec<ImageId> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| ImageId::parse("img", e.file_name().to_str()?).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The volume ids of image `img`, base first.
    pub fn image_volume_ids(
        &self,
        sd: StorageDomainId,
        img: ImageId,
    ) -> Result<Vec<VolumeId>, Error> {
        Ok(self.chain(sd, img)?.into_iter().map(|(id, _)| id).collect())
    }

    /// The images of a domain, in id order, each with its volume ids (base first).
    pub fn images(&self, sd: StorageDomainId) -> Result<Vec<(ImageId, Vec<VolumeId>)>, Error> {
        self.image_ids(sd)?
            .into_iter()
            .map(|img| Ok((img, self.image_volume_ids(sd, img)?)))
            .collect()
    }

    /// The volumes of an image ordered base first (parents before children, then by id).
    pub fn chain(
        &self,
        sd: StorageDomainId,
        img: ImageId,
    ) -> Result<Vec<(VolumeId, VolumeMeta)>, Error> {
        let mut ids = self.volume_ids(sd, img)?;
        ids.sort();
        let mut metas = Vec::new();
        for vol in ids {
            let key = VolumeKey {
                storage_domain: sd,
                image: img,
                volume: vol,
            };
            metas.push((vol, self.read_meta(&key, "volume")?));
        }
        let depth = |mut id: VolumeId| {
            let mut d = 0;
            while let Some(p) = metas
                .iter()
                .find(|(v, _)| *v == id)
                .and_then(|(_, m)| m.parent)
            {
                d += 1;
                id = p;
                if d > metas.len() {
                    break;
                }
            }
            d
        };
        let mut ordered: Vec<(usize, VolumeId, VolumeMeta)> = metas
            .iter()
            .map(|(v, m)| (depth(*v), *v, m.clone()))
            .collect();
        ordered.sort_by_key(|(d, v, _)| (*d, *v));
        Ok(ordered.into_iter().map(|(_, v, m)| (v, m)).collect())
    }

    /// Finishes deletions that a crash interrupted: removes every `.deleting-*` directory left in
    /// the domains' image directories. Returns how many it removed. Errors are skipped: another host
    /// may be removing the same directory.
    pub fn sweep_interrupted_deletions(&self) -> usize {
        let mut removed = 0;
        for domain in self.domains().unwrap_or_default() {
            let Ok(sd) = StorageDomainId::parse("sd", &domain.storage_domain_id) else {
                continue;
            };
            let Ok(entries) = fs::read_dir(self.images_dir(sd)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with(".deleting-")
                    && fs::remove_dir_all(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Deletes an image: renamed aside first (atomic, so it vanishes from listings at once), then
    /// removed.
    pub fn delete_image(&self, sd: StorageDomainId, img: ImageId) -> Result<(), Error> {
        let dir = self.image_dir(sd, img);
        if !dir.is_dir() {
            return Err(Error::ImageNotFound { sd, img });
        }
        let trash = self
            .images_dir(sd)
            .join(format!(".deleting-{img}-{}", uuid::Uuid::new_v4()));
        fs::rename(&dir, &trash).map_err(|e| Error::io("rename", &dir, e))?;
        self.sync_dir(&self.images_dir(sd))
            .map_err(|e| Error::io("sync", &dir, e))?;
        fs::remove_dir_all(&trash).map_err(|e| Error::io("remove", &trash, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_deletion_is_swept_and_never_listed() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path()).unwrap();
        let sd = StorageDomainId::random();
        storage.create_domain(sd, "t").unwrap();
        let img = ImageId::random();
        let left = storage.images_dir(sd).join(format!(".deleting-{img}-x"));
        fs::create_dir_all(left.join("inner")).unwrap();
        assert!(storage.images(sd).unwrap().is_empty());
        assert_eq!(storage.sweep_interrupted_deletions(), 1);
        assert!(!left.exists());
        assert_eq!(storage.sweep_interrupted_deletions(), 0);
    }
}
