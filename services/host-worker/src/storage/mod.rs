//! Storage domains on the shared filesystem, in DESIGN.md's layout:
//!
//! ```text
//! <root>/<sd>/dom_md/metadata               storage domain metadata
//! <root>/<sd>/images/<img>/<vol>            volume data: raw or qcow2
//! <root>/<sd>/images/<img>/<vol>.meta       volume metadata
//! ```
//!
//! Paths are built only from parsed ids, never from request text. Metadata files are replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory), so a crash leaves either
//! the old or the new metadata, never a torn one.
pub mod domain;
pub mod fresh;
pub mod metadata;
pub mod volume;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use datapath_api::{
    ids::{ImageId, StorageDomainId, VolumeId},
    volume::VolumeKey,
};

use crate::error::Error;

/// The storage root that every host mounts, and the paths under it.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Storage under `root` (created when missing).
    pub fn open(root: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<sd>`.
    pub fn domain_dir(&self, sd: StorageDomainId) -> PathBuf {
        self.root.join(sd.to_string())
    }

    /// `<root>/<sd>/images`.
    pub fn images_dir(&self, sd: StorageDomainId) -> PathBuf {
        self.domain_dir(sd).join("images")
    }

    /// `<root>/<sd>/images/<img>`.
    pub fn image_dir(&self, sd: StorageDomainId, img: ImageId) -> PathBuf {
        self.images_dir(sd).join(img.to_string())
    }

    /// The data file of a volume.
    pub fn volume_path(&self, v: &VolumeKey) -> PathBuf {
        self.image_dir(v.storage_domain, v.image)
            .join(v.volume.to_string())
    }

    /// The metadata file of a volume.
    pub fn meta_path(&self, v: &VolumeKey) -> PathBuf {
        self.image_dir(v.storage_domain, v.image)
            .join(format!("{}.meta", v.volume))
    }

    /// The volume ids of an image that have metadata, unsorted.
    pub fn volume_ids(&self, sd: StorageDomainId, img: ImageId) -> Result<Vec<VolumeId>, Error> {
        let dir = self.image_dir(sd, img);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ImageNotFound { sd, img })
            }
            Err(e) => return Err(Error::io("read image directory", &dir, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read image directory", &dir, e))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".meta")) else {
                continue;
            };
            if let Ok(id) = VolumeId::parse("volume", stem) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// Replaces `path` with `contents` atomically and durably.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = write_temp(path, contents)?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Creates `path` holding `contents`, failing with `AlreadyExists` if it exists: the file appears
/// whole (a hard link to a durable temporary file), so no reader ever sees it empty or half written.
pub fn create_exclusive(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = write_temp(path, contents)?;
    let linked = fs::hard_link(&tmp, path);
    fs::remove_file(&tmp)?;
    linked?;
    fs::File::open(dir)?.sync_all()
}

/// A durable temporary file beside `path`, with a name no other writer uses.
fn write_temp(path: &Path, contents: &[u8]) -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(tmp)
}

/// Makes `path`'s directory entry durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclusive_create_appears_whole_once_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.meta");
        create_exclusive(&path, b"FORMAT=RAW\n").unwrap();
        let again = create_exclusive(&path, b"FORMAT=COW\n").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), "FORMAT=RAW\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["v.meta"]);
    }
}
