//! Every limit of README.md's "Limits" table, end to end: one request just inside it is served, one
//! just outside it is refused with its status, field and reason, and changes nothing.
use std::time::Duration;

use datapath_api::{
    error::{field, reason},
    limits, pb,
};
use tonic::Code;

use crate::{
    disks::scheduler,
    harness::{copy_request, throttle, wait_for, TestCluster},
    scheduler_bad_input::move_req,
};

const MIB: u64 = 1 << 20;

fn refused(s: &tonic::Status, code: Code, at: &str, why: &str) {
    assert_eq!(s.code(), code, "{s:?}");
    assert_eq!(field(s).as_deref(), Some(at), "{s:?}");
    assert_eq!(reason(s).as_deref(), Some(why), "{s:?}");
    assert!(s.message().len() < 300, "the input is not echoed whole");
}

#[tokio::test]
async fn each_limit_serves_the_edge_and_refuses_one_past_it() {
    let tc = TestCluster::start(1, |c| {
        c.env.push((
            "DATAPATH_MAX_VOLUME_CAPACITY".into(),
            (64 * MIB).to_string(),
        ));
    })
    .await
    .unwrap();
    let mut host = tc.spm_host().await;

    // A storage domain's name: 256 bytes.
    for (len, ok) in [
        (limits::NAME_MAX_BYTES, true),
        (limits::NAME_MAX_BYTES + 1, false),
    ] {
        let sd = uuid::Uuid::new_v4().to_string();
        let r = host
            .create_storage_domain(pb::CreateStorageDomainRequest {
                storage_domain_id: sd.clone(),
                name: "n".repeat(len),
            })
            .await;
        let dir = tc.cluster.storage_root().join(&sd);
        match r {
            Ok(_) => assert!(ok && dir.exists()),
            Err(s) => {
                assert!(!ok, "{s:?}");
                refused(&s, Code::InvalidArgument, "name", "TOO_LONG");
                assert!(!dir.exists(), "nothing made");
            }
        }
    }

    // A volume's description (1 KiB) and capacity (the host's limit, 64 MiB here).
    let sd = tc.domain().await;
    let img = uuid::Uuid::new_v4().to_string();
    let cases = [
        (limits::DESCRIPTION_MAX_BYTES, 64 * MIB, None),
        (
            limits::DESCRIPTION_MAX_BYTES + 1,
            MIB,
            Some(("description", "TOO_LONG")),
        ),
        (
            0,
            64 * MIB + 512,
            Some(("capacity_bytes", "CAPACITY_TOO_LARGE")),
        ),
    ];
    for (description, capacity, refusal) in cases {
        let volume = pb::VolumeRef {
            storage_domain_id: sd.clone(),
            image_id: img.clone(),
            volume_id: uuid::Uuid::new_v4().to_string(),
        };
        let r = host
            .create_volume(pb::CreateVolumeRequest {
                volume: Some(volume.clone()),
                format: pb::VolumeFormat::Raw as i32,
                capacity_bytes: capacity,
                description: "d".repeat(description),
                ..Default::default()
            })
            .await;
        match (r, refusal) {
            (Ok(_), None) => assert!(tc.volume_path(&volume).exists()),
            (Err(s), Some((field, why))) => {
                refused(&s, Code::InvalidArgument, field, why);
                assert!(!tc.volume_path(&volume).exists(), "nothing made");
            }
            (r, want) => panic!("{r:?}, wanted {want:?}"),
        }
    }

    // A request id is a UUID (AIP-155); a refused one leaves nothing in etcd.
    let mut s = scheduler(&tc).await;
    let other = tc.domain().await;
    let bad = format!("{}x", uuid::Uuid::new_v4());
    let err = s
        .move_disk(move_req(&sd, &img, &other, &bad))
        .await
        .unwrap_err();
    refused(&err, Code::InvalidArgument, "request_id", "MALFORMED_ID");
    assert!(tc.keys(&tc.layout().requests()).await.is_empty());
    assert!(tc.keys(&tc.layout().flows()).await.is_empty());
    let err = s
        .move_disk(move_req(&sd, &img, &other, &"r".repeat(1 << 20)))
        .await
        .unwrap_err();
    refused(&err, Code::InvalidArgument, "request_id", "MALFORMED_ID");
    let good = uuid::Uuid::new_v4().to_string();
    s.move_disk(move_req(&sd, &img, &other, &good))
        .await
        .expect("a UUID request id is taken");

    // WatchJobs from a revision etcd has reached, not from one beyond it (nor i64::MAX).
    let mut tracker = tc.tracker().await;
    let now = tc
        .etcd
        .clone()
        .get(tc.cluster.etcd_prefix(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let watch = |start_revision: i64| {
        let mut tracker = tracker.clone();
        async move {
            tracker
                .watch_jobs(pb::WatchJobsRequest {
                    start_revision,
                    ..Default::default()
                })
                .await
        }
    };
    watch(now).await.expect("the current revision is taken");
    for beyond in [now + 1000, i64::MAX] {
        let err = watch(beyond).await.unwrap_err();
        refused(
            &err,
            Code::InvalidArgument,
            "start_revision",
            "OUT_OF_RANGE",
        );
    }
    // A job's description: 1 KiB.
    let host_id = tc.a_host_id().await;
    let mut as_host = tc.tracker_as_host(&host_id).await;
    for (len, ok) in [
        (limits::DESCRIPTION_MAX_BYTES, true),
        (limits::DESCRIPTION_MAX_BYTES + 1, false),
    ] {
        let job_id = uuid::Uuid::new_v4().to_string();
        let r = as_host
            .create_job(pb::CreateJobRequest {
                job: Some(pb::Job {
                    job_id: job_id.clone(),
                    host_id: host_id.clone(),
                    description: "d".repeat(len),
                    params: Some(pb::job::Params::CopyData(Default::default())),
                    ..Default::default()
                }),
            })
            .await;
        match r {
            Ok(_) => assert!(ok),
            Err(s) => {
                assert!(!ok, "{s:?}");
                refused(&s, Code::InvalidArgument, "job.description", "TOO_LONG");
                assert!(tc
                    .keys(
                        &tc.layout()
                            .job(datapath_api::ids::JobId::parse("job_id", &job_id).unwrap())
                    )
                    .await
                    .is_empty());
            }
        }
    }
    // A gRPC message: 4 MiB, refused from its frame header before any handler runs. The page
    // token's field costs 1 tag byte and a 4-byte length, so 4 MiB − 5 bytes of token is a message
    // of exactly 4 MiB: it reaches the handler, which refuses the token itself.
    let limit = datapath_server::message_size::MAX_MESSAGE_BYTES;
    for (token_len, ok) in [(limit - 5, true), (limit - 4, false)] {
        let err = tracker
            .list_jobs(pb::ListJobsRequest {
                page_token: "t".repeat(token_len),
                ..Default::default()
            })
            .await
            .unwrap_err();
        if ok {
            refused(
                &err,
                Code::InvalidArgument,
                "page_token",
                "INVALID_PAGE_TOKEN",
            );
        } else {
            assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
            assert_eq!(
                reason(&err).as_deref(),
                Some("MESSAGE_TOO_LARGE"),
                "{err:?}"
            );
            assert!(err.message().contains(&(limit + 1).to_string()), "{err:?}");
        }
    }
}

#[tokio::test]
async fn a_host_queues_at_most_its_limit_of_copies_and_refuses_the_next() {
    let tc = TestCluster::start(1, |c| {
        c.job_slots = 1;
        c.env.push(("DATAPATH_MAX_QUEUED_JOBS".into(), "2".into()));
        throttle(c, 2 * MIB);
    })
    .await
    .unwrap();
    let (src, first) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 16 * MIB, 8)
        .await;
    let job = tc.start_copy(0, &src, &first).await;
    // The first copy holds the only slot; two more may wait.
    wait_for(
        Duration::from_secs(20),
        "the first copy running",
        || async { (tc.job(&job).await.status() == pb::JobStatus::Running).then_some(()) },
    )
    .await
    .unwrap();
    let mut host = tc.host(0).await;
    for _ in 0..2 {
        let (_, dst) = tc
            .source_and_destination(pb::VolumeFormat::Raw, 16 * MIB, 1)
            .await;
        host.copy_data(copy_request(
            &uuid::Uuid::new_v4().to_string(),
            &src,
            &dst,
            None,
        ))
        .await
        .expect("a queued copy within the limit");
    }
    let (_, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 16 * MIB, 1)
        .await;
    let refused_job = uuid::Uuid::new_v4().to_string();
    let err = host
        .copy_data(copy_request(&refused_job, &src, &dst, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("HOST_QUEUE_FULL"));
    assert!(tc
        .keys(
            &tc.layout()
                .job(datapath_api::ids::JobId::parse("job_id", &refused_job).unwrap())
        )
        .await
        .is_empty());
}

#[tokio::test]
async fn a_caller_holds_at_most_its_share_of_watch_streams() {
    let tc = TestCluster::start(1, |c| {
        c.env
            .push(("DATAPATH_MAX_STREAMS_PER_CALLER".into(), "3".into()));
    })
    .await
    .unwrap();
    let tracker = tc.tracker().await;
    let open = || {
        let mut tracker = tracker.clone();
        async move {
            tracker
                .watch_jobs(pb::WatchJobsRequest::default())
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(open().await.expect("within the caller's share"));
    }
    let err = open().await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("TOO_MANY_STREAMS"));
    // Another caller (a host) is not held to the operator's share.
    let host_id = tc.a_host_id().await;
    tc.tracker_as_host(&host_id)
        .await
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .expect("another caller's stream");
    // A stream the client closes gives its permit back.
    drop(streams.pop());
    wait_for(Duration::from_secs(10), "a permit given back", || async {
        open().await.ok()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_caller_faster_than_its_call_rate_is_slowed_then_refused_and_the_services_are_not() {
    let tc = TestCluster::start(1, |c| {
        c.env.push(("DATAPATH_MAX_CALL_RATE".into(), "20".into()));
    })
    .await
    .unwrap();
    let host = tc.spm_host().await;
    let bad = || pb::GetVolumeInfoRequest {
        volume: Some(pb::VolumeRef {
            storage_domain_id: "x".into(),
            ..Default::default()
        }),
    };
    // The burst (20) goes at once; the next 20 are spread over about a second.
    let start = std::time::Instant::now();
    for _ in 0..40 {
        let err = host.clone().get_volume_info(bad()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(800), "not slowed: {took:?}");
    // Many at once: those that would wait more than a second are refused.
    let calls: Vec<_> = (0..60)
        .map(|_| {
            let mut host = host.clone();
            tokio::spawn(async move { host.get_volume_info(bad()).await })
        })
        .collect();
    let mut refused = 0;
    for c in calls {
        if let Err(s) = c.await.unwrap() {
            if s.code() == Code::ResourceExhausted {
                assert_eq!(reason(&s).as_deref(), Some("TOO_MANY_CALLS"));
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "none refused");
    // Health checks and the services' own identities are not held to it.
    let host_id = tc.a_host_id().await;
    let mut as_host = tc.tracker_as_host(&host_id).await;
    for _ in 0..60 {
        as_host
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .expect("a host is exempt");
    }
}
