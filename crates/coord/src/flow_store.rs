//! What a flow's runner asks of the store, as one narrow trait: read its record, save it by
//! compare-and-swap under the acting scheduler's leadership, end it (with its locks released and
//! its retention lease) in one write. The scheduler's runners hold a `dyn FlowStore`, so their
//! save-and-merge rules are unit-tested on an in-memory store, and run on etcd through
//! [`EtcdFlows`].
use std::time::Duration;

use async_trait::async_trait;
use datapath_api::{ids::OperationId, pb, volume::DiskKey};

use crate::{
    election::{Elections, Leadership},
    flows::Versioned,
    retention::RetentionLeases,
    Coord, Result,
};

/// A flow record's store, for its runner.
#[async_trait]
pub trait FlowStore: Send + Sync {
    /// The record with its mod revision; `None` when it does not exist.
    async fn get_flow(&self, op: OperationId) -> Result<Option<Versioned<pb::Flow>>>;

    /// Writes `flow` if the record is still at `mod_revision` and `leader` still leads; the new
    /// revision, or `None` when a compare failed.
    async fn put_flow_if(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        mod_revision: i64,
        leader: &Leadership,
    ) -> Result<Option<i64>>;

    /// Writes the final `flow` as [`FlowStore::put_flow_if`] does, bound to a retention lease, and
    /// takes the flow out of the locks of `disks` in the same write; `None` when a compare failed
    /// (the record, the leadership or a lock changed).
    async fn end_flow_if(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        mod_revision: i64,
        leader: &Leadership,
        disks: &[DiskKey],
    ) -> Result<Option<i64>>;

    /// Whether `leader` still leads.
    async fn still_leads(&self, leader: &Leadership) -> Result<bool>;
}

/// Flow records in etcd, ended ones bound to shared retention leases (`retention.rs`).
pub struct EtcdFlows {
    coord: Coord,
    retention: RetentionLeases,
}

impl EtcdFlows {
    /// Ended flows are kept `retention`.
    pub fn new(coord: Coord, retention: Duration) -> Self {
        Self {
            retention: RetentionLeases::new(coord.clone(), retention),
            coord,
        }
    }
}

#[async_trait]
impl FlowStore for EtcdFlows {
    async fn get_flow(&self, op: OperationId) -> Result<Option<Versioned<pb::Flow>>> {
        self.coord.get_flow(op).await
    }

    async fn put_flow_if(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        mod_revision: i64,
        leader: &Leadership,
    ) -> Result<Option<i64>> {
        self.coord
            .put_flow_if(op, flow, mod_revision, Some(leader))
            .await
    }

    async fn end_flow_if(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        mod_revision: i64,
        leader: &Leadership,
        disks: &[DiskKey],
    ) -> Result<Option<i64>> {
        let lease = self.retention.lease().await?;
        let written = self
            .coord
            .finish_flow_releasing(op, flow, mod_revision, Some(leader), lease, disks)
            .await;
        if written.is_err() {
            // It may have been revoked: the next end is granted a fresh one.
            self.retention.forget(lease).await;
        }
        written
    }

    async fn still_leads(&self, leader: &Leadership) -> Result<bool> {
        self.coord.still_leads(leader).await
    }
}
