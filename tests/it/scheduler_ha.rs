//! The scheduler's own availability and the parallel copy of a chain: a standby replica takes over a
//! running move when the acting scheduler dies, and the volumes of a chain are copied at once up to
//! the configured limit.
use std::time::Duration;

use datapath_api::pb::{self, scheduler_service_client::SchedulerServiceClient};
use dpctl::local::{free_ports, wait_serving, ManagedProcess, ProcessSpec};
use nix::sys::signal::Signal;

use crate::{
    disks::{chain_disk, error_of, follow_at},
    harness::{throttle, wait_for, TestCluster},
};

const MIB: u64 = 1 << 20;

/// A second scheduler replica, with the first one's flags on another port.
async fn standby(tc: &mut TestCluster) -> (ManagedProcess, String) {
    let first: ProcessSpec = tc.cluster.scheduler_mut().spec().clone();
    let port = free_ports(1).unwrap()[0];
    let mut args = first.args.clone();
    let listen = args.iter().position(|a| a == "--listen").unwrap();
    args[listen + 1] = format!("127.0.0.1:{port}");
    let metrics = args.iter().position(|a| a == "--metrics-listen").unwrap();
    args[metrics + 1] = "127.0.0.1:0".into();
    let spec = ProcessSpec {
        name: "scheduler-standby".into(),
        args,
        ..first
    };
    let log_dir = tc.cluster.config().log_dir();
    let mut process = ManagedProcess::start(spec, &log_dir).unwrap();
    let url = datapath_tls::url(tc.cluster.client_tls(), &format!("127.0.0.1:{port}"));
    wait_serving(
        &mut process,
        &url,
        tc.cluster.client_tls(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    (process, url)
}

#[tokio::test]
async fn a_standby_scheduler_takes_over_a_running_move() {
    let mut tc = TestCluster::start(3, |c| throttle(c, 8 * MIB))
        .await
        .unwrap();
    let (mut replica, url) = standby(&mut tc).await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 24 * MIB).await;
    // Any replica takes requests: this one only writes the flow; the acting one runs it.
    let mut client = SchedulerServiceClient::new(tc.channel(&url).await);
    let name = client
        .move_disk(pb::MoveDiskRequest {
            image: Some(pb::DiskRef {
                storage_domain_id: a.clone(),
                image_id: src[0].image_id.clone(),
            }),
            destination_storage_domain_id: b.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap()
        .name;
    wait_for(Duration::from_secs(20), "a running copy", || async {
        (!tc.keys(&tc.layout().volume_leases()).await.is_empty()).then_some(())
    })
    .await
    .unwrap();
    tc.cluster.scheduler_mut().signal(Signal::SIGKILL).unwrap();
    let seen = follow_at(
        &url,
        tc.cluster.client_tls(),
        &name,
        Duration::from_secs(90),
    )
    .await;
    let log = std::fs::read_to_string(replica.log_path()).unwrap_or_default();
    if seen.is_err() {
        tc.dump_logs();
        eprintln!("{log}");
    }
    let last = seen.unwrap().pop().unwrap();
    assert!(error_of(&last).is_none(), "{last:#?}");
    assert!(
        log.contains("this scheduler is now the acting one"),
        "the standby never took over:\n{log}"
    );
    replica.kill().ok();
}

/// The most volumes of one move seen copying at once, polling its flow record until it is done.
async fn most_at_once(tc: &TestCluster, name: &str) -> usize {
    use prost::Message as _;
    let key = tc
        .layout()
        .flow(datapath_api::ids::OperationId::parse_name("name", name).unwrap());
    let mut most = 0;
    loop {
        let resp = tc.etcd.clone().get(key.clone(), None).await.unwrap();
        let flow = pb::Flow::decode(resp.kvs()[0].value()).unwrap();
        let copying = flow
            .volumes
            .iter()
            .filter(|v| v.state() == pb::FlowVolumeState::Copying)
            .count();
        most = most.max(copying);
        if flow.operation.is_some_and(|o| o.done) {
            return most;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn move_counting_parallel_copies(parallel: usize) -> usize {
    let tc = TestCluster::start(3, |c| {
        throttle(c, 8 * MIB);
        c.parallel_copies = parallel;
    })
    .await
    .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let name = crate::disks::start_move(&tc, &a, &src[0].image_id, &b).await;
    let most = tokio::time::timeout(Duration::from_secs(60), most_at_once(&tc, &name))
        .await
        .expect("the move ended");
    let last = crate::disks::follow(&tc, &name, Duration::from_secs(10))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(error_of(&last).is_none(), "{last:#?}");
    most
}

#[tokio::test]
async fn the_volumes_of_a_chain_copy_in_parallel_up_to_the_limit() {
    // Three volumes, at most two at once: the base copies long enough for a layer to start beside it.
    assert_eq!(move_counting_parallel_copies(2).await, 2);
}

#[tokio::test]
async fn by_default_the_volumes_of_a_chain_copy_one_by_one() {
    assert_eq!(move_counting_parallel_copies(1).await, 1);
}

/// One sample of the scheduler's `/metrics`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn every_copy_is_followed_through_the_one_job_stream() {
    let tc = TestCluster::start(3, |c| throttle(c, 4 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let mut names = Vec::new();
    for _ in 0..6 {
        let disk = crate::disks::qcow2_disk(&tc, &a, 8 * MIB, 4).await;
        names.push(crate::disks::start_move(&tc, &a, &disk.image_id, &b).await);
    }
    let metrics = tc.cluster.scheduler_metrics();
    wait_for(
        Duration::from_secs(30),
        "three copies followed at once",
        || async {
            let text = crate::metrics::scrape_text(metrics).await;
            (sample(&text, "datapath_scheduler_followed_jobs")? >= 3.0).then_some(())
        },
    )
    .await
    .unwrap();
    for name in &names {
        let last = crate::disks::follow(&tc, name, Duration::from_secs(60))
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert!(error_of(&last).is_none(), "{last:#?}");
    }
    let text = crate::metrics::scrape_text(metrics).await;
    assert_eq!(
        sample(&text, "datapath_scheduler_job_watch_opens_total"),
        Some(1.0),
        "one stream for every copy"
    );
    assert_eq!(sample(&text, "datapath_scheduler_followed_jobs"), Some(0.0));
}
