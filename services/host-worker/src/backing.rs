//! A source's backing chain, checked before a copy reads it. A qcow2 header names its backing file,
//! and a guest or a compromised host can write any reference there: `/etc/shadow`, a `json:{…}`
//! that opens any driver, an `nbd:` server, a volume of another image. qemu-img follows whatever
//! the header says, so every layer is read first with `qemu-img info` of that file alone (its format
//! given, its backing never opened), and each header's backing must be exactly the parent the
//! volume's metadata names — a bare volume id, a sibling in the same image directory — in the
//! parent's recorded format; the base must name none. Anything else refuses the copy with
//! `UNSAFE_BACKING_FILE` before its destination is touched.
use std::path::PathBuf;

use datapath_api::{job_error::JobErrorCode, volume::VolumeKey};

use crate::{error::Error, qemu, storage::Storage};

/// Layers a chain may have; a longer one is taken for a loop in the metadata.
const MAX_DEPTH: usize = 256;

/// A source chain that passed [`check_chain`].
#[derive(Debug)]
pub struct Chain {
    /// The top's data file: the name to hand to qemu-img.
    pub top: PathBuf,
    /// Every volume of the chain, top first: what the copy reads, and holds.
    pub volumes: Vec<VolumeKey>,
}

/// Checks the chain of `top`: metadata and headers agree, every file a regular file beneath the
/// root.
pub async fn check_chain(storage: &Storage, top: &VolumeKey) -> Result<Chain, Error> {
    let top_path = storage.checked_volume_path(top)?;
    let mut volumes = vec![*top];
    let mut volume = *top;
    let mut path = top_path.clone();
    for _ in 0..MAX_DEPTH {
        let meta = storage.read_meta(&volume, "source.volume")?;
        let header = qemu::header(&path, meta.format).await?;
        let Some(parent) = meta.parent else {
            return match header.backing {
                None => Ok(Chain {
                    top: top_path,
                    volumes,
                }),
                Some(_) => Err(unsafe_backing(
                    &volume,
                    "its header names a backing file but its metadata names no parent",
                )),
            };
        };
        let parent_key = VolumeKey {
            volume: parent,
            ..volume
        };
        let parent_meta = storage.read_meta(&parent_key, "source.volume")?;
        if header.backing.as_deref() != Some(parent.to_string().as_str()) {
            return Err(unsafe_backing(
                &volume,
                &format!("its backing file is not its parent volume {parent} in the same image"),
            ));
        }
        if header.backing_format.as_deref() != Some(parent_meta.format.qemu_name()) {
            return Err(unsafe_backing(
                &volume,
                &format!(
                    "its backing format is not {}, the format of its parent volume {parent}",
                    parent_meta.format.qemu_name()
                ),
            ));
        }
        path = storage.checked_volume_path(&parent_key)?;
        volume = parent_key;
        volumes.push(parent_key);
    }
    Err(unsafe_backing(top, "its chain is longer than 256 volumes"))
}

fn unsafe_backing(volume: &VolumeKey, why: &str) -> Error {
    Error::precondition(
        JobErrorCode::UnsafeBackingFile.as_str(),
        "source.volume",
        format!("volume {volume} cannot be read safely: {why}"),
    )
}
