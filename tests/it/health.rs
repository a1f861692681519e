//! `grpc.health.v1` on the real binaries: every service answers Check and Watch for the whole server
//! (`""`) and per service name, NOT_FOUND for a name it does not serve; a host-worker is NOT_SERVING
//! exactly while it has no valid session lease and SERVING again once it has registered under a new
//! one, whatever its peers do; the job-tracker and the scheduler follow etcd; health answers while
//! calls hanging on a dead etcd hold every slot of the concurrency limit.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use datapath_api::pb::{
    self, job_tracker_service_client::JobTrackerServiceClient,
    scheduler_service_client::SchedulerServiceClient,
};
use nix::sys::signal::Signal;
use tokio_stream::StreamExt as _;
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::harness::{wait_for, TestCluster};

const TTL: Duration = Duration::from_secs(4);
const SERVING: ServingStatus = ServingStatus::Serving;
const NOT_SERVING: ServingStatus = ServingStatus::NotServing;

async fn health(tc: &TestCluster, url: &str) -> HealthClient<Channel> {
    HealthClient::new(tc.channel(url).await)
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

/// One Check, which must answer within a second whatever the service is waiting on.
async fn check(tc: &TestCluster, url: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = health(tc, url).await;
    let answer = tokio::time::timeout(Duration::from_secs(1), client.check(request(service)))
        .await
        .unwrap_or_else(|_| panic!("Check({service:?}) of {url} took over a second"))?;
    Ok(answer.into_inner().status())
}

/// A Watch stream followed in the background: every message it brought, in order.
struct Watcher {
    what: String,
    seen: Arc<Mutex<Vec<ServingStatus>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(tc: &TestCluster, url: &str, service: &str) -> Self {
        let mut stream = health(tc, url)
            .await
            .watch(request(service))
            .await
            .unwrap_or_else(|e| panic!("Watch({service:?}) of {url}: {e}"))
            .into_inner();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Some(Ok(message)) = stream.next().await {
                    seen.lock().unwrap().push(message.status());
                }
            }
        });
        let watcher = Self {
            what: format!("Watch({service:?}) of {url}"),
            seen,
            task,
        };
        watcher.wait_last(SERVING, Duration::from_secs(5)).await;
        watcher
    }

    fn seen(&self) -> Vec<ServingStatus> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_last(&self, status: ServingStatus, deadline: Duration) {
        let what = format!("{} to say {status:?} (seen {:?})", self.what, self.seen());
        wait_for(deadline, &what, || async {
            (self.seen().last() == Some(&status)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; seen {:?}", self.seen()));
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The three services of a cluster: (URL, service name).
fn services(tc: &TestCluster) -> [(String, &'static str); 3] {
    [
        (
            tc.cluster.job_tracker_url(),
            "datapath.v1.JobTrackerService",
        ),
        (tc.cluster.host_url(0), "datapath.v1.HostWorkerService"),
        (tc.cluster.scheduler_url(), "datapath.v1.SchedulerService"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_check_and_watch_per_name_and_for_the_server() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    for (url, name) in services(&tc) {
        assert_eq!(check(&tc, &url, "").await.unwrap(), SERVING, "{url}");
        assert_eq!(
            check(&tc, &url, name).await.unwrap(),
            SERVING,
            "{url} {name}"
        );
        for unknown in ["datapath.v1.NoSuchService", "grpc.health.v1.Health"] {
            let err = check(&tc, &url, unknown).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "{url} {unknown}: {err:?}");
        }
        // Each server knows its own name only.
        for (_, other) in services(&tc).into_iter().filter(|(_, n)| *n != name) {
            let err = check(&tc, &url, other).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "{url} asked about {other}");
        }
        // Watch opens on both and says SERVING first (Watcher::start waits for it).
        for service in ["", name] {
            let watcher = Watcher::start(&tc, &url, service).await;
            assert_eq!(watcher.seen(), [SERVING]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_every_service_goes_not_serving_and_back() {
    // Two slots per server: the calls below that hang on the stopped etcd fill them.
    let mut tc = TestCluster::start(1, |c| {
        c.session_ttl = TTL;
        c.env
            .push(("DATAPATH_CONCURRENCY_LIMIT".into(), "2".into()));
    })
    .await
    .unwrap();
    let host_id = tc.cluster.host_id(0).to_string();
    let lease_before = registered_lease(&tc, &host_id).await.unwrap();
    let mut watchers = Vec::new();
    for (url, name) in services(&tc) {
        watchers.push(Watcher::start(&tc, &url, "").await);
        watchers.push(Watcher::start(&tc, &url, name).await);
    }

    tc.cluster.etcd_mut().signal(Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let hanging = hang_calls(&tc, 4).await;
    for w in &watchers {
        w.wait_last(NOT_SERVING, TTL * 3).await;
    }
    let all_down = stopped.elapsed();
    // Calls stuck on etcd hold every slot, and health still answers at once.
    for (url, name) in services(&tc) {
        assert_eq!(check(&tc, &url, "").await.unwrap(), NOT_SERVING, "{url}");
        assert_eq!(check(&tc, &url, name).await.unwrap(), NOT_SERVING, "{url}");
    }
    tc.cluster.etcd_mut().signal(Signal::SIGCONT).unwrap();
    for w in &watchers {
        w.wait_last(SERVING, Duration::from_secs(30)).await;
    }
    eprintln!(
        "FIGURE health: every service NOT_SERVING {all_down:?} after etcd stopped; SERVING {:?} after it resumed",
        stopped.elapsed() - all_down
    );
    for w in &watchers {
        assert_eq!(
            w.seen(),
            [SERVING, NOT_SERVING, SERVING],
            "{}: one message per change",
            w.what
        );
    }
    // SERVING again means registered again, under a new session lease.
    let lease_after = registered_lease(&tc, &host_id).await.unwrap();
    assert_ne!(lease_after, lease_before, "the host kept its lost lease");
    hanging.iter().for_each(|h| h.abort());
}

/// Sends `n` calls that read etcd to the job-tracker and to the scheduler each; they hang while
/// etcd is stopped.
async fn hang_calls(tc: &TestCluster, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let tracker = JobTrackerServiceClient::new(tc.channel(&tc.cluster.job_tracker_url()).await);
    let scheduler = SchedulerServiceClient::new(tc.channel(&tc.cluster.scheduler_url()).await);
    let mut calls = Vec::new();
    for _ in 0..n {
        let mut t = tracker.clone();
        calls.push(tokio::spawn(async move {
            let _ = t.list_jobs(pb::ListJobsRequest::default()).await;
        }));
        let mut s = scheduler.clone();
        calls.push(tokio::spawn(async move {
            let _ = s.list_hosts(pb::ListHostsRequest {}).await;
        }));
    }
    calls
}

/// The session lease `hosts/<host_id>` is bound to, if the host is registered.
async fn registered_lease(tc: &TestCluster, host_id: &str) -> Option<i64> {
    let host_id = datapath_api::ids::HostId::parse("host_id", host_id).ok()?;
    let key = tc.layout().host(host_id);
    let resp = tc.etcd.clone().get(key, None).await.ok()?;
    resp.kvs().first().map(|kv| kv.lease())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_etcd_is_not_serving_until_it_registers_again() {
    let tc = TestCluster::start(2, |c| {
        c.isolate_hosts = true;
        c.session_ttl = TTL;
    })
    .await
    .unwrap();
    let lab = tc.cluster.network().unwrap();
    let etcd: std::net::SocketAddr = tc.cluster.etcd().endpoints_on(lab.gateway())[0]
        .split_once("://")
        .map(|(_, a)| a.to_string())
        .unwrap()
        .parse()
        .unwrap();
    let host_id = tc.cluster.host_id(0).to_string();
    let lease_before = registered_lease(&tc, &host_id).await.unwrap();
    let cut_host = [
        Watcher::start(&tc, &tc.cluster.host_url(0), "").await,
        Watcher::start(
            &tc,
            &tc.cluster.host_url(0),
            "datapath.v1.HostWorkerService",
        )
        .await,
    ];
    let other_host = Watcher::start(&tc, &tc.cluster.host_url(1), "").await;

    // Only host 0's path to etcd is cut: calls into it still arrive.
    lab.block_outbound(0, etcd).unwrap();
    let cut = Instant::now();
    for w in &cut_host {
        w.wait_last(NOT_SERVING, TTL * 2).await;
    }
    assert!(
        cut.elapsed() < TTL,
        "NOT_SERVING {:?} after the cut, not within the TTL {TTL:?}",
        cut.elapsed()
    );
    for (url, name) in services(&tc) {
        let expected = if url == tc.cluster.host_url(0) {
            NOT_SERVING
        } else {
            SERVING
        };
        assert_eq!(check(&tc, &url, name).await.unwrap(), expected, "{url}");
    }
    assert_eq!(
        check(&tc, &tc.cluster.host_url(1), "").await.unwrap(),
        SERVING
    );
    // Its registration expired with its lease.
    wait_for(TTL * 2, "host 0's registration to expire", || async {
        registered_lease(&tc, &host_id)
            .await
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();

    lab.heal(0).unwrap();
    for w in &cut_host {
        w.wait_last(SERVING, Duration::from_secs(30)).await;
        assert_eq!(w.seen(), [SERVING, NOT_SERVING, SERVING], "{}", w.what);
    }
    let lease_after = registered_lease(&tc, &host_id)
        .await
        .expect("SERVING before it registered again");
    assert_ne!(lease_after, lease_before);
    assert_eq!(other_host.seen(), [SERVING], "host 1 was disturbed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_stays_serving_while_every_peer_is_stopped() {
    let mut tc = TestCluster::start(2, |c| c.session_ttl = TTL)
        .await
        .unwrap();
    let host_id = tc.cluster.host_id(0).to_string();
    let watcher = Watcher::start(&tc, &tc.cluster.host_url(0), "").await;
    let lease = registered_lease(&tc, &host_id).await.unwrap();

    tc.cluster
        .job_tracker_mut()
        .signal(Signal::SIGSTOP)
        .unwrap();
    tc.cluster.scheduler_mut().signal(Signal::SIGSTOP).unwrap();
    tc.cluster.host_mut(1).signal(Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    // Its registration is bound to its session lease: still there under the same lease after two
    // TTLs with every peer stopped, the lease was renewed all along. Gone or under another lease,
    // it was not.
    let result = wait_for(
        Duration::from_secs(20),
        "two TTLs under the same lease",
        || async {
            if registered_lease(&tc, &host_id).await != Some(lease) {
                return Some(false);
            }
            (stopped.elapsed() > TTL * 2).then_some(true)
        },
    )
    .await;
    let health_now = check(&tc, &tc.cluster.host_url(0), "").await;
    let lease_now = registered_lease(&tc, &host_id).await;
    tc.cluster
        .job_tracker_mut()
        .signal(Signal::SIGCONT)
        .unwrap();
    tc.cluster.scheduler_mut().signal(Signal::SIGCONT).unwrap();
    tc.cluster.host_mut(1).signal(Signal::SIGCONT).unwrap();
    assert!(
        result.unwrap(),
        "the host's registration went or changed lease"
    );
    assert_eq!(health_now.unwrap(), SERVING);
    assert_eq!(lease_now, Some(lease), "the host lost its lease");
    assert_eq!(watcher.seen(), [SERVING], "its health changed");
}

/// A registration deleted or edited by hand (`etcdctl del` / `put`) is written again within a
/// moment: the host watches its own key (before, it read the key back every 30 s, and this test's
/// 5 s deadline would have failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_deleted_or_edited_by_hand_is_written_again_at_once() {
    use prost::Message as _;
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let host_id = tc.cluster.host_id(0).to_string();
    let lease = registered_lease(&tc, &host_id).await.unwrap();
    let key = tc
        .layout()
        .host(datapath_api::ids::HostId::parse("host_id", &host_id).unwrap());
    let stored = || async {
        let resp = tc.etcd.clone().get(key.clone(), None).await.ok()?;
        let kv = resp.kvs().first()?;
        Some((pb::Host::decode(kv.value()).ok()?, kv.lease()))
    };
    let (record, _) = stored().await.unwrap();

    tc.etcd.clone().delete(key.clone(), None).await.unwrap();
    let written_back = |what: &'static str| {
        wait_for(Duration::from_secs(5), what, || async {
            stored()
                .await
                .filter(|(h, l)| *h == record && *l == lease)
                .map(|_| ())
        })
    };
    written_back("the deleted record back").await.unwrap();

    let edited = pb::Host {
        job_slots: 99,
        ..record.clone()
    };
    tc.etcd
        .clone()
        .put(key.clone(), edited.encode_to_vec(), None)
        .await
        .unwrap();
    written_back("the edited record written back")
        .await
        .unwrap();
}
