//! Host registrations: `hosts/<host_id>`, bound to the host's session lease so a dead host vanishes
//! after the TTL. A host keeps its registration through [`HostRegistry`], so its rules (a burst of
//! changes is one write, an idle host only reads) are unit-tested on an in-memory registry;
//! [`Coord`] is the etcd one.
use async_trait::async_trait;
use datapath_api::{ids::HostId, pb};
use etcd_client::{GetOptions, PutOptions};
use prost::Message;

use crate::{error::CoordError, Coord, Result};

/// The registered hosts.
#[async_trait]
pub trait HostRegistry: Send + Sync {
    /// Writes (or refreshes) `host_id`'s registration under its session lease `lease_id`.
    async fn register_host(&self, host_id: HostId, host: &pb::Host, lease_id: i64) -> Result<()>;

    /// Every registered host, in id order.
    async fn list_hosts(&self) -> Result<Vec<pb::Host>>;

    /// How many hosts are registered.
    async fn count_hosts(&self) -> Result<i64>;

    /// One host's registration, if it is live.
    async fn get_host(&self, host_id: HostId) -> Result<Option<pb::Host>>;
}

#[async_trait]
impl HostRegistry for Coord {
    async fn register_host(&self, host_id: HostId, host: &pb::Host, lease_id: i64) -> Result<()> {
        Coord::register_host(self, host_id, host, lease_id).await
    }

    async fn list_hosts(&self) -> Result<Vec<pb::Host>> {
        Coord::list_hosts(self).await
    }

    async fn count_hosts(&self) -> Result<i64> {
        Coord::count_hosts(self).await
    }

    async fn get_host(&self, host_id: HostId) -> Result<Option<pb::Host>> {
        Coord::get_host(self, host_id).await
    }
}

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
