//! How qemu-img is pointed at volume files: never by name. Any host that mounts the shared storage
//! can swap a checked name for a symlink in the instant between the check and qemu-img's open, and
//! a qcow2 header names its backing file, which qemu-img would open by that name. So the worker opens
//! every file itself (beneath the root, no symlink, a regular file: `storage/beneath.rs`), keeps the
//! descriptors, and hands qemu-img a `json:` image whose every node is `/proc/self/fd/<n>` of a
//! descriptor the child inherits — qemu re-opens through that magic link the very inode that was
//! checked — with each layer's backing given explicitly (and `null` below the base), so the backing
//! reference written in a header is never followed.
use std::{
    fs::File,
    os::fd::{AsRawFd as _, RawFd},
};

use datapath_api::volume::Format;
use serde_json::{json, Value};

/// One opened layer of an image: its data file and the format its metadata records.
#[derive(Debug)]
pub struct Layer {
    /// The data file, opened by the worker.
    pub file: File,
    /// The recorded format (never probed).
    pub format: Format,
}

/// A volume's data file and its backing chain, top first, every file opened by the worker.
#[derive(Debug)]
pub struct OpenChain {
    layers: Vec<Layer>,
}

impl OpenChain {
    /// A chain of `layers`, top first; the last is the base. At least one layer.
    pub fn new(layers: Vec<Layer>) -> Self {
        assert!(!layers.is_empty(), "a chain has a top layer");
        Self { layers }
    }

    /// The top layer's file.
    pub fn top(&self) -> &File {
        &self.layers[0].file
    }

    /// The top layer's format.
    pub fn format(&self) -> Format {
        self.layers[0].format
    }

    /// The layers, top first.
    pub fn into_layers(self) -> Vec<Layer> {
        self.layers
    }

    /// The `json:` image qemu-img opens: the top, its backing, and so on, each by descriptor.
    pub fn spec(&self) -> String {
        format!("json:{}", node(&self.layers))
    }

    /// What qemu-img's messages may call this image: its `json:` image, then each descriptor's name.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.spec())
            .chain(self.layers.iter().map(|l| fd_path(&l.file)))
            .collect()
    }

    /// The format of the top's backing file, if it has one.
    pub fn backing_format(&self) -> Option<Format> {
        self.layers.get(1).map(|l| l.format)
    }

    /// The descriptors the child must inherit.
    pub fn fds(&self) -> Vec<RawFd> {
        self.layers.iter().map(|l| l.file.as_raw_fd()).collect()
    }
}

/// `/proc/self/fd/<n>` of `file`: the name under which a child that inherited it re-opens it.
pub fn fd_path(file: &File) -> String {
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

/// The `json:` image of a single file in `format`, its backing not given (for `qemu-img info`,
/// which never opens a backing file, and `qemu-img create`).
pub fn single(file: &File, format: Format) -> String {
    format!("json:{}", leaf(file, format))
}

fn leaf(file: &File, format: Format) -> Value {
    json!({
        "driver": format.qemu_name(),
        "file": {"driver": "file", "filename": fd_path(file)},
    })
}

fn node(layers: &[Layer]) -> Value {
    let Some((top, below)) = layers.split_first() else {
        return Value::Null;
    };
    let mut value = leaf(&top.file, top.format);
    // Only a COW format has a backing; below the base it is `null`, so no header is followed.
    if top.format == Format::Cow {
        value["backing"] = node(below);
    }
    value
}

/// Lets the child of `cmd` inherit `fds` under the same numbers: their close-on-exec flag is
/// cleared in the child only (after the fork), so no other process started meanwhile gets them.
#[allow(unsafe_code)]
pub fn inherit(cmd: &mut std::process::Command, fds: Vec<RawFd>) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // fcntl(2) on descriptors the parent keeps open until the child has been spawned.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(format: Format) -> Layer {
        Layer {
            file: tempfile::tempfile().unwrap(),
            format,
        }
    }

    #[test]
    fn every_layer_is_named_by_descriptor_and_the_base_has_no_backing() {
        let chain = OpenChain::new(vec![
            layer(Format::Cow),
            layer(Format::Cow),
            layer(Format::Raw),
        ]);
        let spec = chain.spec();
        let value: Value = serde_json::from_str(spec.strip_prefix("json:").unwrap()).unwrap();
        let fds = chain.fds();
        assert_eq!(
            value["file"]["filename"],
            format!("/proc/self/fd/{}", fds[0])
        );
        assert_eq!(value["driver"], "qcow2");
        assert_eq!(
            value["backing"]["backing"]["file"]["filename"],
            format!("/proc/self/fd/{}", fds[2])
        );
        assert_eq!(value["backing"]["backing"]["driver"], "raw");
        assert!(value["backing"]["backing"].get("backing").is_none());
        let base_cow = OpenChain::new(vec![layer(Format::Cow)]);
        let value: Value =
            serde_json::from_str(base_cow.spec().strip_prefix("json:").unwrap()).unwrap();
        assert!(value["backing"].is_null() && value.get("backing").is_some());
    }
}
