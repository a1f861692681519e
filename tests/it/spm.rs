//! The SPM role: one host elected through etcd makes structural changes; the others refuse them and
//! name it; the role passes to another host when the SPM is killed or cut off, and dpctl follows it.
use std::time::{Duration, Instant};

use datapath_api::{
    error::{metadata, reason},
    pb::{self, Legality, VolumeFormat},
};
use nix::sys::signal::Signal;
use tonic::{Code, Status};

use crate::harness::*;

const MIB: u64 = 1 << 20;
const TTL: Duration = Duration::from_secs(4);
/// Time for the next candidate to be told and to take the role, beyond the TTL.
const MARGIN: Duration = Duration::from_secs(4);

fn short_ttl(c: &mut dpctl::local::ClusterConfig) {
    c.session_ttl = TTL;
}

/// A CreateVolume request for a new volume of a new image in `sd`.
fn new_volume(sd: &str) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        volume: Some(pb::VolumeRef {
            storage_domain_id: sd.into(),
            image_id: uuid::Uuid::new_v4().to_string(),
            volume_id: uuid::Uuid::new_v4().to_string(),
        }),
        format: VolumeFormat::Raw as i32,
        capacity_bytes: MIB,
        legality: Legality::Legal as i32,
        ..Default::default()
    }
}

/// CreateVolume on host `i`.
async fn create(tc: &TestCluster, i: usize, req: &pb::CreateVolumeRequest) -> Result<(), Status> {
    tc.host(i).await.create_volume(req.clone()).await.map(drop)
}

/// Asserts `err` is NOT_SPM naming host `spm` (its id and address).
fn assert_names_spm(tc: &TestCluster, err: &Status, spm: usize) {
    assert_eq!(
        (err.code(), reason(err).as_deref()),
        (Code::FailedPrecondition, Some("NOT_SPM")),
        "{err:?}"
    );
    let spm_id = tc.cluster.host_id(spm);
    assert_eq!(metadata(err, "spm_host_id").as_deref(), Some(spm_id));
    let address = tc
        .cluster
        .host_url(spm)
        .replace("https://", "")
        .replace("http://", "");
    assert_eq!(metadata(err, "spm_address"), Some(address));
    assert!(err.message().contains(spm_id), "{err:?}");
}

/// Whether host `i` answers CreateVolume with NOT_SPM naming host `spm` (used while waiting).
async fn refuses_naming(tc: &TestCluster, i: usize, sd: &str, spm: usize) -> bool {
    match create(tc, i, &new_volume(sd)).await {
        Ok(()) => panic!("host-{i} created a volume while host-{spm} is SPM"),
        Err(e) => {
            reason(&e).as_deref() == Some("NOT_SPM")
                && metadata(&e, "spm_host_id").as_deref() == Some(tc.cluster.host_id(spm))
        }
    }
}

/// Waits until a host other than `old` is SPM; returns it.
async fn successor(tc: &TestCluster, old: usize, deadline: Duration) -> usize {
    wait_for(deadline, "another host to become SPM", || async {
        tc.cluster.spm_index().await.ok()?.filter(|&i| i != old)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_is_spm_and_the_others_refuse_structural_verbs_naming_it() {
    let tc = TestCluster::start(3, |_| {}).await.unwrap();
    let spm = tc.spm().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != spm).collect();
    // Any host creates storage domains (an HSM verb).
    let sd = uuid::Uuid::new_v4().to_string();
    tc.host(others[0])
        .await
        .create_storage_domain(pb::CreateStorageDomainRequest {
            storage_domain_id: sd.clone(),
            name: "spm".into(),
        })
        .await
        .unwrap();

    // Exactly one host accepts CreateVolume; the others refuse, naming it, and write nothing.
    for &i in &others {
        let req = new_volume(&sd);
        let err = create(&tc, i, &req).await.unwrap_err();
        assert_names_spm(&tc, &err, spm);
        let volume = req.volume.unwrap();
        let image_dir = tc.volume_path(&volume);
        assert!(
            !image_dir.parent().unwrap().exists(),
            "host-{i} made the image directory of a refused volume"
        );
    }
    let req = new_volume(&sd);
    create(&tc, spm, &req).await.unwrap();
    let volume = req.volume.unwrap();
    assert!(tc.volume_path(&volume).exists());
    assert_eq!(tc.meta(&volume, "LEGALITY"), "LEGAL");
    assert!(tc.keys(&tc.layout().volume_leases()).await.is_empty());

    // DeleteImage elsewhere is refused and leaves the image whole.
    let before = sha256(&tc.volume_path(&volume));
    for &i in &others {
        let err = tc
            .host(i)
            .await
            .delete_image(pb::DeleteImageRequest {
                storage_domain_id: sd.clone(),
                image_id: volume.image_id.clone(),
            })
            .await
            .unwrap_err();
        assert_names_spm(&tc, &err, spm);
        assert_eq!(sha256(&tc.volume_path(&volume)), before);
        assert_eq!(tc.info(i, &volume).await.volume, Some(volume.clone()));
    }
    tc.spm_host()
        .await
        .delete_image(pb::DeleteImageRequest {
            storage_domain_id: sd.clone(),
            image_id: volume.image_id.clone(),
        })
        .await
        .unwrap();
    assert!(!tc.volume_path(&volume).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_spm_is_replaced_within_the_ttl() {
    let mut tc = TestCluster::start(3, short_ttl).await.unwrap();
    let sd = tc.domain().await;
    let old = tc.spm().await;
    let killed = Instant::now();
    tc.cluster.host_mut(old).signal(Signal::SIGKILL).unwrap();

    let new = successor(&tc, old, TTL + MARGIN).await;
    assert!(
        killed.elapsed() < TTL + MARGIN,
        "the role passed after {:?}",
        killed.elapsed()
    );
    let req = new_volume(&sd);
    create(&tc, new, &req).await.unwrap();
    assert!(tc.volume_path(req.volume.as_ref().unwrap()).exists());
    let third = (0..3).find(|&i| i != old && i != new).unwrap();
    let err = create(&tc, third, &new_volume(&sd)).await.unwrap_err();
    assert_names_spm(&tc, &err, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spm_cut_off_loses_the_role_and_names_its_successor_when_it_wakes() {
    let mut tc = TestCluster::start(3, short_ttl).await.unwrap();
    let sd = tc.domain().await;
    let old = tc.spm().await;
    tc.cluster.host_mut(old).signal(Signal::SIGSTOP).unwrap();
    let new = successor(&tc, old, TTL + MARGIN).await;
    let req = new_volume(&sd);
    let created = create(&tc, new, &req).await;
    tc.cluster.host_mut(old).signal(Signal::SIGCONT).unwrap();
    created.unwrap();

    // The first call after it wakes is already refused, whatever its session task has noticed yet.
    let req = new_volume(&sd);
    let refused = create(&tc, old, &req).await;
    assert!(refused.is_err(), "the deposed SPM accepted CreateVolume");
    assert!(
        !tc.volume_path(req.volume.as_ref().unwrap()).exists(),
        "the deposed SPM created a volume"
    );
    // It notices that its session was lost, steps down, and names the new SPM.
    let log_path = tc.cluster.host_mut(old).log_path().to_path_buf();
    wait_for(
        Duration::from_secs(10),
        "the old SPM to say it stepped down",
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            async move {
                (log.contains("session lost") && log.contains("no longer the SPM")).then_some(())
            }
        },
    )
    .await
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the old SPM to name the new one",
        || async { refuses_naming(&tc, old, &sd, new).await.then_some(()) },
    )
    .await
    .unwrap();
    tc.cluster.wait_host(old).await.unwrap();
    let err = create(&tc, old, &new_volume(&sd)).await.unwrap_err();
    assert_names_spm(&tc, &err, new);
    assert_eq!(tc.cluster.spm_index().await.unwrap(), Some(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpctl_follows_the_spm_for_structural_verbs() {
    let tc = TestCluster::start(2, |_| {}).await.unwrap();
    let sd = tc.domain().await;
    let other = 1 - tc.spm().await;
    let dpctl = |args: &[&str]| {
        let out = std::process::Command::new(
            dpctl::local::find_binary("dpctl", &dpctl::local::search_dirs(None)).unwrap(),
        )
        .envs(tc.dpctl_env())
        .args([
            "--job-tracker",
            &tc.cluster.job_tracker_url(),
            "--host",
            &tc.cluster.host_url(other),
        ])
        .args(args)
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "dpctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let path = dpctl(&["volume", "create", "--domain", &sd, "--size", "1M"]);
    let parts: Vec<&str> = path.split('/').collect();
    let [sd_id, img, vol] = parts[..] else {
        panic!("dpctl printed {path:?}");
    };
    let volume = pb::VolumeRef {
        storage_domain_id: sd_id.into(),
        image_id: img.into(),
        volume_id: vol.into(),
    };
    assert!(tc.volume_path(&volume).exists());
    dpctl(&["image", "delete", &sd, img]);
    assert!(!tc.volume_path(&volume).exists());
}

/// The SPM's leader key deleted behind its back (by hand, say): the next candidate leads at once,
/// and the old SPM — woken by its watch of the key, with no poll to wait for — steps down, refuses
/// structural verbs naming the new SPM, and campaigns again (its new key is queued behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spm_whose_leader_key_is_deleted_steps_down_at_once_and_campaigns_again() {
    let tc = TestCluster::start(2, |_| {}).await.unwrap();
    let sd = tc.domain().await;
    let old = tc.spm().await;
    let old_id = tc.cluster.host_id(old).to_string();
    let prefix = format!("{}/", tc.layout().election("spm"));
    let mut etcd = tc.etcd.clone();
    let candidates = |etcd: etcd_client::Client| {
        let (prefix, old_id) = (prefix.clone(), old_id.clone());
        async move {
            let resp = etcd
                .clone()
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .unwrap();
            resp.kvs()
                .iter()
                .filter(|kv| kv.value() == old_id.as_bytes())
                .map(|kv| (kv.key().to_vec(), kv.create_revision()))
                .collect::<Vec<_>>()
        }
    };
    let before = candidates(etcd.clone()).await;
    assert_eq!(before.len(), 1, "{before:?}");
    etcd.delete(before[0].0.clone(), None).await.unwrap();
    let deleted = Instant::now();

    let new = successor(&tc, old, Duration::from_secs(5)).await;
    wait_for(
        Duration::from_millis(1500),
        "the old SPM to campaign again",
        || async {
            let now = candidates(etcd.clone()).await;
            (now.len() == 1 && now[0].1 > before[0].1).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        deleted.elapsed() < Duration::from_secs(2),
        "the old SPM stepped down {:?} after its key was deleted",
        deleted.elapsed()
    );
    assert!(refuses_naming(&tc, old, &sd, new).await);
    create(&tc, new, &new_volume(&sd)).await.unwrap();
}
