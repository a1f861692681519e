//! Mutual TLS on every service (the security issue): the launcher's cluster runs on certificates from
//! its own CA; grpcurl with the operator's certificate from `cluster.env` reaches every service
//! through reflection and health; a caller without a certificate, with one from another CA, or with
//! an expired one is refused in the handshake; a host-worker refuses a certificate for another host.
use std::time::Duration;

use datapath_tls::{ca::Ca, Identity, TlsOptions};
use dpctl::local::{free_ports, ManagedProcess, ProcessSpec};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::harness::{run, wait_for, TestCluster};

/// `host:port` of a service URL.
fn address(url: &str) -> String {
    url.split_once("://").map_or(url, |(_, a)| a).to_string()
}

/// The URLs of every service of `tc`, with the service grpcurl must list there.
fn services(tc: &TestCluster) -> Vec<(String, &'static str)> {
    vec![
        (
            tc.cluster.job_tracker_url(),
            "datapath.v1.JobTrackerService",
        ),
        (tc.cluster.scheduler_url(), "datapath.v1.SchedulerService"),
        (tc.cluster.host_url(0), "datapath.v1.HostWorkerService"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_with_the_operator_certificate_lists_and_checks_every_service() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    assert!(
        tc.cluster.pki().is_some(),
        "the launcher did not make certificates"
    );
    for (url, service) in services(&tc) {
        assert!(url.starts_with("https://"), "{url}");
        let addr = address(&url);
        let listed = tc.grpcurl(&[&addr, "list"]).unwrap();
        assert!(listed.contains(service), "{addr}: {listed}");
        assert!(listed.contains("grpc.health.v1.Health"), "{addr}: {listed}");
        let checked = tc
            .grpcurl(&["-d", "{}", &addr, "grpc.health.v1.Health/Check"])
            .unwrap();
        assert!(checked.contains("SERVING"), "{addr}: {checked}");
    }
}

/// Health Check through a channel with `tls`: whether the server let the caller in.
async fn let_in(url: &str, tls: &datapath_tls::Tls) -> bool {
    let call = async {
        let channel = dpctl::client::channel(url, Some(tls)).await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        anyhow::Ok(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), call).await,
        Ok(Ok(()))
    )
}

/// grpcurl with `args` ran and failed to reach the service.
fn refused(args: &[&str]) {
    let args: Vec<&str> = ["-connect-timeout", "3"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    match run("grpcurl", &args) {
        Ok(out) => panic!("grpcurl {args:?} got in: {out}"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("failed:"), "grpcurl did not run: {e}");
            assert!(
                !e.contains("datapath.v1"),
                "grpcurl {args:?} listed services: {e}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_certificate_are_refused_by_every_service() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let pki_dir = tc.cluster.config().pki_dir();
    let ca = Ca::load(&pki_dir).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pki_dir.join("ca.pem"), dir.path().join("ca.pem")).unwrap();
    let mallory = Identity::Operator("mallory".into());
    // The cluster CA's certificate, but expired yesterday.
    let now = time::OffsetDateTime::now_utc();
    ca.issue_valid(
        &mallory,
        &[],
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap()
    .write(dir.path(), "expired")
    .unwrap();
    // A valid certificate from another CA (the client still trusts the cluster CA).
    let other_dir = tempfile::tempdir().unwrap();
    Ca::init(other_dir.path(), "other")
        .unwrap()
        .issue(&mallory, &[], datapath_tls::ca::LEAF_LIFETIME)
        .unwrap()
        .write(dir.path(), "foreign")
        .unwrap();
    let load = |name: &str| {
        TlsOptions::in_dir(dir.path(), name)
            .load()
            .unwrap()
            .unwrap()
    };
    let (expired, foreign) = (load("expired"), load("foreign"));
    let operator = tc.cluster.client_tls().unwrap();
    let ca_pem = pki_dir.join("ca.pem").display().to_string();

    for (url, _) in services(&tc) {
        let addr = address(&url);
        assert!(
            let_in(&url, operator).await,
            "the operator was refused by {url}"
        );
        assert!(
            !let_in(&url, &expired).await,
            "an expired certificate got into {url}"
        );
        assert!(
            !let_in(&url, &foreign).await,
            "another CA's certificate got into {url}"
        );
        // Plaintext, and TLS without a client certificate: grpcurl runs and is refused.
        refused(&["-plaintext", &addr, "list"]);
        refused(&["-cacert", &ca_pem, &addr, "list"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_worker_refuses_a_certificate_issued_for_another_host() {
    let mut tc = TestCluster::start(1, |_| {}).await.unwrap();
    // Host 0's flags and certificate, but a state directory of its own: a new host id.
    let mut spec: ProcessSpec = tc.cluster.host_mut(0).spec().clone();
    let state = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let set = |args: &mut Vec<String>, flag: &str, value: String| {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value;
    };
    set(
        &mut spec.args,
        "--state-dir",
        state.path().display().to_string(),
    );
    set(
        &mut spec.args,
        "--listen",
        format!("127.0.0.1:{}", ports[0]),
    );
    set(
        &mut spec.args,
        "--metrics-listen",
        format!("127.0.0.1:{}", ports[1]),
    );
    spec.name = "host-impostor".into();
    let mut process = ManagedProcess::start(spec, &tc.cluster.config().log_dir()).unwrap();
    let status = wait_for(Duration::from_secs(20), "the impostor to exit", || {
        let exited = process.exit_status();
        async move { exited }
    })
    .await
    .unwrap();
    assert!(!status.success(), "it ran");
    let log = std::fs::read_to_string(process.log_path()).unwrap();
    let own =
        Identity::Host(datapath_api::ids::HostId::parse("id", tc.cluster.host_id(0)).unwrap());
    assert!(
        log.contains(&format!("the certificate names {own}")),
        "{log}"
    );
}

/// An etcd client with the cluster's TLS files from `dir`: `ca.pem`, and `<name>.pem`/`.key`
/// unless `name` is `None` (no client certificate).
async fn etcd_as(
    tc: &TestCluster,
    dir: &std::path::Path,
    name: Option<&str>,
) -> Result<etcd_client::Client, etcd_client::Error> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let mut tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")));
    if let Some(name) = name {
        tls = tls.identity(etcd_client::Identity::from_pem(
            read(&format!("{name}.pem")),
            read(&format!("{name}.key")),
        ));
    }
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(3));
    etcd_client::Client::connect(tc.cluster.etcd_endpoints(), Some(options)).await
}

/// Whether `client` can read and can write a key under the cluster's prefix.
async fn reads_and_writes(
    client: Result<etcd_client::Client, etcd_client::Error>,
    key: &str,
) -> (bool, bool) {
    let Ok(mut client) = client else {
        return (false, false);
    };
    let read = client.get(key, None).await.is_ok();
    let wrote = client.put(key, "x", None).await.is_ok();
    (read, wrote)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_serves_datapath_users_only_and_only_their_prefix() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let pki = tc.cluster.config().pki_dir();
    let ca = Ca::load(&pki).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pki.join("ca.pem"), dir.path().join("ca.pem")).unwrap();
    let issue = |identity: &Identity, name: &str| {
        ca.issue(identity, &[], datapath_tls::ca::LEAF_LIFETIME)
            .unwrap()
            .write(dir.path(), name)
            .unwrap();
    };
    issue(&Identity::Operator("ops".into()), "datapath");
    issue(&Identity::Viewer("eyes".into()), "viewer");
    ca.issue_etcd_user("mallory")
        .unwrap()
        .write(dir.path(), "mallory")
        .unwrap();
    let key = format!("{}tls-test", tc.cluster.etcd_prefix());

    // A datapath user reads and writes its prefix — and nothing else.
    assert_eq!(
        reads_and_writes(etcd_as(&tc, dir.path(), Some("datapath")).await, &key).await,
        (true, true)
    );
    assert_eq!(
        reads_and_writes(
            etcd_as(&tc, dir.path(), Some("datapath")).await,
            "/elsewhere"
        )
        .await,
        (false, false),
        "the datapath user reached outside its prefix"
    );
    // A viewer reads only.
    assert_eq!(
        reads_and_writes(etcd_as(&tc, dir.path(), Some("viewer")).await, &key).await,
        (true, false)
    );
    // A certificate of the right CA naming no etcd user, and no certificate at all: nothing.
    assert_eq!(
        reads_and_writes(etcd_as(&tc, dir.path(), Some("mallory")).await, &key).await,
        (false, false)
    );
    assert_eq!(
        reads_and_writes(etcd_as(&tc, dir.path(), None).await, &key).await,
        (false, false)
    );
    // Nor in plaintext.
    let plain = tc.cluster.etcd_endpoints()[0].replace("https://", "http://");
    let plaintext = etcd_client::Client::connect(
        [plain],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(3))),
    )
    .await;
    assert_eq!(reads_and_writes(plaintext, &key).await, (false, false));
}
