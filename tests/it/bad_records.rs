//! Records in etcd that do not decode, or that decode into something this version does not know,
//! are quarantined, not fatal: garbage put with etcdctl under `flows/`, `jobs/`, `hosts/` and
//! `generations/` leaves every service serving and every other flow running; the bad records show
//! in `dpctl debug etcd` and in `datapath_etcd_bad_records_total`; a flow whose step this
//! scheduler does not know is parked (`NEEDS_OPERATOR`), never run from a default.
use std::time::Duration;

use datapath_api::pb;
use prost::Message as _;

use crate::{
    disks::{error_of, follow, moved, qcow2_disk, scheduler, start_move},
    harness::{wait_for, TestCluster},
    metrics::scrape_text,
};

const MIB: u64 = 1 << 20;

/// The sum of a counter's series with `kind="<kind>"` on a `/metrics` page.
fn bad_records(page: &str, kind: &str) -> f64 {
    let label = format!("kind=\"{kind}\"");
    page.lines()
        .filter(|l| l.starts_with("datapath_etcd_bad_records_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn garbage_in_etcd_is_skipped_and_counted_and_every_other_flow_runs() {
    let tc = TestCluster::start(2, |_| {}).await.unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let disk = qcow2_disk(&tc, &a, 16 * MIB, 4).await;
    let layout = tc.layout();
    let junk = |prefix: String| format!("{prefix}{}", uuid::Uuid::new_v4());
    let bad_keys = [
        junk(layout.flows()),
        junk(layout.jobs()),
        junk(layout.hosts()),
        format!("{}{}", junk(layout.generations()), "/x/y"),
    ];
    let mut etcd = tc.etcd.clone();
    for key in &bad_keys {
        etcd.put(key.as_str(), &b"\xffgarbage\x00"[..], None)
            .await
            .unwrap();
    }

    // A flow this version cannot run: a step it does not know.
    let parked = datapath_api::ids::OperationId::random();
    let flow = pb::Flow {
        operation: Some(pb::Operation {
            name: parked.name(),
            metadata: Some(pb::OperationMetadata {
                kind: pb::OperationKind::MoveDisk as i32,
                step: 99,
                ..Default::default()
            }),
            ..Default::default()
        }),
        destination: Some(pb::DiskRef {
            storage_domain_id: b.clone(),
            image_id: uuid::Uuid::new_v4().to_string(),
        }),
        ..Default::default()
    };
    etcd.put(layout.flow(parked), flow.encode_to_vec(), None)
        .await
        .unwrap();

    // Another disk still moves, the lists still answer.
    let name = start_move(&tc, &a, &disk.image_id, &b).await;
    let seen = follow(&tc, &name, Duration::from_secs(60)).await.unwrap();
    let last = seen.last().unwrap();
    assert!(error_of(last).is_none(), "{last:#?}");
    assert!(tc.volume_path(&moved(&disk, &b)).exists());
    let mut s = scheduler(&tc).await;
    let ops = s
        .list_operations(pb::ListOperationsRequest::default())
        .await
        .expect("ListOperations answers")
        .into_inner()
        .operations;
    assert!(ops.iter().any(|o| o.name == name));
    let hosts = s
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .expect("ListHosts answers")
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    tc.tracker()
        .await
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("ListJobs answers");

    // The unknown step parked its flow: ended NEEDS_OPERATOR, nothing of it run.
    let op = wait_for(Duration::from_secs(20), "the flow parked", || {
        let mut s = s.clone();
        let name = parked.name();
        async move {
            let op = s
                .get_operation(pb::GetOperationRequest { name })
                .await
                .ok()?
                .into_inner()
                .operation?;
            op.done.then_some(op)
        }
    })
    .await
    .unwrap();
    let error = error_of(&op).expect("a parked flow ends with an error");
    assert_eq!(error.reason, "NEEDS_OPERATOR", "{error:?}");
    assert!(error.message.contains("step 99"), "{error:?}");
    assert!(
        tc.keys(&tc.layout().flow(parked)).await.len() == 1,
        "a parked flow's record is kept"
    );

    // Counted where it was met, and shown to the operator with its key.
    let scheduler_page = scrape_text(tc.cluster.scheduler_metrics()).await;
    assert!(
        bad_records(&scheduler_page, "flows") >= 1.0,
        "{scheduler_page}"
    );
    let tracker_page = scrape_text(tc.cluster.job_tracker_metrics()).await;
    assert!(bad_records(&tracker_page, "jobs") >= 1.0, "{tracker_page}");
    let text = crate::dpctl_debug::debug_etcd(&tc, &[]);
    for key in &bad_keys {
        assert!(
            text.lines()
                .any(|l| l.starts_with(key.as_str()) && l.contains("unreadable")),
            "{key} not shown as unreadable:\n{text}"
        );
    }
}
