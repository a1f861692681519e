//! The Job API on its own: transitions, ownership, progress, pagination, watch resumption, retention
//! and coalescing of progress writes — against the real job-tracker and etcd.
use std::time::Duration;

use datapath_api::pb::{self, JobEventType, JobStatus};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::harness::*;

const MIB: u64 = 1 << 20;

fn new_job(host: &str, entity: &str) -> pb::Job {
    let vref = pb::VolumeRef {
        storage_domain_id: uuid::Uuid::new_v4().to_string(),
        image_id: uuid::Uuid::new_v4().to_string(),
        volume_id: uuid::Uuid::new_v4().to_string(),
    };
    let ep = pb::CopyDataEndpoint {
        volume: Some(vref),
        generation: None,
    };
    pb::Job {
        job_id: uuid::Uuid::new_v4().to_string(),
        host_id: host.into(),
        entities: vec![entity.into()],
        params: Some(pb::job::Params::CopyData(pb::CopyDataParams {
            source: Some(ep.clone()),
            destination: Some(ep),
        })),
        ..Default::default()
    }
}

/// UpdateJob sent by host `host` (with its own certificate) for `job`.
async fn update(
    tc: &TestCluster,
    job: &pb::Job,
    host: &str,
    status: Option<JobStatus>,
    progress: Option<u32>,
) -> Result<pb::Job, tonic::Status> {
    let req = pb::UpdateJobRequest {
        job_id: job.job_id.clone(),
        host_id: host.into(),
        status: status.map(|s| s as i32).unwrap_or(0),
        progress,
        error: None,
    };
    let mut t = tc.tracker_as_host(host).await;
    Ok(t.update_job(req).await?.into_inner().job.unwrap())
}

/// CreateJob sent by the job's host (with its own certificate).
async fn create(tc: &TestCluster, job: &pb::Job) -> Result<pb::CreateJobResponse, tonic::Status> {
    let mut t = tc.tracker_as_host(&job.host_id).await;
    Ok(t.create_job(pb::CreateJobRequest {
        job: Some(job.clone()),
    })
    .await?
    .into_inner())
}

/// The jobs here belong to made-up hosts that never register, and the job-tracker ends the jobs of
/// a host gone for its lost-host grace (2 s by default): a test that runs longer than that would see
/// its jobs end FENCED under it. Here they are kept.
fn made_up_hosts_kept(c: &mut dpctl::local::ClusterConfig) {
    c.env.push(("DATAPATH_LOST_HOST_GRACE".into(), "1h".into()));
}

fn reason(s: &tonic::Status) -> String {
    datapath_api::error::reason(s).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_state_machine_is_enforced() {
    let tc = TestCluster::start(1, made_up_hosts_kept).await.unwrap();
    let mut t = tc.tracker().await;
    let host = uuid::Uuid::new_v4().to_string();
    let other = uuid::Uuid::new_v4().to_string();
    let job = new_job(&host, "e1");

    let first = create(&tc, &job).await.unwrap();
    assert!(first.created);
    assert_eq!(first.job.unwrap().status(), JobStatus::Pending);
    assert!(
        !create(&tc, &job).await.unwrap().created,
        "the same job again is not new"
    );
    let err = create(
        &tc,
        &pb::Job {
            host_id: other.clone(),
            ..job.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err)),
        (Code::AlreadyExists, "JOB_EXISTS".into())
    );

    let err = update(&tc, &job, &other, Some(JobStatus::Running), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err)),
        (Code::PermissionDenied, "NOT_JOB_OWNER".into())
    );
    let err = update(&tc, &job, &host, Some(JobStatus::Succeeded), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err)),
        (Code::FailedPrecondition, "INVALID_TRANSITION".into())
    );

    assert_eq!(
        update(&tc, &job, &host, Some(JobStatus::Running), Some(50))
            .await
            .unwrap()
            .progress,
        50
    );
    assert_eq!(
        update(&tc, &job, &host, None, Some(30))
            .await
            .unwrap()
            .progress,
        50,
        "progress went down"
    );
    let err = update(&tc, &job, &host, None, Some(101)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = update(&tc, &job, &host, Some(JobStatus::Failed), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), datapath_api::error::field(&err)),
        (Code::InvalidArgument, Some("error.code".into()))
    );
    let err = t
        .delete_job(pb::DeleteJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let done = update(&tc, &job, &host, Some(JobStatus::Succeeded), None)
        .await
        .unwrap();
    assert_eq!((done.status(), done.progress), (JobStatus::Succeeded, 100));
    let err = update(&tc, &job, &host, Some(JobStatus::Running), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err)),
        (Code::FailedPrecondition, "JOB_ENDED".into())
    );
    let err = t
        .abort_job(pb::AbortJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    t.delete_job(pb::DeleteJobRequest {
        job_id: job.job_id.clone(),
    })
    .await
    .unwrap();
    let err = t
        .get_job(pb::GetJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_paginates() {
    let tc = TestCluster::start(1, made_up_hosts_kept).await.unwrap();
    let mut t = tc.tracker().await;
    let host = uuid::Uuid::new_v4().to_string();
    let other = uuid::Uuid::new_v4().to_string();
    let mut ids = Vec::new();
    for i in 0..7 {
        let job = new_job(&host, if i % 2 == 0 { "even" } else { "odd" });
        create(&tc, &job).await.unwrap();
        // Jobs of another host between them: a filtered page is read in several bounded chunks.
        for _ in 0..3 {
            create(&tc, &new_job(&other, "elsewhere")).await.unwrap();
        }
        if i < 2 {
            update(&tc, &job, &host, Some(JobStatus::Running), None)
                .await
                .unwrap();
        }
        ids.push(job.job_id);
    }
    ids.sort();
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let resp = t
            .list_jobs(pb::ListJobsRequest {
                host_id: host.clone(),
                page_size: 3,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.jobs.len() <= 3);
        seen.extend(resp.jobs.into_iter().map(|j| j.job_id));
        pages += 1;
        if resp.next_page_token.is_empty() {
            break;
        }
        token = resp.next_page_token;
    }
    assert_eq!((seen, pages), (ids, 3));
    let list = |req: pb::ListJobsRequest| {
        let mut t = t.clone();
        async move { t.list_jobs(req).await.unwrap().into_inner().jobs.len() }
    };
    assert_eq!(
        list(pb::ListJobsRequest {
            entity: "even".into(),
            ..Default::default()
        })
        .await,
        4
    );
    assert_eq!(
        list(pb::ListJobsRequest {
            status: JobStatus::Running as i32,
            ..Default::default()
        })
        .await,
        2
    );
    let err = t
        .list_jobs(pb::ListJobsRequest {
            page_token: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        datapath_api::error::field(&err).as_deref(),
        Some("page_token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_a_revision_without_missing_anything() {
    let tc = TestCluster::start(1, made_up_hosts_kept).await.unwrap();
    let mut t = tc.tracker().await;
    let host = uuid::Uuid::new_v4().to_string();
    let job = new_job(&host, "w");
    let mut live = t
        .watch_jobs(pb::WatchJobsRequest {
            host_id: host.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    create(&tc, &job).await.unwrap();
    update(&tc, &job, &host, Some(JobStatus::Running), None)
        .await
        .unwrap();
    let created = live.next().await.unwrap().unwrap();
    assert_eq!(created.r#type(), JobEventType::Put);
    // Everything after the first event, seen live...
    update(&tc, &job, &host, Some(JobStatus::Aborted), None)
        .await
        .unwrap();
    t.delete_job(pb::DeleteJobRequest {
        job_id: job.job_id.clone(),
    })
    .await
    .unwrap();
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        rest.push((e.r#type(), e.job.unwrap().status(), e.revision));
    }
    // ...and seen again by a watch resumed after it, with the same revisions.
    let mut resumed = t
        .watch_jobs(pb::WatchJobsRequest {
            host_id: host.clone(),
            start_revision: created.revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut again = Vec::new();
    while again.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        again.push((e.r#type(), e.job.unwrap().status(), e.revision));
    }
    assert_eq!(again, rest);
    assert_eq!(
        rest.iter().map(|r| r.1).collect::<Vec<_>>(),
        [
            JobStatus::Running,
            JobStatus::Aborted,
            JobStatus::Unspecified
        ]
    );
    assert_eq!(rest[2].0, JobEventType::Deleted);

    // A snapshot stream starts with what exists now.
    let other = new_job(&host, "w2");
    create(&tc, &other).await.unwrap();
    let mut snap = t
        .watch_jobs(pb::WatchJobsRequest {
            job_id: other.job_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = snap.next().await.unwrap().unwrap();
    assert_eq!(
        (first.r#type(), first.job.unwrap().job_id),
        (JobEventType::Snapshot, other.job_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_are_deleted_after_the_retention_and_running_ones_are_kept() {
    let tc = TestCluster::start(1, |c| {
        made_up_hosts_kept(c);
        c.job_retention = Duration::from_secs(2)
    })
    .await
    .unwrap();
    let t = tc.tracker().await;
    let host = uuid::Uuid::new_v4().to_string();
    let (ended, running) = (new_job(&host, "r"), new_job(&host, "r"));
    for j in [&ended, &running] {
        create(&tc, j).await.unwrap();
        update(&tc, j, &host, Some(JobStatus::Running), None)
            .await
            .unwrap();
    }
    update(&tc, &ended, &host, Some(JobStatus::Succeeded), None)
        .await
        .unwrap();
    let gone = |id: String| {
        let mut t = t.clone();
        async move {
            t.get_job(pb::GetJobRequest { job_id: id })
                .await
                .is_err_and(|e| e.code() == Code::NotFound)
        }
    };
    wait_for(Duration::from_secs(6), "the ended job to expire", || {
        let g = gone(ended.job_id.clone());
        async move { g.await.then_some(()) }
    })
    .await
    .unwrap();
    assert!(
        !gone(running.job_id.clone()).await,
        "a running job was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_writes_are_coalesced_to_about_two_a_second() {
    let tc = TestCluster::start(1, made_up_hosts_kept).await.unwrap();
    let t = tc.tracker().await;
    let host = uuid::Uuid::new_v4().to_string();
    let job = new_job(&host, "c");
    create(&tc, &job).await.unwrap();
    update(&tc, &job, &host, Some(JobStatus::Running), None)
        .await
        .unwrap();
    let key = tc
        .layout()
        .job(datapath_api::ids::JobId::parse("job_id", &job.job_id).unwrap());
    let version = |tc: &TestCluster, key: String| {
        let mut c = tc.etcd.clone();
        async move { c.get(key, None).await.unwrap().kvs()[0].version() }
    };
    let before = version(&tc, key.clone()).await;

    // 100 progress reports over about 2 seconds: a fast copy.
    let begun = std::time::Instant::now();
    for p in 1..=100 {
        let shown = update(&tc, &job, &host, None, Some(p)).await.unwrap();
        assert_eq!(shown.progress, p, "the answer shows the reported progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = begun.elapsed();
    // The last value reaches etcd once its half second has passed.
    let mut t2 = t.clone();
    let id = job.job_id.clone();
    wait_for(Duration::from_secs(3), "progress 100 in etcd", || {
        let mut c = tc.etcd.clone();
        let k = key.clone();
        async move {
            let resp = c.get(k, None).await.ok()?;
            let job: pb::Job = prost::Message::decode(resp.kvs().first()?.value()).ok()?;
            (job.progress == 100).then_some(())
        }
    })
    .await
    .unwrap();
    assert_eq!(
        t2.get_job(pb::GetJobRequest { job_id: id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .progress,
        100
    );

    // etcd counts the modifications of a key in its version.
    let writes = version(&tc, key.clone()).await - before;
    let allowed = (elapsed.as_secs_f64() * 2.0).ceil() as i64 + 2;
    assert!(
        writes >= 2 && writes <= allowed,
        "{writes} etcd writes for 100 reports in {elapsed:?} (allowed {allowed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_outlives_the_request_timeouts() {
    // The server's per-call deadline (2 s here) and the etcd client's (5 s) bound answers, not streams.
    let tc = TestCluster::start(1, |c| {
        made_up_hosts_kept(c);
        c.env.push(("DATAPATH_REQUEST_TIMEOUT".into(), "2s".into()))
    })
    .await
    .unwrap();
    let mut t = tc.tracker().await;
    let host = uuid::Uuid::new_v4().to_string();
    let mut watch = t
        .watch_jobs(pb::WatchJobsRequest {
            host_id: host.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let quiet = tokio::time::timeout(Duration::from_secs(7), watch.next()).await;
    assert!(
        quiet.is_err(),
        "the stream ended or sent something while nothing happened: {quiet:?}"
    );
    let job = new_job(&host, "q");
    create(&tc, &job).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.job.unwrap().job_id, job.job_id);
}

#[tokio::test]
async fn the_jobs_of_a_host_gone_for_good_end_fenced() {
    use nix::sys::signal::Signal;
    let mut tc = TestCluster::start(2, |c| throttle(c, 2 * MIB))
        .await
        .unwrap();
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 32 * MIB, 8)
        .await;
    let job_id = tc.start_copy(1, &src, &dst).await;
    tc.wait_for_lease().await;
    let gone = tc.cluster.host_id(1).to_string();
    tc.cluster.host_mut(1).signal(Signal::SIGKILL).unwrap();
    // Its registration expires with its session (TTL 4 s), then the job-tracker ends its job.
    let ended = wait_for(
        Duration::from_secs(20),
        "the lost host's job to end",
        || async {
            let j = tc
                .tracker()
                .await
                .get_job(pb::GetJobRequest {
                    job_id: job_id.clone(),
                })
                .await
                .ok()?
                .into_inner()
                .job?;
            (j.status() != pb::JobStatus::Running).then_some(j)
        },
    )
    .await
    .unwrap();
    assert_eq!(ended.status(), pb::JobStatus::Failed);
    let error = ended.error.unwrap();
    assert_eq!(error.code, "FENCED");
    assert!(error.message.contains(&gone), "{error:?}");
    assert!(tc
        .keys(
            &tc.layout()
                .host(datapath_api::ids::HostId::parse("host_id", &gone).unwrap())
        )
        .await
        .is_empty());
}

#[tokio::test]
async fn a_job_pending_past_the_expiry_ends_never_started() {
    let tc = TestCluster::start(1, |c| {
        c.env
            .push(("DATAPATH_PENDING_JOB_EXPIRY".into(), "2s".into()));
    })
    .await
    .unwrap();
    // A live host's job that its host never starts (made by CreateJob alone).
    let host = tc.a_host_id().await;
    let job = new_job(&host, "queued");
    create(&tc, &job).await.unwrap();
    // A running job of the same age, which the same sweeps see: never touched.
    let running = new_job(&host, "running");
    create(&tc, &running).await.unwrap();
    update(&tc, &running, &host, Some(JobStatus::Running), None)
        .await
        .unwrap();
    let ended = wait_for(Duration::from_secs(15), "the job to expire", || async {
        let j = tc.job(&job.job_id).await;
        (j.status() == JobStatus::Failed).then_some(j)
    })
    .await
    .unwrap();
    let error = ended.error.unwrap();
    assert_eq!(error.code, "NEVER_STARTED", "{error:?}");
    assert_eq!(tc.job(&running.job_id).await.status(), JobStatus::Running);
}

#[tokio::test]
async fn a_host_registers_at_most_its_limit_of_unended_jobs() {
    let tc = TestCluster::start(1, |c| {
        c.env
            .push(("DATAPATH_MAX_OPEN_JOBS_PER_HOST".into(), "3".into()));
    })
    .await
    .unwrap();
    let host = tc.a_host_id().await;
    let jobs: Vec<pb::Job> = (0..3).map(|i| new_job(&host, &format!("e{i}"))).collect();
    for job in &jobs {
        create(&tc, job).await.unwrap();
    }
    // One past the limit: refused, and nothing written.
    let extra = new_job(&host, "extra");
    let err = create(&tc, &extra).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        datapath_api::error::reason(&err).as_deref(),
        Some("HOST_JOBS_FULL")
    );
    assert_eq!(
        datapath_api::error::field(&err).as_deref(),
        Some("job.host_id")
    );
    assert!(tc
        .keys(
            &tc.layout()
                .job(datapath_api::ids::JobId::parse("job_id", &extra.job_id).unwrap())
        )
        .await
        .is_empty());
    // A retried create of a registered job is still answered as one.
    let again = create(&tc, &jobs[0]).await.unwrap();
    assert!(!again.created, "{again:?}");
    // Once a job ends, the next sweep (once a second) makes room for one more.
    update(&tc, &jobs[0], &host, Some(JobStatus::Running), None)
        .await
        .unwrap();
    update(&tc, &jobs[0], &host, Some(JobStatus::Succeeded), Some(100))
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "room for one more job", || async {
        create(&tc, &extra).await.ok()
    })
    .await
    .unwrap();
    let err = create(&tc, &new_job(&host, "over")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}
