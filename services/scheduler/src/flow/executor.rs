//! The acting scheduler's loop: resume every flow that is not done, start each new one as it appears
//! in etcd (any replica's API may create it), and pass cancel requests to the runners. Dropping the
//! future stops every runner (leadership lost); their flows wait in etcd for the next leader.
use std::{collections::HashMap, sync::Arc, time::Duration};

use datapath_api::{ids::OperationId, pb};
use datapath_coord::{election::Leadership, flows::Versioned};
use tokio::{sync::watch, task::JoinSet};
use tracing::{info, warn};

use super::{admission, runner, state::meta, Stop};
use crate::engine::Engine;

/// Runs flows while `leader` stands; returns when the leadership is found lost.
pub async fn run(engine: Arc<Engine>, leader: Leadership) {
    let mut runners: HashMap<OperationId, watch::Sender<bool>> = HashMap::new();
    let mut tasks: JoinSet<(OperationId, Result<(), Stop>)> = JoinSet::new();
    loop {
        let (flows, revision) = match engine.coord.list_flows().await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "could not list flows; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for f in flows {
            let op = op_of(&f.value);
            if let Some(op) = op {
                offer(&engine, &leader, &mut runners, &mut tasks, op, f);
            }
        }
        let mut watch = match engine.coord.watch_flows(revision, None).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "could not watch flows; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                batch = watch.next() => {
                    let Ok(Some(changes)) = batch else { break };
                    for c in changes {
                        if let Some(flow) = c.flow {
                            let flow = Versioned { value: flow, mod_revision: c.revision };
                            offer(&engine, &leader, &mut runners, &mut tasks, c.operation, flow);
                        }
                    }
                }
                Some(joined) = tasks.join_next() => {
                    let Ok((op, result)) = joined else { continue };
                    runners.remove(&op);
                    match result {
                        Ok(()) => {}
                        Err(Stop::LeadershipLost) => {
                            warn!("scheduler leadership lost; stopping every flow");
                            return;
                        }
                        Err(e) => {
                            warn!(%op, error = %e, "flow runner stopped; resuming it");
                            respawn(&engine, &leader, &mut runners, &mut tasks, op);
                        }
                    }
                }
            }
        }
    }
}

fn op_of(flow: &pb::Flow) -> Option<OperationId> {
    let name = &flow.operation.as_ref()?.name;
    OperationId::parse_name("name", name).ok()
}

/// Starts a runner for a flow that is not done and has none, on the record as listed or watched
/// (its mod revision makes the runner's first save fail, and re-read, if it is outdated); forwards
/// a cancel request otherwise.
fn offer(
    engine: &Arc<Engine>,
    leader: &Leadership,
    runners: &mut HashMap<OperationId, watch::Sender<bool>>,
    tasks: &mut JoinSet<(OperationId, Result<(), Stop>)>,
    op: OperationId,
    flow: Versioned<pb::Flow>,
) {
    if flow.value.operation.as_ref().is_some_and(|o| o.done) {
        return;
    }
    let cancel = meta(&flow.value).cancel_requested;
    if let Some(tx) = runners.get(&op) {
        if cancel {
            tx.send_replace(true);
        }
        return;
    }
    info!(%op, "running flow");
    let (tx, rx) = watch::channel(cancel);
    runners.insert(op, tx);
    let (engine, leader) = (engine.clone(), leader.clone());
    let not_started = admission::not_started(&flow.value);
    let start = runner::Start {
        known: Some(flow),
        not_started,
    };
    tasks.spawn(async move { (op, runner::run(engine, leader, op, rx, start).await) });
}

fn respawn(
    engine: &Arc<Engine>,
    leader: &Leadership,
    runners: &mut HashMap<OperationId, watch::Sender<bool>>,
    tasks: &mut JoinSet<(OperationId, Result<(), Stop>)>,
    op: OperationId,
) {
    let (tx, rx) = watch::channel(false);
    runners.insert(op, tx);
    let (engine, leader) = (engine.clone(), leader.clone());
    tasks.spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        (
            op,
            runner::run(engine, leader, op, rx, Default::default()).await,
        )
    });
}
