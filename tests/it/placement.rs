//! Placement end to end: which host runs each copy of a scheduler flow, read back from the
//! job-tracker's job records (the host that registered and ran each job), under `least-loaded`,
//! `round-robin`, the runtime setting `data_operations_by_hsm`, and an external gRPC policy.
use std::{collections::BTreeSet, time::Duration};

use datapath_api::pb;
use dpctl::local::{
    find_binary, free_ports, search_dirs, wait_serving, ManagedProcess, ProcessSpec,
};
use futures::future::join_all;

use crate::{
    disks::{chain_disk, create, error_of, follow, scheduler, start_move},
    harness::{fill_random, throttle, wait_for, TestCluster},
};

const MIB: u64 = 1 << 20;
/// How long one operation of these small disks may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// A one-volume raw disk in `sd` of `capacity` bytes holding `chunks` MiB of random data. A copy
/// moves the whole capacity of a raw volume, so a throttled copy takes capacity / limit.
pub(crate) async fn single_disk(
    tc: &TestCluster,
    sd: &str,
    capacity: u64,
    chunks: u64,
) -> pb::VolumeRef {
    let v = pb::VolumeRef {
        storage_domain_id: sd.into(),
        image_id: uuid::Uuid::new_v4().to_string(),
        volume_id: uuid::Uuid::new_v4().to_string(),
    };
    create(
        tc,
        &v,
        pb::VolumeFormat::Raw,
        capacity,
        None,
        pb::VolumeRole::Leaf,
    )
    .await;
    fill_random(&tc.volume_path(&v), "raw", capacity, chunks).unwrap();
    v
}

/// Waits until every host has registered that it reaches every one of `domains`: a host finds a new
/// domain on the shared storage at its next registration (at most a few seconds), and until then
/// it is no candidate for copies into it.
pub(crate) async fn wait_hosts_reach(tc: &TestCluster, domains: &[&str]) {
    let s = scheduler(tc).await;
    let count = tc.cluster.host_count();
    wait_for(
        Duration::from_secs(15),
        "every host to reach the domains",
        || {
            let mut s = s.clone();
            async move {
                let hosts = s
                    .list_hosts(pb::ListHostsRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .hosts;
                let reach = hosts.iter().filter_map(|h| h.host.as_ref()).filter(|h| {
                    domains
                        .iter()
                        .all(|d| h.storage_domain_ids.iter().any(|x| x == d))
                });
                (reach.count() == count).then_some(())
            }
        },
    )
    .await
    .unwrap();
}

/// Follows an operation to its end and asserts it succeeded.
pub(crate) async fn succeeded(tc: &TestCluster, name: &str) -> pb::Operation {
    let seen = follow(tc, name, DEADLINE).await.unwrap();
    let last = seen.last().cloned().unwrap();
    assert!(error_of(&last).is_none(), "{name} failed: {last:#?}");
    last
}

/// The job of each volume's copy in a finished operation, base first, from the job-tracker's
/// records. Every job written into a destination volume is checked: there is one (no retry), it is
/// the one the operation names, on the host the operation names, and it succeeded.
pub(crate) async fn copy_jobs(tc: &TestCluster, op: &pb::Operation) -> Vec<pb::Job> {
    let Some(pb::operation::Result::Response(dst)) = &op.result else {
        panic!("{} has no result disk: {op:#?}", op.name)
    };
    let mut tracker = tc.tracker().await;
    let mut out = Vec::new();
    for v in &op.metadata.as_ref().unwrap().volumes {
        let entity = format!("{}/{}/{}", dst.storage_domain_id, dst.image_id, v.volume_id);
        let jobs = tracker
            .list_jobs(pb::ListJobsRequest {
                entity: entity.clone(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .jobs;
        assert_eq!(jobs.len(), 1, "not one copy into {entity}: {jobs:#?}");
        let job = jobs[0].clone();
        assert_eq!(job.job_id, v.job_id, "{job:#?}");
        assert_eq!(job.host_id, v.host_id, "the operation names another host");
        assert_eq!(job.status(), pb::JobStatus::Succeeded, "{job:#?}");
        out.push(job);
    }
    assert!(!out.is_empty(), "{} copied nothing: {op:#?}", op.name);
    out
}

/// The host of each volume's copy in a finished operation, base first (see [`copy_jobs`]).
pub(crate) async fn copy_hosts(tc: &TestCluster, op: &pb::Operation) -> Vec<String> {
    copy_jobs(tc, op)
        .await
        .into_iter()
        .map(|j| j.host_id)
        .collect()
}

/// The most jobs that ran at the same moment, from their records' creation and last update.
fn most_at_once(jobs: &[pb::Job]) -> usize {
    let spans: Vec<(i128, i128)> = jobs
        .iter()
        .map(|j| {
            let (start, end) = (
                j.created_at.unwrap_or_default(),
                j.updated_at.unwrap_or_default(),
            );
            let nanos = |seconds: i64, n: i32| i128::from(seconds) * 1_000_000_000 + i128::from(n);
            (
                nanos(start.seconds, start.nanos),
                nanos(end.seconds, end.nanos),
            )
        })
        .collect();
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or_default()
}

/// The SPM's host id.
async fn spm_id(tc: &TestCluster) -> String {
    tc.cluster.host_id(tc.spm().await).to_string()
}

/// Sets `data_operations_by_hsm` through the scheduler and reads it back.
async fn set_by_hsm(tc: &TestCluster, value: bool) {
    let mut s = scheduler(tc).await;
    let key = "data_operations_by_hsm".to_string();
    let set = s
        .set_config(pb::SetConfigRequest {
            key: key.clone(),
            value: value.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.value, value.to_string());
    let got = s
        .get_config(pb::GetConfigRequest { key })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, value.to_string());
}

/// Starts moves of `disks` to `to` all at once; returns their operation names.
async fn start_moves(tc: &TestCluster, disks: &[pb::VolumeRef], to: &str) -> Vec<String> {
    join_all(
        disks
            .iter()
            .map(|d| start_move(tc, &d.storage_domain_id, &d.image_id, to)),
    )
    .await
}

/// Follows every operation to success; returns every copy's job, operation by operation.
async fn all_succeed(tc: &TestCluster, names: &[String]) -> Vec<pb::Job> {
    let ops = join_all(names.iter().map(|n| succeeded(tc, n))).await;
    let mut jobs = Vec::new();
    for op in &ops {
        jobs.extend(copy_jobs(tc, op).await);
    }
    jobs
}

fn hosts_of(jobs: &[pb::Job]) -> Vec<String> {
    jobs.iter().map(|j| j.host_id.clone()).collect()
}

/// Six 8 MiB moves between two fresh domains, sent at once on a cluster throttled to 4 MiB/s (so
/// each copy takes about two seconds and they can overlap); the copy job of each, all succeeded.
async fn six_overlapping_moves(tc: &TestCluster) -> Vec<pb::Job> {
    let (a, b) = (tc.domain().await, tc.domain().await);
    wait_hosts_reach(tc, &[&a, &b]).await;
    let mut disks = Vec::new();
    for _ in 0..6 {
        disks.push(single_disk(tc, &a, 8 * MIB, 8).await);
    }
    let names = start_moves(tc, &disks, &b).await;
    all_succeed(tc, &names).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_spreads_six_concurrent_moves_over_the_hosts() {
    // 8 MiB at 4 MiB/s: each copy takes about two seconds, so the six overlap.
    let tc = TestCluster::start(3, |c| throttle(c, 4 * MIB))
        .await
        .unwrap();
    let spm = spm_id(&tc).await;
    let jobs = six_overlapping_moves(&tc).await;
    let hosts = hosts_of(&jobs);

    assert_eq!(hosts.len(), 6, "{hosts:?}");
    assert!(
        most_at_once(&jobs) >= 3,
        "the copies hardly overlapped: {jobs:#?}"
    );
    let others: BTreeSet<&String> = hosts.iter().filter(|h| **h != spm).collect();
    assert!(
        others.len() >= 2,
        "copies ran on {hosts:?}, SPM {spm}: fewer than two hosts other than the SPM"
    );
    // Three hosts with two slots each hold the six copies: none ran more than its slots.
    for h in &hosts {
        let n = hosts.iter().filter(|x| *x == h).count();
        assert!(n <= 2, "{h} ran {n} of {hosts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_turn_to_start_a_flow_the_copies_still_run_at_once() {
    // One flow starts at a time (`--max-starting-flows 1`, `admission.rs`), and gives its turn
    // back once its copy is sent: six copies of two seconds each still overlap, and all end.
    let tc = TestCluster::start(3, |c| {
        throttle(c, 4 * MIB);
        c.env
            .push(("DATAPATH_MAX_STARTING_FLOWS".into(), "1".into()));
    })
    .await
    .unwrap();
    let jobs = six_overlapping_moves(&tc).await;
    assert_eq!(jobs.len(), 6, "{jobs:#?}");
    assert!(
        most_at_once(&jobs) >= 3,
        "a turn was held through the copy: {jobs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_operations_by_hsm_false_puts_every_copy_on_the_spm_until_set_back() {
    // At 2 MiB/s a 4 MiB disk copies in about two seconds, the chain's 8 MiB base in four.
    let tc = TestCluster::start(3, |c| throttle(c, 2 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    wait_hosts_reach(&tc, &[&a, &b]).await;
    let mut disks = Vec::new();
    for _ in 0..3 {
        disks.push(single_disk(&tc, &a, 4 * MIB, 4).await);
    }
    let chain = chain_disk(&tc, &a, 8 * MIB).await;
    let last = single_disk(&tc, &a, 2 * MIB, 2).await;
    let spm = spm_id(&tc).await;

    set_by_hsm(&tc, false).await;
    let names = start_moves(&tc, &disks, &b).await;
    let jobs = all_succeed(&tc, &names).await;
    assert_eq!(hosts_of(&jobs), vec![spm.clone(); 3], "SPM {spm}");
    // Two at once at most: the SPM's job slots, while the other hosts stayed idle.
    assert_eq!(most_at_once(&jobs), 2, "{jobs:#?}");

    // A chain's volumes are copied one after the other: the setting, switched back while the
    // base is being copied on the SPM, applies from the next volume on, without a restart.
    let name = start_move(&tc, &a, &chain[0].image_id, &b).await;
    let mut s = scheduler(&tc).await;
    wait_for(DEADLINE, "the base's copy to run", || {
        let (mut s, name) = (s.clone(), name.clone());
        async move {
            let op = s
                .get_operation(pb::GetOperationRequest { name })
                .await
                .ok()?
                .into_inner()
                .operation?;
            let base = op.metadata?.volumes.first().cloned()?;
            (base.status() == pb::JobStatus::Running).then_some(())
        }
    })
    .await
    .unwrap();
    set_by_hsm(&tc, true).await;
    let op = succeeded(&tc, &name).await;
    let hosts = copy_hosts(&tc, &op).await;
    assert_eq!(
        hosts[0], spm,
        "the base was copied while the setting was false"
    );
    assert!(
        hosts[1..].iter().all(|h| *h != spm),
        "the later volumes did not leave the SPM: {hosts:?} (SPM {spm})"
    );

    // And a following move: least-loaded prefers a host other than the SPM between idle hosts.
    let name = start_move(&tc, &a, &last.image_id, &b).await;
    let op = succeeded(&tc, &name).await;
    assert_ne!(copy_hosts(&tc, &op).await, vec![spm.clone()]);
    let state = s
        .get_config(pb::GetConfigRequest {
            key: "data_operations_by_hsm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.value, "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_cycles_through_the_hosts() {
    let tc = TestCluster::start(3, |c| c.host_selection = "round-robin".into())
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    wait_hosts_reach(&tc, &[&a, &b]).await;
    let mut hosts = Vec::new();
    for _ in 0..6 {
        let disk = single_disk(&tc, &a, 4 * MIB, 2).await;
        let name = start_move(&tc, &a, &disk.image_id, &b).await;
        let op = succeeded(&tc, &name).await;
        hosts.extend(copy_hosts(&tc, &op).await);
    }
    let first: BTreeSet<&String> = hosts[..3].iter().collect();
    assert_eq!(
        first.len(),
        3,
        "the first three moves did not use three hosts: {hosts:?}"
    );
    assert_eq!(hosts[..3], hosts[3..], "the turn did not repeat: {hosts:?}");
}

/// The example external policy as a process, preferring `prefer`.
fn start_selector(tc: &TestCluster, port: u16, prefer: &str) -> ManagedProcess {
    let dirs = search_dirs(None);
    let bin = find_binary("example-host-selector", &dirs).expect("build the workspace's binaries");
    let tls = match tc.cluster.pki() {
        Some(pki) => pki
            .issue(
                &datapath_tls::Identity::Plugin("host-selector".into()),
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap(),
        None => vec!["--insecure".to_string()],
    };
    let spec = ProcessSpec::new("host-selector", bin)
        .args(tls)
        .args([
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--prefer".to_string(),
            prefer.to_string(),
        ])
        .env("RUST_LOG", "debug");
    ManagedProcess::start(spec, &tc.cluster.dir().join("logs")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_policy_is_obeyed() {
    // The scheduler is told the selector's address at start; the selector, which needs a host id,
    // starts once the hosts have theirs (the scheduler connects lazily).
    let port = free_ports(1).unwrap()[0];
    let url = format!("https://127.0.0.1:{port}");
    let tc = TestCluster::start(3, |c| {
        c.host_selection = "external".into();
        c.host_selector_url = Some(url.clone());
    })
    .await
    .unwrap();
    let spm = spm_id(&tc).await;
    // The non-SPM host with the largest id: least-loaded, the fallback, would take the smallest.
    let chosen = tc
        .cluster
        .host_ids()
        .into_iter()
        .filter(|h| *h != spm)
        .max()
        .unwrap();
    let mut selector = start_selector(&tc, port, &chosen);
    wait_serving(
        &mut selector,
        &url,
        tc.cluster.client_tls(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    let (a, b) = (tc.domain().await, tc.domain().await);
    wait_hosts_reach(&tc, &[&a, &b]).await;
    let chain = chain_disk(&tc, &a, 8 * MIB).await;
    let disk = single_disk(&tc, &a, 4 * MIB, 2).await;
    let mut hosts = Vec::new();
    for img in [&chain[0].image_id, &disk.image_id] {
        let name = start_move(&tc, &a, img, &b).await;
        let op = succeeded(&tc, &name).await;
        hosts.extend(copy_hosts(&tc, &op).await);
    }
    assert_eq!(hosts, vec![chosen.clone(); 4], "SPM {spm}");
    // Each copy was the selector's answer, not the fallback's.
    let log = std::fs::read_to_string(selector.log_path()).unwrap();
    let answers = log.matches("host selected").count();
    assert!(
        answers >= 4,
        "the selector answered {answers} times:\n{log}"
    );
}
