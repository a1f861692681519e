//! The gRPC face of the scheduler: converts requests, calls the parts, maps errors once (`error.rs`).
pub mod operations;
pub mod start;
pub mod status;

use std::sync::Arc;

use datapath_api::pb::{self, scheduler_service_server::SchedulerService};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::engine::Engine;

/// The SchedulerService implementation.
pub struct SchedulerApi {
    engine: Arc<Engine>,
    streams: datapath_server::streams::StreamLimits,
}

impl SchedulerApi {
    /// Serves `engine`, with at most `streams` WatchOperation streams open.
    pub fn new(engine: Arc<Engine>, streams: datapath_server::streams::StreamLimits) -> Self {
        Self { engine, streams }
    }
}

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    async fn move_disk(
        &self,
        req: Request<pb::MoveDiskRequest>,
    ) -> Result<Response<pb::MoveDiskResponse>, Status> {
        let operation = start::move_disk(&self.engine, req.get_ref()).await?;
        info!(op = %operation.name, "move requested");
        Ok(Response::new(pb::MoveDiskResponse {
            operation: Some(operation),
        }))
    }

    async fn clone_disk(
        &self,
        req: Request<pb::CloneDiskRequest>,
    ) -> Result<Response<pb::CloneDiskResponse>, Status> {
        let operation = start::clone_disk(&self.engine, req.get_ref()).await?;
        info!(op = %operation.name, "clone requested");
        Ok(Response::new(pb::CloneDiskResponse {
            operation: Some(operation),
        }))
    }

    async fn get_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        operations::require_name(&req.get_ref().name)?;
        let operation = operations::get(&self.engine, &req.get_ref().name).await?;
        Ok(Response::new(pb::GetOperationResponse {
            operation: Some(operation),
        }))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        Ok(Response::new(
            operations::list(&self.engine, req.get_ref()).await?,
        ))
    }

    type WatchOperationStream = operations::OperationStream;

    async fn watch_operation(
        &self,
        req: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        operations::require_name(&req.get_ref().name)?;
        let permit = self.streams.acquire(&req)?;
        Ok(Response::new(
            operations::watch(&self.engine, &req.get_ref().name, permit).await?,
        ))
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::CancelOperationResponse>, Status> {
        operations::require_name(&req.get_ref().name)?;
        let operation = operations::cancel(&self.engine, &req.get_ref().name).await?;
        info!(op = %operation.name, "cancel requested");
        Ok(Response::new(pb::CancelOperationResponse {
            operation: Some(operation),
        }))
    }

    async fn get_disk_status(
        &self,
        req: Request<pb::GetDiskStatusRequest>,
    ) -> Result<Response<pb::GetDiskStatusResponse>, Status> {
        Ok(Response::new(
            status::disk_status(&self.engine, req.get_ref()).await?,
        ))
    }

    async fn list_hosts(
        &self,
        _req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        Ok(Response::new(status::hosts(&self.engine).await?))
    }

    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        Ok(Response::new(
            status::get_config(&self.engine, &req.get_ref().key).await?,
        ))
    }

    async fn set_config(
        &self,
        req: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        let resp = status::set_config(&self.engine, req.get_ref()).await?;
        info!(key = %resp.key, value = %resp.value, "setting changed");
        Ok(Response::new(resp))
    }
}
