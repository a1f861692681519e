//! Host registrations: `hosts/<host_id>`, bound to the host's session lease so a dead host vanishes
//! after the TTL. A host keeps its registration through [`HostRegistry`], so its rules (a burst of
//! changes is one write, an idle host neither reads nor writes, a deleted record is written again
//! at once) are unit-tested on an in-memory registry; [`Coord`] is the etcd one.
use async_trait::async_trait;
use datapath_api::{ids::HostId, pb};
use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions, WatchResponse};
use futures::{stream::BoxStream, StreamExt};
use prost::Message;

use crate::{error::CoordError, Coord, Result};

/// The registered hosts.
#[async_trait]
pub trait HostRegistry: Send + Sync {
    /// Writes (or refreshes) `host_id`'s registration under its session lease `lease_id`; the
    /// revision of the write.
    async fn register_host(&self, host_id: HostId, host: &pb::Host, lease_id: i64) -> Result<i64>;

    /// Every change of `host_id`'s registration after `revision`, in order: what lets a host keep
    /// its record without reading it back (one idle watch instead of a read every 30 s per host).
    /// The stream ends after an error or a [`RegistrationChange::Compacted`], or when the watch
    /// does.
    async fn watch_registration(
        &self,
        host_id: HostId,
        revision: i64,
    ) -> Result<RegistrationChanges>;

    /// Every registered host, in id order.
    async fn list_hosts(&self) -> Result<Vec<pb::Host>>;

    /// How many hosts are registered.
    async fn count_hosts(&self) -> Result<i64>;

    /// One host's registration, if it is live.
    async fn get_host(&self, host_id: HostId) -> Result<Option<pb::Host>>;
}

#[async_trait]
impl HostRegistry for Coord {
    async fn register_host(&self, host_id: HostId, host: &pb::Host, lease_id: i64) -> Result<i64> {
        Coord::register_host(self, host_id, host, lease_id).await
    }

    async fn watch_registration(
        &self,
        host_id: HostId,
        revision: i64,
    ) -> Result<RegistrationChanges> {
        let from = WatchOptions::new().with_start_revision(revision + 1);
        let stream = self
            .client()
            .watch(self.keys().host(host_id), Some(from))
            .await?;
        Ok(stream
            .map(|resp| futures::stream::iter(registration_changes(resp)))
            .flatten()
            .scan(false, |ended, change| {
                let item = (!*ended).then_some(change);
                if let Some(c) = &item {
                    *ended = matches!(c, Ok(RegistrationChange::Compacted { .. }) | Err(_));
                }
                futures::future::ready(item)
            })
            .boxed())
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
    /// Writes (or refreshes) a host's registration under its session lease; the write's revision.
    pub async fn register_host(
        &self,
        host_id: HostId,
        host: &pb::Host,
        lease_id: i64,
    ) -> Result<i64> {
        let opts = PutOptions::new().with_lease(lease_id);
        let resp = self
            .client()
            .put(self.keys().host(host_id), host.encode_to_vec(), Some(opts))
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
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

/// One change of a host's registration, as its watch reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrationChange {
    /// Written (by anyone).
    Put {
        /// The write's revision.
        revision: i64,
        /// The record written; `None` when it does not decode.
        host: Option<pb::Host>,
    },
    /// Deleted (by hand, or its lease expired).
    Deleted {
        /// The deletion's revision.
        revision: i64,
    },
    /// The history after the watch's start is compacted: what changed up to `revision` is unknown
    /// (read the record), and a new watch may start after it.
    Compacted {
        /// The newest revision compacted away.
        revision: i64,
    },
}

/// A registration's changes: [`HostRegistry::watch_registration`].
pub type RegistrationChanges = BoxStream<'static, Result<RegistrationChange>>;

/// What one watch response says of a registration: its changes, or the watch's end.
fn registration_changes(
    resp: std::result::Result<WatchResponse, etcd_client::Error>,
) -> Vec<Result<RegistrationChange>> {
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => return vec![Err(e.into())],
    };
    if resp.compact_revision() > 0 {
        return vec![Ok(RegistrationChange::Compacted {
            revision: resp.compact_revision() - 1,
        })];
    }
    if resp.canceled() {
        return vec![Err(CoordError::WatchCanceled(format!(
            "the watch of a host's registration ended: {}",
            resp.cancel_reason()
        )))];
    }
    resp.events()
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            let revision = kv.mod_revision();
            Some(Ok(match e.event_type() {
                EventType::Put => RegistrationChange::Put {
                    revision,
                    host: decode(kv.key(), kv.value()).ok(),
                },
                EventType::Delete => RegistrationChange::Deleted { revision },
            }))
        })
        .collect()
}

pub(crate) fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M> {
    M::decode(value).map_err(|source| CoordError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}
