//! Authorisation by caller identity, against the real services (the security issue): every row of
//! the table (`datapath_server::authz::ALLOWED`) is called once by a kind it allows — which gets past
//! the layer (any code but PERMISSION_DENIED; the requests are empty, so nothing changes) — and once
//! by a kind it does not — which gets PERMISSION_DENIED naming the caller and the method. Then the
//! cases that depend on the request: a host forging another host's job update.
use datapath_api::{error, ids::HostId, pb};
use datapath_server::authz::ALLOWED;
use datapath_tls::Identity;
use tonic::{codegen::http::uri::PathAndQuery, transport::Channel, Code};

use crate::harness::TestCluster;

/// One identity of each kind.
fn of_kind(kind: &str) -> Identity {
    match kind {
        "host" => Identity::Host(HostId::random()),
        "scheduler" => Identity::Scheduler,
        "job-tracker" => Identity::JobTracker,
        "operator" => Identity::Operator("o".into()),
        "admin" => Identity::Admin("a".into()),
        "viewer" => Identity::Viewer("v".into()),
        "plugin" => Identity::Plugin("p".into()),
        other => panic!("unknown kind {other}"),
    }
}

const KINDS: [&str; 7] = [
    "host",
    "scheduler",
    "job-tracker",
    "operator",
    "admin",
    "viewer",
    "plugin",
];

/// Calls `path` with an empty message over `channel`; the status it ended with (OK included).
async fn call_empty(channel: Channel, path: &str, streaming: bool) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let path = PathAndQuery::try_from(path).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let result = if streaming {
        grpc.server_streaming(tonic::Request::new(()), path, codec)
            .await
            .map(drop)
    } else {
        grpc.unary(tonic::Request::new(()), path, codec)
            .await
            .map(drop)
    };
    result.err().unwrap_or_else(|| tonic::Status::ok(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_table_lets_in_the_kinds_it_names_and_refuses_the_others() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let url_of = |path: &str| {
        if path.starts_with("/datapath.v1.JobTrackerService/") {
            tc.cluster.job_tracker_url()
        } else if path.starts_with("/datapath.v1.SchedulerService/") {
            tc.cluster.scheduler_url()
        } else {
            // Host-workers, and what every server answers (health, a plugin's method: the layer
            // decides before any routing).
            tc.cluster.host_url(0)
        }
    };
    let mut rows = 0;
    for (method, kinds) in ALLOWED {
        if method.contains("Reflection") {
            // Bidirectional streams; grpcurl lists through them in tls.rs.
            continue;
        }
        let path = if method.ends_with('/') {
            format!("{method}Check")
        } else {
            method.to_string()
        };
        let streaming = path.ends_with("/WatchJobs") || path.ends_with("/WatchOperation");
        let url = url_of(&path);
        let allowed = of_kind(kinds[0]);
        let got = call_empty(tc.channel_as(&url, &allowed).await, &path, streaming).await;
        assert_ne!(
            got.code(),
            Code::PermissionDenied,
            "{allowed} refused {path}: {got:?}"
        );
        if let Some(kind) = KINDS.iter().find(|k| !kinds.contains(k)) {
            let denied = of_kind(kind);
            let got = call_empty(tc.channel_as(&url, &denied).await, &path, streaming).await;
            assert_eq!(got.code(), Code::PermissionDenied, "{denied} called {path}");
            assert_eq!(error::reason(&got).as_deref(), Some("PERMISSION_DENIED"));
            assert_eq!(
                error::metadata(&got, "identity").as_deref(),
                Some(denied.uri().as_str())
            );
            assert_eq!(
                error::metadata(&got, "method").as_deref(),
                Some(path.as_str())
            );
        }
        rows += 1;
    }
    assert!(rows >= 30, "only {rows} rows called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_update_another_hosts_job_set_config_or_move_disks() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let owner = HostId::random().to_string();
    let job = pb::Job {
        job_id: uuid::Uuid::new_v4().to_string(),
        host_id: owner.clone(),
        params: Some(pb::job::Params::CopyData(Default::default())),
        ..Default::default()
    };
    tc.tracker_as_host(&owner)
        .await
        .create_job(pb::CreateJobRequest {
            job: Some(job.clone()),
        })
        .await
        .unwrap();
    let before = tc.job(&job.job_id).await;

    // Another host, naming the owner in the request: its certificate says otherwise.
    let intruder = HostId::random();
    let mut as_intruder = tc.tracker_as_host(&intruder.to_string()).await;
    let denied = as_intruder
        .update_job(pb::UpdateJobRequest {
            job_id: job.job_id.clone(),
            host_id: owner.clone(),
            status: pb::JobStatus::Succeeded as i32,
            progress: Some(100),
            error: None,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(error::reason(&denied).as_deref(), Some("PERMISSION_DENIED"));
    assert_eq!(
        error::metadata(&denied, "identity"),
        Some(Identity::Host(intruder).uri())
    );
    assert!(
        !denied.message().contains(&owner),
        "the owner leaked: {denied:?}"
    );
    // Nor may it create a job in another host's name.
    let denied = as_intruder
        .create_job(pb::CreateJobRequest {
            job: Some(pb::Job {
                job_id: uuid::Uuid::new_v4().to_string(),
                ..job.clone()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let after = tc.job(&job.job_id).await;
    assert_eq!(after, before, "the refused update changed the job");

    // A host's certificate on the scheduler: no settings, no moves.
    let scheduler = tc
        .channel_as(&tc.cluster.scheduler_url(), &Identity::Host(intruder))
        .await;
    let mut scheduler = pb::scheduler_service_client::SchedulerServiceClient::new(scheduler);
    let denied = scheduler
        .set_config(pb::SetConfigRequest {
            key: "data_operations_by_hsm".into(),
            value: "false".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = scheduler
        .move_disk(pb::MoveDiskRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let config = crate::disks::scheduler(&tc)
        .await
        .get_config(pb::GetConfigRequest {
            key: "data_operations_by_hsm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(config.value, "false", "the refused SetConfig took effect");

    // Each refusal was counted, by method and kind.
    let metrics = crate::metrics::scrape_text(tc.cluster.job_tracker_metrics()).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("datapath_grpc_server_denied_total")
                && l.contains("UpdateJob")
                && l.contains("identity=\"host\"")),
        "{metrics}"
    );
}
