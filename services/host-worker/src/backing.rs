//! A volume's backing chain, checked before a copy opens it. A qcow2 header names its backing file,
//! and a guest or a compromised host can write any reference there: `/etc/shadow`, a `json:{…}`
//! that opens any driver, an `nbd:` server, a volume of another image; or an external data file,
//! which qemu would open by name and read or write. Every layer is opened by the worker (beneath the
//! root, a regular file) and its header read with `qemu-img info` of that descriptor alone (its
//! format given, its backing never opened, no lock taken). Each header's backing must be exactly
//! the parent the volume's metadata names — a bare volume id, a sibling in the same image
//! directory — in the parent's recorded format; the base must name none; none may name a data
//! file. Anything else refuses the copy with `UNSAFE_BACKING_FILE` before its destination is
//! touched. The copy then reads these very descriptors, each layer's backing given explicitly
//! (`image_files.rs`), so a header rewritten after the check is not followed either.
use std::fs::File;

use datapath_api::{
    job_error::JobErrorCode,
    volume::{Format, VolumeKey},
};

use crate::{
    error::Error,
    image_files::{Layer, OpenChain},
    qemu,
    storage::{metadata::VolumeMeta, Storage},
};

/// Layers a chain may have; a longer one is taken for a loop in the metadata.
const MAX_DEPTH: usize = 256;

/// A chain that passed [`check_chain`].
#[derive(Debug)]
pub struct Chain {
    /// Every layer's file, opened, top first: what qemu-img reads.
    pub files: OpenChain,
    /// Every volume of the chain, top first: what the copy reads, and holds.
    pub volumes: Vec<VolumeKey>,
}

/// Opens and checks the chain of `top` (the volume at request field `field`): metadata and headers
/// agree, every file a regular file beneath the root.
pub async fn check_chain(
    storage: &Storage,
    top: &VolumeKey,
    field: &'static str,
) -> Result<Chain, Error> {
    let mut layers = Vec::new();
    let mut volumes = Vec::new();
    let mut volume = *top;
    for _ in 0..MAX_DEPTH {
        let meta = storage.read_meta(&volume, field)?;
        let file = storage.open_volume(&volume)?;
        let parent = check_layer(storage, &volume, &meta, &file, field).await?;
        layers.push(Layer {
            file,
            format: meta.format,
        });
        volumes.push(volume);
        match parent {
            Some(p) => volume = p,
            None => {
                return Ok(Chain {
                    files: OpenChain::new(layers),
                    volumes,
                })
            }
        }
    }
    Err(unsafe_backing(
        top,
        field,
        "its chain is longer than 256 volumes",
    ))
}

/// Opens the destination of a copy as qemu-img writes it: `file` (its attempt file, already open)
/// on top of its parent's chain, each header checked as [`check_chain`] does.
pub async fn destination_chain(
    storage: &Storage,
    volume: &VolumeKey,
    meta: &VolumeMeta,
    file: &File,
) -> Result<OpenChain, Error> {
    let field = "destination.volume";
    let parent = check_layer(storage, volume, meta, file, field).await?;
    let top = Layer {
        file: file
            .try_clone()
            .map_err(|e| Error::io("open", &storage.volume_path(volume), e))?,
        format: meta.format,
    };
    let mut layers = vec![top];
    if let Some(p) = parent {
        let below = check_chain(storage, &p, "destination.parent").await?;
        layers.extend(below.files.into_layers());
    }
    Ok(OpenChain::new(layers))
}

/// Checks the header of `volume` (its data file `file`, in the format `meta` records) against its
/// metadata; the parent volume it names, if any.
async fn check_layer(
    storage: &Storage,
    volume: &VolumeKey,
    meta: &VolumeMeta,
    file: &File,
    field: &'static str,
) -> Result<Option<VolumeKey>, Error> {
    let header = qemu::header(file, meta.format).await?;
    if header.data_file.is_some() {
        return Err(unsafe_backing(
            volume,
            field,
            "its header names an external data file",
        ));
    }
    let Some(parent) = meta.parent else {
        return match header.backing {
            None => Ok(None),
            Some(_) => Err(unsafe_backing(
                volume,
                field,
                "its header names a backing file but its metadata names no parent",
            )),
        };
    };
    let parent_key = VolumeKey {
        volume: parent,
        ..*volume
    };
    let parent_format: Format = storage.read_meta(&parent_key, field)?.format;
    if header.backing.as_deref() != Some(parent.to_string().as_str()) {
        return Err(unsafe_backing(
            volume,
            field,
            &format!("its backing file is not its parent volume {parent} in the same image"),
        ));
    }
    if header.backing_format.as_deref() != Some(parent_format.qemu_name()) {
        return Err(unsafe_backing(
            volume,
            field,
            &format!(
                "its backing format is not {}, the format of its parent volume {parent}",
                parent_format.qemu_name()
            ),
        ));
    }
    Ok(Some(parent_key))
}

fn unsafe_backing(volume: &VolumeKey, field: &'static str, why: &str) -> Error {
    Error::precondition(
        JobErrorCode::UnsafeBackingFile.as_str(),
        field,
        format!("volume {volume} cannot be opened safely: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::symlink};

    use datapath_api::{
        ids::{ImageId, StorageDomainId, VolumeId},
        volume::{Allocation, Legality, Role},
    };

    use super::*;
    use crate::storage::volume::NewVolume;

    const MIB: usize = 1 << 20;

    async fn create(storage: &Storage, v: VolumeKey, format: Format, parent: Option<VolumeId>) {
        storage
            .create_volume(&NewVolume {
                volume: v,
                format,
                allocation: Allocation::Sparse,
                capacity: if parent.is_some() { 0 } else { MIB as u64 },
                parent,
                role: Role::Leaf,
                legality: Legality::Legal,
                description: String::new(),
            })
            .await
            .unwrap();
    }

    /// A chain checked and opened; then, before qemu-img starts, the top's header rewritten to
    /// name a host file as its backing and both names swapped for symlinks to that file: the copy
    /// reads the files that were checked, and never the host file.
    #[tokio::test]
    async fn a_chain_changed_after_its_check_is_read_as_it_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let storage = Storage::open(&root).unwrap();
        let secret = dir.path().join("host-secret");
        fs::write(&secret, vec![0x5a; MIB]).unwrap();
        let sd = StorageDomainId::random();
        storage.create_domain(sd, "t").unwrap();
        let key = |image| VolumeKey {
            storage_domain: sd,
            image,
            volume: VolumeId::random(),
        };
        let image = ImageId::random();
        let base = key(image);
        let top = VolumeKey {
            volume: VolumeId::random(),
            ..base
        };
        let dst = key(ImageId::random());
        create(&storage, base, Format::Raw, None).await;
        fs::write(storage.volume_path(&base), vec![0x11; MIB]).unwrap();
        create(&storage, top, Format::Cow, Some(base.volume)).await;
        create(&storage, dst, Format::Raw, None).await;

        let chain = check_chain(&storage, &top, "source.volume").await.unwrap();
        assert_eq!(chain.volumes, vec![top, base]);
        let rebased = std::process::Command::new("qemu-img")
            .args(["rebase", "-u", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&secret)
            .arg(storage.volume_path(&top))
            .status()
            .unwrap();
        assert!(rebased.success());
        for v in [top, base] {
            let name = storage.volume_path(&v);
            let planted = name.with_extension("planted");
            symlink(&secret, &planted).unwrap();
            fs::rename(&planted, &name).unwrap();
        }
        let dst_files = OpenChain::new(vec![Layer {
            file: storage.open_volume(&dst).unwrap(),
            format: Format::Raw,
        }]);
        let convert = qemu::Convert {
            src: &chain.files,
            dst: &dst_files,
            dst_backing: None,
            rate_limit: 0,
            preallocated: false,
            watchdog: None,
        };
        let out = qemu::spawn_convert(&convert)
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let copied = fs::read(storage.volume_path(&dst)).unwrap();
        assert!(copied.iter().all(|b| *b == 0x11), "the host file was read");
        assert_eq!(fs::read(&secret).unwrap(), vec![0x5a; MIB]);
    }
}
