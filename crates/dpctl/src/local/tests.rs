//! The launcher end to end with stand-in services (`examples/fake_service.rs`, built by `cargo test`)
//! and the real etcd: start-up order, readiness, host ids, restarts, signals, `cluster.env`, stop.
use std::path::PathBuf;

use nix::sys::signal::Signal;

use super::*;

/// A directory with `job-tracker` and `host-worker` links to the fake service, or `None` when the
/// example or etcd is missing (e.g. under `cargo test --lib`).
fn fake_bin_dir(tmp: &std::path::Path) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let fake = exe.parent()?.parent()?.join("examples/fake_service");
    if !fake.is_file() || find_binary("etcd", &[]).is_err() {
        eprintln!("{} or etcd is missing; skipping", fake.display());
        return None;
    }
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin).ok()?;
    for name in ["job-tracker", "host-worker", "etcd"] {
        let target = if name == "etcd" {
            find_binary("etcd", &[]).ok()?
        } else {
            fake.clone()
        };
        std::os::unix::fs::symlink(target, bin.join(name)).ok()?;
    }
    Some(bin)
}

#[tokio::test]
async fn a_cluster_starts_restarts_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(bin_dir) = fake_bin_dir(tmp.path()) else {
        return;
    };
    let config = ClusterConfig {
        hosts: 2,
        dir: tmp.path().join("cluster"),
        bin_dir: Some(bin_dir),
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await.unwrap();

    let ids = cluster.host_ids();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert!(uuid::Uuid::try_parse(&ids[0]).is_ok());
    assert!(check_serving(&cluster.job_tracker_url()).await.unwrap());
    let log = std::fs::read_to_string(cluster.dir().join("logs/host-1.log")).unwrap();
    assert!(log.contains("--storage-root"), "{log}");
    assert!(log.contains(&format!("--job-tracker {}", cluster.job_tracker_url())));

    let env_path = cluster.dir().join("cluster.env");
    cluster.write_env(&env_path).unwrap();
    let env = std::fs::read_to_string(&env_path).unwrap();
    assert!(
        env.contains(&format!("DATAPATH_HOST_1_ID={}\n", ids[1])),
        "{env}"
    );
    assert!(env.contains(&format!(
        "DATAPATH_JOB_TRACKER={}\n",
        cluster.job_tracker_url()
    )));

    // A frozen host does not answer; thawed, it does.
    cluster.host_mut(0).signal(Signal::SIGSTOP).unwrap();
    assert!(check_serving(&cluster.host_url(0)).await.is_err());
    cluster.host_mut(0).signal(Signal::SIGCONT).unwrap();
    cluster.wait_host(0).await.unwrap();

    // A crashed host restarts on the same port with the same id.
    let pid = cluster.host_mut(1).pid();
    cluster.host_mut(1).kill().unwrap();
    assert!(!cluster.host_mut(1).is_running());
    cluster.restart_host(1).await.unwrap();
    assert_ne!(cluster.host_mut(1).pid(), pid);
    assert_eq!(cluster.host_id(1), ids[1]);
    cluster.restart_job_tracker().await.unwrap();
    cluster.restart_etcd().await.unwrap();

    cluster.stop().await.unwrap();
    let log = std::fs::read_to_string(tmp.path().join("cluster/logs/host-0.log")).unwrap();
    assert!(log.contains("fake service: SIGTERM"), "{log}");
}

#[tokio::test]
async fn a_service_that_dies_is_reported_with_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(bin_dir) = fake_bin_dir(tmp.path()) else {
        return;
    };
    // `false` exits at once: the error must say so and quote the log.
    std::fs::remove_file(bin_dir.join("host-worker")).unwrap();
    std::os::unix::fs::symlink(
        find_binary("false", &[]).unwrap(),
        bin_dir.join("host-worker"),
    )
    .unwrap();
    let config = ClusterConfig {
        dir: tmp.path().join("cluster"),
        bin_dir: Some(bin_dir),
        ..ClusterConfig::default()
    };
    let err = Cluster::start(config).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("host-0 exited"), "{text}");
    assert!(text.contains("--- dpctl: starting"), "{text}");
}
