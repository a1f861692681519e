//! Host registrations: `hosts/<host_id>`, bound to the host's session lease so a dead host vanishes
//! after the TTL.
use datapath_api::{ids::HostId, pb};
use etcd_client::{GetOptions, PutOptions};
use prost::Message;

use crate::{error::CoordError, Coord, Result};

impl Coord {
    /// Writes (or refreshes) a host's registration under its session lease.
    pub async fn register_host(
        &self,
        host_id: HostId,
        host: &pb::Host,
        lease_id: i64,
    ) -> Result<()> {
        let opts = PutOptions::new().with_lease(lease_id);
        self.client()
            .put(self.keys().host(host_id), host.encode_to_vec(), Some(opts))
            .await?;
        Ok(())
    }

    /// Every registered (live) host, in id order (a record that does not decode is skipped:
    /// `quarantine.rs`).
    pub async fn list_hosts(&self) -> Result<Vec<pb::Host>> {
        let resp = self
            .client()
            .get(self.keys().hosts(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| crate::quarantine::listed("hosts", kv))
            .collect())
    }

    /// How many hosts are registered (a count-only read: no record crosses the wire).
    pub async fn count_hosts(&self) -> Result<i64> {
        let resp = self
            .client()
            .get(
                self.keys().hosts(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        Ok(resp.count())
    }

    /// One host's registration, if it is live.
    pub async fn get_host(&self, host_id: HostId) -> Result<Option<pb::Host>> {
        let resp = self.client().get(self.keys().host(host_id), None).await?;
        resp.kvs()
            .first()
            .map(|kv| decode(kv.key(), kv.value()))
            .transpose()
    }
}

pub(crate) fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M> {
    M::decode(value).map_err(|source| CoordError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}
