//! Files on shared storage, reached so that nothing planted there can redirect them. Any host that
//! mounts the storage can write it, so a volume's name may have been replaced by a symlink (to
//! `/dev/sda`, to a host's `/etc/shadow`), an image directory by a symlink to another domain, a
//! metadata file by a FIFO. Every path under the storage root is therefore resolved with
//! openat2(2) `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` from a descriptor of
//! the root (a symlink at any step fails with `ELOOP`, an escape with `EXDEV`), volume and
//! metadata files must be regular files, and names are created, renamed and linked relative to a
//! directory descriptor opened the same way. The root itself is configuration, trusted.
//!
//! qemu-img never opens a file by name: it is handed descriptors this module opened
//! (`image_files.rs`).
use std::{
    ffi::OsStr,
    fs,
    io::{self, Read as _, Write as _},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
};

use rustix::fs::{
    linkat, mkdirat, openat2, renameat, unlinkat, AtFlags, Mode, OFlags, ResolveFlags,
};

use super::Storage;

/// Resolution rules of every open below the storage root.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A file reached safely but not a regular file (a FIFO, a device, a directory).
#[derive(Debug, thiserror::Error)]
#[error("not a regular file")]
pub struct NotRegular;

/// A name that was replaced by another file while it was being linked.
#[derive(Debug, thiserror::Error)]
#[error("the file was replaced while it was linked")]
pub struct Replaced;

/// Whether `e` says a path was refused as unsafe: a symlink on the way (`ELOOP`; `ENOTDIR` where a
/// directory was planted as a symlink), an escape from the root, or not a regular file.
pub fn is_unsafe(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR)
    ) || e
        .get_ref()
        .is_some_and(|inner| inner.is::<NotRegular>() || inner.is::<Replaced>())
}

impl Storage {
    /// `path` relative to the root; paths outside it are refused.
    fn below_root<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        path.strip_prefix(&self.root)
            .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))
    }

    /// Opens `path` (under the root) with `flags`, no symlink at any step below the root.
    fn open_beneath(&self, path: &Path, flags: OFlags, mode: Mode) -> io::Result<fs::File> {
        let relative = self.below_root(path)?;
        let root = fs::File::open(&self.root)?;
        let relative = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let fd = openat2(
            &root,
            relative,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            mode,
            RESOLVE,
        )?;
        Ok(fs::File::from(fd))
    }

    /// Checks that `path` is a regular file reached without a symlink; its metadata.
    pub fn regular(&self, path: &Path) -> io::Result<fs::Metadata> {
        let meta = self
            .open_beneath(path, OFlags::PATH, Mode::empty())?
            .metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegular));
        }
        Ok(meta)
    }

    /// The text of the regular file `path`. Opened non-blocking, so a FIFO planted in its place
    /// is refused instead of hanging the reader.
    pub fn read_text(&self, path: &Path) -> io::Result<String> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK;
        let mut file = self.open_beneath(path, flags, Mode::empty())?;
        if !file.metadata()?.file_type().is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegular));
        }
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(text)
    }

    /// The directory `path`, opened for `*at` calls and fsync.
    fn dir(&self, path: &Path) -> io::Result<fs::File> {
        self.open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    }

    /// Makes the directory `path`'s entries durable.
    pub fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.dir(path)?.sync_all()
    }

    /// Replaces `path` with `contents` atomically and durably.
    pub fn write_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        let tmp = write_temp(&dir, name, contents)?;
        let renamed = renameat(&dir, tmp.as_str(), &dir, name);
        if renamed.is_err() {
            let _ = unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        }
        renamed?;
        dir.sync_all()
    }

    /// Creates `path` holding `contents`, failing with `AlreadyExists` if the name is taken: the
    /// file appears whole (a hard link to a durable temporary file), so no reader ever sees it
    /// empty or half written.
    pub fn create_exclusive(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        let tmp = write_temp(&dir, name, contents)?;
        let linked = linkat(&dir, tmp.as_str(), &dir, name, AtFlags::empty());
        unlinkat(&dir, tmp.as_str(), AtFlags::empty())?;
        linked?;
        dir.sync_all()
    }

    /// Links the regular file `from` as `to` in the same directory (an existing `to` fails), and
    /// opens it through the new name: the inode that `from` named when it was checked, or an error.
    pub fn link_regular(&self, from: &Path, to: &Path) -> io::Result<fs::File> {
        let source = self.open_regular(from)?;
        let (dir, from_name) = self.parent_of(from)?;
        let (_, to_name) = self.parent_of(to)?;
        linkat(&dir, from_name, &dir, to_name, AtFlags::empty())?;
        // Checked again through the new name: `from` may have been swapped before the link.
        let linked = self.open_regular(to)?;
        let (a, b) = (source.metadata()?, linked.metadata()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, Replaced));
        }
        Ok(linked)
    }

    /// Renames `from` over `to`, both in one directory.
    pub fn rename_within(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (dir, from_name) = self.parent_of(from)?;
        let (_, to_name) = self.parent_of(to)?;
        Ok(renameat(&dir, from_name, &dir, to_name)?)
    }

    /// Creates `path` as an empty regular file, `AlreadyExists` if anything has that name; the
    /// file, open for writing.
    pub fn create_empty(&self, path: &Path) -> io::Result<fs::File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        self.open_beneath(path, flags, Mode::from_raw_mode(0o644))
    }

    /// Opens the regular file `path` for reading, reached without a symlink. It is first opened
    /// `O_PATH` and checked, then re-opened through that descriptor: a FIFO or a device planted
    /// there is never opened, and the file returned is the inode checked.
    pub fn open_regular(&self, path: &Path) -> io::Result<fs::File> {
        let checked = self.open_beneath(path, OFlags::PATH, Mode::empty())?;
        if !checked.metadata()?.file_type().is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegular));
        }
        fs::File::open(crate::image_files::fd_path(&checked))
    }

    /// Creates the directory `path` if it is missing (its parent must exist).
    pub fn ensure_dir(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        match mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => {}
            Err(e) => return Err(e.into()),
        }
        self.dir(path).map(|_| ())
    }

    /// Removes the name `path` (never what it may point at).
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        Ok(unlinkat(&dir, name, AtFlags::empty())?)
    }

    fn parent_of<'a>(&self, path: &'a Path) -> io::Result<(fs::File, &'a OsStr)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let dir = self.dir(path.parent().unwrap_or(Path::new("")))?;
        Ok((dir, name))
    }
}

/// A durable temporary file beside `name` in `dir`, created exclusively under a random name (no
/// other writer, and nothing planted in advance, can own it); returns its name.
fn write_temp(dir: &fs::File, name: &OsStr, contents: &[u8]) -> io::Result<String> {
    let tmp = format!(
        ".{}.tmp-{}",
        String::from_utf8_lossy(name.as_bytes()),
        uuid::Uuid::new_v4()
    );
    let fd = openat2(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
        RESOLVE,
    )?;
    let mut file = fs::File::from(fd);
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    written.map(|()| tmp)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("root")).unwrap();
        (dir, storage)
    }

    #[test]
    fn a_symlink_at_any_step_or_an_escape_is_refused() {
        let (dir, storage) = storage();
        let root = storage.root().to_path_buf();
        let outside = dir.path().join("secret");
        fs::write(&outside, "secret").unwrap();
        fs::create_dir_all(root.join("sd/images/real")).unwrap();
        fs::write(root.join("sd/images/real/vol"), "data").unwrap();
        symlink(&outside, root.join("sd/images/real/link")).unwrap();
        symlink(root.join("sd/images/real"), root.join("sd/images/img")).unwrap();
        symlink("real/vol", root.join("sd/images/relative")).unwrap();

        assert_eq!(
            storage.read_text(&root.join("sd/images/real/vol")).unwrap(),
            "data"
        );
        for path in [
            root.join("sd/images/real/link"),
            root.join("sd/images/img/vol"),
            root.join("sd/images/relative"),
            root.join("sd/images/real/../../../../secret"),
            outside.clone(),
        ] {
            let e = storage.read_text(&path).unwrap_err();
            assert!(is_unsafe(&e), "{path:?}: {e}");
            let e = storage.regular(&path).unwrap_err();
            assert!(is_unsafe(&e), "{path:?}: {e}");
        }
        // Nothing is written through a planted name.
        let e = storage
            .write_atomic(&root.join("sd/images/img/vol.meta"), b"x")
            .unwrap_err();
        assert!(is_unsafe(&e), "{e}");
        assert_eq!(fs::read_to_string(&outside).unwrap(), "secret");
    }

    #[test]
    fn only_regular_files_are_read() {
        let (_dir, storage) = storage();
        let root = storage.root().to_path_buf();
        fs::create_dir_all(root.join("d/sub")).unwrap();
        let dir = fs::File::open(root.join("d")).unwrap();
        rustix::fs::mknodat(&dir, "fifo", rustix::fs::FileType::Fifo, Mode::RWXU, 0).unwrap();
        for path in [root.join("d/fifo"), root.join("d/sub")] {
            let e = storage.read_text(&path).unwrap_err();
            assert!(is_unsafe(&e), "{path:?}: {e}");
        }
    }

    #[test]
    fn writes_are_atomic_and_exclusive_and_leave_no_temporary() {
        let (_dir, storage) = storage();
        let root = storage.root().to_path_buf();
        fs::create_dir_all(root.join("d")).unwrap();
        let path = root.join("d/v.meta");
        storage.create_exclusive(&path, b"FORMAT=RAW\n").unwrap();
        let again = storage
            .create_exclusive(&path, b"FORMAT=COW\n")
            .unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        storage.write_atomic(&path, b"FORMAT=COW\n").unwrap();
        assert_eq!(storage.read_text(&path).unwrap(), "FORMAT=COW\n");
        // A name planted where a temporary file could go changes nothing: temporaries are random.
        symlink("/etc/passwd", root.join("d/.v.meta.tmp")).unwrap();
        storage.write_atomic(&path, b"FORMAT=RAW\n").unwrap();
        let mut names: Vec<_> = fs::read_dir(root.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".v.meta.tmp", "v.meta"]);
    }

    #[test]
    fn a_link_names_the_regular_file_it_was_made_from() {
        let (dir, storage) = storage();
        let root = storage.root().to_path_buf();
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/vol"), "data").unwrap();
        storage
            .link_regular(&root.join("d/vol"), &root.join("d/vol.job-1"))
            .unwrap();
        assert_eq!(
            storage.read_text(&root.join("d/vol.job-1")).unwrap(),
            "data"
        );
        symlink(dir.path(), root.join("d/planted")).unwrap();
        let e = storage
            .link_regular(&root.join("d/planted"), &root.join("d/vol.job-2"))
            .unwrap_err();
        assert!(is_unsafe(&e), "{e}");
        assert!(!root.join("d/vol.job-2").exists());
    }
}
