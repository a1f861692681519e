//! Scheduler flows (`flows/<operation_id>`) and idempotency keys (`requests/<request_id>`); a flow
//! is created with its disk locks (`disk_locks.rs`, the lock protocol).
//!
//! Invariants:
//! - A flow, its request key and its disk locks are created in one transaction that compares every
//!   lock's revision, so two operations can never both own a disk.
//! - After creation a flow is changed only by compare-and-swap on its mod revision and, for the
//!   scheduler leader's writes, under its leadership guard.
//! - An ended flow and its request key are bound to a retention lease that is never renewed, so etcd
//!   removes them itself.
use datapath_api::{ids::OperationId, pb, volume::DiskKey};
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchStream,
};
use prost::Message;

use crate::{
    disk_locks::{lock_compare, LockChange},
    election::Leadership,
    error::CoordError,
    hosts::decode,
    Coord, Keys, Result,
};

/// A record and the etcd revision that last wrote it (0 when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Its mod revision: the compare-and-swap token.
    pub mod_revision: i64,
}

/// The outcome of starting a flow.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowStart {
    /// Written, at this revision.
    Started(i64),
    /// The request id already names an operation.
    RequestExists(OperationId),
    /// A lock changed since it was read: read again and retry.
    LockChanged,
}

/// One change of one flow.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowChange {
    /// The operation.
    pub operation: OperationId,
    /// The flow after the change; `None` when it was deleted (its retention ended).
    pub flow: Option<pb::Flow>,
    /// The etcd revision of the change.
    pub revision: i64,
}

impl Coord {
    /// Creates a flow with its request key and disk locks, all or nothing.
    pub(crate) async fn start_flow(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        locks: &[LockChange],
    ) -> Result<FlowStart> {
        let keys = self.keys();
        let mut when = vec![Compare::create_revision(keys.flow(op), CompareOp::Equal, 0)];
        let mut then = vec![TxnOp::put(keys.flow(op), flow.encode_to_vec(), None)];
        let mut otherwise = Vec::new();
        if !flow.request_id.is_empty() {
            let key = keys.request(&flow.request_id);
            when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
            then.push(TxnOp::put(key.clone(), op.to_string(), None));
            otherwise.push(TxnOp::get(key, None));
        }
        for change in locks {
            let key = keys.disk_lock(&change.disk);
            when.push(lock_compare(&key, change.expected_revision));
            then.push(TxnOp::put(key, change.lock.encode_to_vec(), None));
        }
        let resp = self
            .client()
            .txn(Txn::new().when(when).and_then(then).or_else(otherwise))
            .await?;
        if resp.succeeded() {
            return Ok(FlowStart::Started(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ));
        }
        for op_resp in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op_resp {
                if let Some(kv) = get.kvs().first() {
                    let text = String::from_utf8_lossy(kv.value());
                    if let Ok(existing) = OperationId::parse("request_id", &text) {
                        return Ok(FlowStart::RequestExists(existing));
                    }
                }
            }
        }
        Ok(FlowStart::LockChanged)
    }

    /// The operation a request id started, if any.
    pub async fn request_operation(&self, request_id: &str) -> Result<Option<OperationId>> {
        let resp = self
            .client()
            .get(self.keys().request(request_id), None)
            .await?;
        Ok(resp.kvs().first().and_then(|kv| {
            OperationId::parse("request_id", &String::from_utf8_lossy(kv.value())).ok()
        }))
    }

    /// One flow.
    pub async fn get_flow(&self, op: OperationId) -> Result<Option<Versioned<pb::Flow>>> {
        let resp = self.client().get(self.keys().flow(op), None).await?;
        resp.kvs()
            .first()
            .map(|kv| {
                Ok(Versioned {
                    value: decode(kv.key(), kv.value())?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    /// Every flow (a record that does not decode is skipped: `quarantine.rs`), and the revision the
    /// listing was read at.
    pub async fn list_flows(&self) -> Result<(Vec<Versioned<pb::Flow>>, i64)> {
        let resp = self
            .client()
            .get(self.keys().flows(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let flows = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                Some(Versioned {
                    value: crate::quarantine::listed("flows", kv)?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect();
        Ok((flows, revision))
    }

    /// Up to `limit` flows in operation-id order strictly after operation id `after`, the id of the
    /// last key read and whether more follow: one bounded range read (see `Coord::range_after`).
    pub async fn list_flows_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<pb::Flow>, Option<String>, bool)> {
        let (resp, last, more) = self.range_after(&self.keys().flows(), after, limit).await?;
        let flows = resp
            .kvs()
            .iter()
            .filter_map(|kv| crate::quarantine::listed("flows", kv))
            .collect();
        Ok((flows, last, more))
    }

    /// Replaces a flow if it is still at `mod_revision` (and, with `leader`, while that leadership
    /// stands). Returns the new revision, or `None` if either changed.
    pub async fn put_flow_if(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        mod_revision: i64,
        leader: Option<&Leadership>,
    ) -> Result<Option<i64>> {
        self.put_flow_txn(op, flow, mod_revision, leader, None, Default::default())
            .await
    }

    /// Writes a flow's final state bound to retention lease `lease` (`retention.rs`), with its
    /// request key, so etcd deletes both when the retention passes; in the same transaction it
    /// takes the flow's name out of the locks of `disks`, so a flow never ends holding a lock and
    /// its end is one etcd write. `Ok(None)` when a compare failed: the flow changed, the
    /// leadership is gone, or a lock changed since it was read (read again on the next call).
    pub async fn finish_flow_releasing(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        mod_revision: i64,
        leader: Option<&Leadership>,
        lease: i64,
        disks: &[DiskKey],
    ) -> Result<Option<i64>> {
        let releases = self.lock_releases(disks, &op.name()).await?;
        self.put_flow_txn(op, flow, mod_revision, leader, Some(lease), releases)
            .await
    }

    async fn put_flow_txn(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        mod_revision: i64,
        leader: Option<&Leadership>,
        lease: Option<i64>,
        (mut when, mut then): (Vec<Compare>, Vec<TxnOp>),
    ) -> Result<Option<i64>> {
        let key = self.keys().flow(op);
        when.push(Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            mod_revision,
        ));
        when.extend(leader.map(Leadership::guard));
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        then.push(TxnOp::put(key, flow.encode_to_vec(), opts.clone()));
        if lease.is_some() && !flow.request_id.is_empty() {
            then.push(TxnOp::put(
                self.keys().request(&flow.request_id),
                op.to_string(),
                opts,
            ));
        }
        let resp = self
            .client()
            .txn(Txn::new().when(when).and_then(then))
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or_default()))
    }

    /// Watches flow changes after `after_revision`: every flow, or just `only`.
    pub async fn watch_flows(
        &self,
        after_revision: i64,
        only: Option<OperationId>,
    ) -> Result<FlowWatch> {
        let mut opts = WatchOptions::new().with_start_revision(after_revision + 1);
        let key = match only {
            Some(op) => self.keys().flow(op),
            None => {
                opts = opts.with_prefix();
                self.keys().flows()
            }
        };
        let stream = self.client().watch(key, Some(opts)).await?;
        Ok(FlowWatch {
            stream,
            keys: self.keys().clone(),
            requested: after_revision + 1,
        })
    }
}

/// A live stream of flow changes.
pub struct FlowWatch {
    stream: WatchStream,
    keys: Keys,
    requested: i64,
}

impl FlowWatch {
    /// The next batch of changes; `None` when etcd closed the watch.
    pub async fn next(&mut self) -> Result<Option<Vec<FlowChange>>> {
        loop {
            let Some(resp) = self.stream.message().await? else {
                return Ok(None);
            };
            if resp.compact_revision() > 0 {
                return Err(CoordError::Compacted {
                    requested: self.requested,
                    compacted: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Ok(None);
            }
            let mut changes = Vec::new();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(operation) = self.keys.parse_flow(kv.key()) else {
                    continue;
                };
                // A put that does not decode is skipped (`quarantine.rs`), as a listing skips it.
                let flow = match event.event_type() {
                    EventType::Put => match crate::quarantine::listed("flows", kv) {
                        Some(flow) => Some(flow),
                        None => continue,
                    },
                    EventType::Delete => None,
                };
                changes.push(FlowChange {
                    operation,
                    flow,
                    revision: kv.mod_revision(),
                });
            }
            if !changes.is_empty() {
                return Ok(Some(changes));
            }
        }
    }
}
