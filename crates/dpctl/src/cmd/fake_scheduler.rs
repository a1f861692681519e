//! A scripted in-process SchedulerService for the CLI's tests (the real scheduler is tested in its own
//! crate): each `WatchOperation` call plays the next scripted stream, list calls answer pages by token,
//! and the requests it saw are recorded so tests can check what dpctl sent.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use datapath_api::pb::{
    self,
    scheduler_service_server::{SchedulerService, SchedulerServiceServer},
};
use tokio::net::TcpListener;
use tonic::{transport::server::TcpIncoming, Request, Response, Status};

use super::{Context, GlobalArgs};
use crate::output::Output;

type Stream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::WatchOperationResponse, Status>> + Send>>;

/// One scripted watch stream: operations, or an error that breaks the stream there.
pub type Script = Vec<Result<pb::Operation, Status>>;

/// The fake and what it saw.
#[derive(Default, Clone)]
pub struct FakeScheduler {
    /// One entry per `WatchOperation` call; calls past the end answer UNAVAILABLE.
    pub watches: Arc<Mutex<Vec<Script>>>,
    /// The names watched, one per call.
    pub watched: Arc<Mutex<Vec<String>>>,
    /// What MoveDisk and CloneDisk answer.
    pub started: Arc<Mutex<pb::Operation>>,
    /// The MoveDisk requests.
    pub moves: Arc<Mutex<Vec<pb::MoveDiskRequest>>>,
    /// Pages of ListOperations: page `i` answers token `i` ("" is 0) and points to `i + 1`.
    pub pages: Arc<Mutex<Vec<Vec<pb::Operation>>>>,
    /// The ListOperations requests.
    pub lists: Arc<Mutex<Vec<pb::ListOperationsRequest>>>,
}

/// An operation named `name` at `progress`, done or not, failed with `reason` when given.
pub fn operation(name: &str, progress: u32, done: bool, reason: Option<&str>) -> pb::Operation {
    pb::Operation {
        name: name.into(),
        metadata: Some(pb::OperationMetadata {
            kind: pb::OperationKind::MoveDisk as i32,
            step: pb::OperationStep::CopyData as i32,
            progress,
            ..Default::default()
        }),
        done,
        result: match reason {
            Some(reason) => Some(pb::operation::Result::Error(pb::OperationError {
                code: 9,
                message: "every host failed the copy".into(),
                reason: reason.into(),
            })),
            None if done => Some(pb::operation::Result::Response(pb::DiskRef::default())),
            None => None,
        },
    }
}

impl FakeScheduler {
    /// Serves it on a free port and answers a context whose `--scheduler` points at it.
    pub async fn serve(&self, output: Output) -> Context {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SchedulerServiceServer::new(self.clone()))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        Context::new(GlobalArgs {
            job_tracker: "http://127.0.0.1:1".into(),
            scheduler: url,
            host: None,
            output,
            tls: datapath_tls::TlsOptions::insecure(),
        })
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("fake"))
}

#[tonic::async_trait]
impl SchedulerService for FakeScheduler {
    type WatchOperationStream = Stream;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Stream>, Status> {
        self.watched.lock().unwrap().push(request.into_inner().name);
        let mut watches = self.watches.lock().unwrap();
        if watches.is_empty() {
            return Err(Status::unavailable("script exhausted"));
        }
        let items = watches.remove(0).into_iter().map(|item| {
            item.map(|op| pb::WatchOperationResponse {
                operation: Some(op),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn move_disk(
        &self,
        request: Request<pb::MoveDiskRequest>,
    ) -> Result<Response<pb::MoveDiskResponse>, Status> {
        self.moves.lock().unwrap().push(request.into_inner());
        let operation = Some(self.started.lock().unwrap().clone());
        Ok(Response::new(pb::MoveDiskResponse { operation }))
    }

    async fn clone_disk(
        &self,
        _: Request<pb::CloneDiskRequest>,
    ) -> Result<Response<pb::CloneDiskResponse>, Status> {
        let operation = Some(self.started.lock().unwrap().clone());
        Ok(Response::new(pb::CloneDiskResponse { operation }))
    }

    async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let request = request.into_inner();
        let index: usize = match request.page_token.as_str() {
            "" => 0,
            token => token
                .parse()
                .map_err(|_| Status::invalid_argument("token"))?,
        };
        self.lists.lock().unwrap().push(request);
        let pages = self.pages.lock().unwrap();
        let operations = pages.get(index).cloned().unwrap_or_default();
        let next_page_token = if index + 1 < pages.len() {
            (index + 1).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListOperationsResponse {
            operations,
            next_page_token,
        }))
    }

    async fn get_operation(
        &self,
        _: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        unimplemented()
    }
    async fn cancel_operation(
        &self,
        _: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::CancelOperationResponse>, Status> {
        unimplemented()
    }
    async fn get_disk_status(
        &self,
        _: Request<pb::GetDiskStatusRequest>,
    ) -> Result<Response<pb::GetDiskStatusResponse>, Status> {
        unimplemented()
    }
    async fn list_hosts(
        &self,
        _: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        unimplemented()
    }
    async fn get_config(
        &self,
        _: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        unimplemented()
    }
    async fn set_config(
        &self,
        _: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        unimplemented()
    }
}
