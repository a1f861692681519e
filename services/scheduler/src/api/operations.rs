//! Reading and cancelling operations. Every replica serves these from etcd; a cancel only sets
//! `cancel_requested` (by compare-and-swap) and the acting scheduler rolls the flow back.
use std::pin::Pin;

use datapath_api::{error::FieldViolation, ids::OperationId, page::PageRequest, pb};
use futures::Stream;
use tonic::Status;

use crate::{engine::Engine, error::Error, flow::state::meta};

/// The stream WatchOperation answers with.
pub type OperationStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchOperationResponse, Status>> + Send>>;

fn parse(name: &str) -> Result<OperationId, Error> {
    Ok(OperationId::parse_name("name", name)?)
}

/// GetOperation.
pub async fn get(engine: &Engine, name: &str) -> Result<pb::Operation, Error> {
    let op = parse(name)?;
    let flow = engine
        .coord
        .get_flow(op)
        .await?
        .ok_or(Error::OperationNotFound(op))?;
    Ok(flow.value.operation.unwrap_or_default())
}

/// ListOperations, in operation-id order: the order the operations were started in, since their ids
/// are time-ordered, read from etcd in bounded chunks ([`PageRequest::gather`]).
pub async fn list(
    engine: &Engine,
    req: &pb::ListOperationsRequest,
) -> Result<pb::ListOperationsResponse, Error> {
    let page = PageRequest::parse(req.page_size, &req.page_token)?;
    if !req.image_id.is_empty() {
        datapath_api::ids::ImageId::parse("image_id", &req.image_id)?;
    }
    let wanted = |f: &pb::Flow| {
        let on_image = req.image_id.is_empty()
            || meta(f).disk.as_ref().map(|d| &d.image_id) == Some(&req.image_id)
            || f.destination.as_ref().map(|d| &d.image_id) == Some(&req.image_id);
        let Some(op) = f.operation.as_ref() else {
            return false;
        };
        on_image && req.done.is_none_or(|d| op.done == d)
    };
    let coord = &engine.coord;
    let matched: Vec<pb::Operation> = page
        .gather(
            |after, limit| async move { coord.list_flows_after(after.as_deref(), limit).await },
            wanted,
        )
        .await?
        .into_iter()
        .filter_map(|f| f.operation)
        .collect();
    let (operations, next_page_token) = page.paginate(matched, |o| {
        o.name
            .strip_prefix(OperationId::NAME_PREFIX)
            .unwrap_or(&o.name)
            .to_string()
    });
    Ok(pb::ListOperationsResponse {
        operations,
        next_page_token,
    })
}

/// WatchOperation: the operation now, then every change until it is done (or deleted).
pub async fn watch(
    engine: &Engine,
    name: &str,
    permit: datapath_server::streams::StreamPermit,
) -> Result<OperationStream, Error> {
    let op = parse(name)?;
    let first = engine
        .coord
        .get_flow(op)
        .await?
        .ok_or(Error::OperationNotFound(op))?;
    let watch = engine
        .coord
        .watch_flows(first.mod_revision, Some(op))
        .await?;
    let initial = first.value.operation.unwrap_or_default();
    let stream = futures::stream::unfold(Some((Some(initial), watch)), |state| async move {
        let (pending, mut watch) = state?;
        let op = match pending {
            Some(op) => op,
            None => match watch.next().await {
                Ok(Some(changes)) => changes
                    .into_iter()
                    .last()
                    .and_then(|c| c.flow)
                    .and_then(|f| f.operation)?,
                Ok(None) => return None,
                Err(e) => return Some((Err(Status::from(Error::from(e))), None)),
            },
        };
        let next = (!op.done).then_some((None, watch));
        Some((
            Ok(pb::WatchOperationResponse {
                operation: Some(op),
            }),
            next,
        ))
    });
    Ok(Box::pin(datapath_server::streams::Permitted::new(
        Box::pin(stream),
        permit,
    )))
}

/// CancelOperation: FAILED_PRECONDITION once the operation is done.
pub async fn cancel(engine: &Engine, name: &str) -> Result<pb::Operation, Error> {
    let op = parse(name)?;
    loop {
        let current = engine
            .coord
            .get_flow(op)
            .await?
            .ok_or(Error::OperationNotFound(op))?;
        let mut flow = current.value;
        let operation = flow.operation.get_or_insert_with(Default::default);
        if operation.done {
            return Err(Error::precondition(
                "OPERATION_DONE",
                "name",
                format!("operation {} is already done", operation.name),
            ));
        }
        let meta = operation.metadata.get_or_insert_with(Default::default);
        if meta.cancel_requested {
            return Ok(operation.clone());
        }
        meta.cancel_requested = true;
        let answer = operation.clone();
        if engine
            .coord
            .put_flow_if(op, &flow, current.mod_revision, None)
            .await?
            .is_some()
        {
            return Ok(answer);
        }
    }
}

/// Rejects an empty name early with the field named.
pub fn require_name(name: &str) -> Result<(), FieldViolation> {
    if name.is_empty() {
        return Err(FieldViolation::missing("name"));
    }
    Ok(())
}
