//! Storage domains on the shared filesystem, in DESIGN.md's layout:
//!
//! ```text
//! <root>/<sd>/dom_md/metadata               storage domain metadata
//! <root>/<sd>/images/<img>/<vol>            volume data: raw or qcow2
//! <root>/<sd>/images/<img>/<vol>.meta       volume metadata
//! ```
//!
//! Paths are built only from parsed ids, never from request text, and every file under the root is
//! reached without following a symlink (`beneath.rs`). Metadata files are replaced atomically (write
//! a temporary file, fsync, rename, fsync the directory), so a crash leaves either the old or the
//! new metadata, never a torn one.
pub mod beneath;
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

/// What a path under the storage root is, in the domain's words and by id (`volume <id>`, `the
/// metadata of volume <id>`, `image <id>`, …): what callers and job records are told instead of the
/// path, which stays in the host's log.
pub fn subject(path: &Path) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let is_id = |s: &str| uuid::Uuid::parse_str(s).is_ok();
    let file = name(path);
    let parent = path.parent().map(name).unwrap_or_default();
    let grandparent = path
        .parent()
        .and_then(Path::parent)
        .map(name)
        .unwrap_or_default();
    if let Some(vol) = file.strip_suffix(".meta").filter(|v| is_id(v)) {
        format!("the metadata of volume {vol}")
    } else if let Some((vol, _)) = file.split_once(".job-").filter(|(v, _)| is_id(v)) {
        format!("the attempt file of volume {vol}")
    } else if let Some((vol, _)) = file.split_once(".fresh-").filter(|(v, _)| is_id(v)) {
        format!("the fresh file of volume {vol}")
    } else if is_id(&file) && parent == "images" {
        format!("image {file}")
    } else if is_id(&file) && grandparent == "images" {
        format!("volume {file}")
    } else if file == "metadata" && parent == "dom_md" {
        format!("the metadata of storage domain {grandparent}")
    } else if file == "images" || file == "dom_md" {
        format!("storage domain {parent}")
    } else if is_id(&file) {
        format!("storage domain {file}")
    } else {
        "a file".to_string()
    }
}

/// `text` (a tool's message) with every absolute path in it replaced by what it is ([`subject`]).
pub fn scrub_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('/') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | ':' | ',' | ')'))
            .unwrap_or(tail.len());
        out.push_str(&subject(Path::new(&tail[..end])));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces the local file `path` (outside shared storage: the host's own state) with `contents`
/// atomically and durably, through a temporary file created exclusively under a random name.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = f
        .write_all(contents)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(dir)?.sync_all()
}

/// A new sparse 1 MiB leaf volume of `format` and `legality` in a new domain, for unit tests.
#[cfg(test)]
pub(crate) async fn test_volume(
    storage: &Storage,
    format: datapath_api::volume::Format,
    legality: datapath_api::volume::Legality,
) -> (datapath_api::volume::VolumeKey, metadata::VolumeMeta) {
    use datapath_api::{
        ids::{ImageId, StorageDomainId, VolumeId},
        volume::{Allocation, Role, VolumeKey},
    };
    let sd = StorageDomainId::random();
    storage.create_domain(sd, "t").unwrap();
    let v = VolumeKey {
        storage_domain: sd,
        image: ImageId::random(),
        volume: VolumeId::random(),
    };
    let meta = storage
        .create_volume(&volume::NewVolume {
            volume: v,
            format,
            allocation: Allocation::Sparse,
            capacity: 1 << 20,
            parent: None,
            role: Role::Leaf,
            legality,
            description: String::new(),
        })
        .await
        .unwrap();
    (v, meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_by_what_they_are() {
        let (sd, img, vol) = (
            "1d1c3c55-2a4c-4ad1-9c4e-2d1f2a3b4c5d",
            "2e2c3c55-2a4c-4ad1-9c4e-2d1f2a3b4c5d",
            "3f3c3c55-2a4c-4ad1-9c4e-2d1f2a3b4c5d",
        );
        let root = Path::new("/secret/mount");
        let img_dir = root.join(sd).join("images").join(img);
        for (path, said) in [
            (img_dir.join(vol), format!("volume {vol}")),
            (
                img_dir.join(format!("{vol}.meta")),
                format!("the metadata of volume {vol}"),
            ),
            (
                img_dir.join(format!("{vol}.job-x")),
                format!("the attempt file of volume {vol}"),
            ),
            (img_dir.clone(), format!("image {img}")),
            (
                root.join(sd).join("dom_md/metadata"),
                format!("the metadata of storage domain {sd}"),
            ),
            (root.join(sd), format!("storage domain {sd}")),
            (root.join("elsewhere"), "a file".to_string()),
        ] {
            assert_eq!(subject(&path), said);
            assert!(!subject(&path).contains("secret"));
        }
        let stderr = format!(
            "qemu-img: {}/{sd}/images/{img}/{vol}: Could not open '/etc/shadow': denied",
            root.display()
        );
        assert_eq!(
            scrub_paths(&stderr),
            format!("qemu-img: volume {vol}: Could not open 'a file': denied")
        );
    }
}
