//! The host id, persisted in the state directory so a restarted host-worker is the same host (its
//! jobs, its leases' owner) and not a new one.
use std::{fs, path::Path};

use anyhow::{bail, Context as _};
use datapath_api::ids::HostId;

/// The id in `state_dir/host-id`; created on first start (from `wanted` when given). A `wanted` id
/// that differs from the persisted one is refused: a host does not change identity silently.
pub fn load_or_create(state_dir: &Path, wanted: Option<HostId>) -> anyhow::Result<HostId> {
    fs::create_dir_all(state_dir).with_context(|| format!("create {}", state_dir.display()))?;
    let path = state_dir.join("host-id");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = HostId::parse("host-id", text.trim())
                .with_context(|| format!("parse {}", path.display()))?;
            if let Some(w) = wanted.filter(|w| *w != id) {
                bail!(
                    "--host-id {w} differs from the persisted id {id} in {}",
                    path.display()
                );
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = wanted.unwrap_or_else(HostId::random);
            crate::storage::write_atomic(&path, format!("{id}\n").as_bytes())
                .with_context(|| format!("write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_refuses_a_different_id() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path(), None).unwrap();
        assert_eq!(load_or_create(dir.path(), None).unwrap(), id);
        assert_eq!(load_or_create(dir.path(), Some(id)).unwrap(), id);
        assert!(load_or_create(dir.path(), Some(HostId::random())).is_err());
    }
}
