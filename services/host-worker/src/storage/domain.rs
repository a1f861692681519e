//! Storage domains: a directory with `dom_md/metadata` and `images/`.
use std::{collections::BTreeMap, fs};

use datapath_api::{ids::StorageDomainId, pb};

use super::Storage;
use crate::error::Error;

impl Storage {
    /// Creates a storage domain; `DomainExists` if its directory is there.
    pub fn create_domain(
        &self,
        sd: StorageDomainId,
        name: &str,
    ) -> Result<pb::StorageDomain, Error> {
        let dir = self.domain_dir(sd);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::DomainExists(sd))
            }
            Err(e) => return Err(Error::io("create storage domain", &dir, e)),
        }
        let md = dir.join("dom_md");
        fs::create_dir_all(&md).map_err(|e| Error::io("create", &md, e))?;
        let images = self.images_dir(sd);
        fs::create_dir_all(&images).map_err(|e| Error::io("create", &images, e))?;
        let created = datapath_api::time::now();
        let text = format!(
            "SDUUID={sd}\nDESCRIPTION={}\nVERSION=1\nCTIME={}\n",
            name.replace(['\n', '\r'], " "),
            created.seconds
        );
        let meta = md.join("metadata");
        self.write_atomic(&meta, text.as_bytes())
            .map_err(|e| Error::io("write", &meta, e))?;
        self.sync_dir(&self.root)
            .map_err(|e| Error::io("sync", &self.root, e))?;
        Ok(pb::StorageDomain {
            storage_domain_id: sd.to_string(),
            name: name.to_string(),
            created_at: Some(created),
        })
    }

    /// The domain's record; `DomainNotFound` naming `field` when it is not under the root.
    pub fn domain(&self, sd: StorageDomainId, field: &str) -> Result<pb::StorageDomain, Error> {
        let path = self.domain_dir(sd).join("dom_md").join("metadata");
        let text = self.read_text(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::DomainNotFound {
                sd,
                field: field.to_string(),
            },
            _ => Error::io("read", &path, e),
        })?;
        let map: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        Ok(pb::StorageDomain {
            storage_domain_id: sd.to_string(),
            name: map.get("DESCRIPTION").copied().unwrap_or("").to_string(),
            created_at: map
                .get("CTIME")
                .and_then(|c| c.parse().ok())
                .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        })
    }

    /// Every storage domain under the root, in id order.
    pub fn domains(&self) -> Result<Vec<pb::StorageDomain>, Error> {
        let entries = fs::read_dir(&self.root).map_err(|e| Error::io("read", &self.root, e))?;
        let mut ids: Vec<StorageDomainId> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| StorageDomainId::parse("sd", e.file_name().to_str()?).ok())
            .collect();
        ids.sort();
        Ok(ids
            .into_iter()
            .filter_map(|sd| self.domain(sd, "storage_domain_id").ok())
            .collect())
    }
}
