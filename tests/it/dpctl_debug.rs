//! `dpctl debug etcd` against a real cluster's etcd: after a move it names every host, the SPM, the
//! scheduler leader, the move's flow and its jobs; during a copy, the volume lease with its holder,
//! job and TTL left; `--json` parses and says the same.
use std::process::Command;

use datapath_api::pb;
use serde_json::Value;

use crate::{
    disks::chain_disk,
    harness::{throttle, TestCluster},
};

const MIB: u64 = 1 << 20;

/// Runs `dpctl debug etcd` on the cluster's etcd and prefix; its stdout.
pub(crate) fn debug_etcd(tc: &TestCluster, extra: &[&str]) -> String {
    let bin = dpctl::local::find_binary("dpctl", &dpctl::local::search_dirs(None)).unwrap();
    let out = Command::new(bin)
        .envs(tc.dpctl_env())
        .args(["debug", "etcd"])
        .args(["--etcd-endpoints", &tc.cluster.etcd_endpoints().join(",")])
        .args(["--etcd-prefix", tc.cluster.etcd_prefix()])
        .args(extra)
        .output()
        .expect("run dpctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dpctl debug etcd failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json(tc: &TestCluster) -> Value {
    let text = debug_etcd(tc, &["--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_etcd_names_hosts_spm_flow_jobs_and_volume_leases() {
    let tc = TestCluster::start(2, |c| {
        c.session_ttl = std::time::Duration::from_secs(4);
        throttle(c, 8 * MIB);
    })
    .await
    .unwrap();
    let spm = tc.cluster.host_id(tc.spm().await).to_string();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let img = src[0].image_id.clone();
    let name = crate::disks::start_move(&tc, &a, &img, &b).await;
    let done = crate::disks::follow(&tc, &name, std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(done.done && done.result.is_some(), "{done:?}");
    let flow = crate::invariants::flow(&tc, &name).await.unwrap();
    let job_ids: Vec<String> = flow.volumes.iter().map(|v| v.job_id.clone()).collect();
    assert!(job_ids.iter().all(|j| !j.is_empty()), "{flow:?}");

    let text = debug_etcd(&tc, &[]);
    eprintln!("dpctl debug etcd after the move:\n{text}");
    for host in tc.cluster.host_ids() {
        assert!(text.contains(&host), "host {host} missing:\n{text}");
    }
    let spm_row = text
        .lines()
        .find(|l| l.starts_with(&spm))
        .unwrap_or_else(|| panic!("no row for the SPM {spm}:\n{text}"));
    assert!(spm_row.contains(" spm "), "{spm_row}");
    assert!(text.contains(&format!("spm        {spm}")), "{text}");
    assert!(text.contains(&name), "flow {} missing:\n{text}", name);
    assert!(text.contains("move_disk"), "{text}");
    for job in &job_ids {
        assert!(text.contains(job.as_str()), "job {job} missing:\n{text}");
    }
    assert!(
        text.contains(&format!("{b}/{img}")),
        "generations of {b}/{img}:\n{text}"
    );

    let j = json(&tc);
    assert_eq!(j["spm"], spm.as_str());
    let leader = j["schedulerLeader"].as_str().expect("a scheduler leader");
    assert!(tc.cluster.scheduler_url().ends_with(leader), "{leader}");
    let mut hosts = names(&j["hosts"]);
    hosts.sort();
    let mut expected = tc.cluster.host_ids();
    expected.sort();
    assert_eq!(hosts, expected);
    for host in j["hosts"].as_array().unwrap() {
        assert!(host["ttlLeft"].as_i64().unwrap() > 0, "{host}");
        assert_eq!(host["value"]["hostId"], host["name"]);
    }
    let flows = j["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0]["value"]["operation"]["name"], name.as_str());
    let jobs = names(&j["jobs"]);
    assert!(job_ids.iter().all(|id| jobs.contains(id)), "{jobs:?}");

    // During a copy: its volume lease, held by the copying host for the job, with time left.
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 64 * MIB, 32)
        .await;
    let job_id = tc.start_copy(1, &src, &dst).await;
    tc.wait_for_lease().await;
    let text = debug_etcd(&tc, &[]);
    let volume = format!(
        "{}/{}/{}",
        dst.storage_domain_id, dst.image_id, dst.volume_id
    );
    let row = text
        .lines()
        .find(|l| l.starts_with(&volume))
        .unwrap_or_else(|| panic!("no volume lease row for {volume}:\n{text}"));
    assert!(
        row.contains(tc.cluster.host_id(1)) && row.contains(&job_id),
        "{row}"
    );
    assert!(
        row.contains("s/4s)"),
        "no TTL left of the 4 s session: {row}"
    );
    let j = json(&tc);
    let lease = &j["volumeLeases"][0];
    assert_eq!(lease["name"], volume.as_str());
    assert_eq!(lease["value"]["hostId"], tc.cluster.host_id(1));
    assert_eq!(lease["value"]["jobId"], job_id.as_str());
    assert!(lease["ttlLeft"].as_i64().unwrap() > 0, "{lease}");
    assert!(lease["lease"].as_i64().unwrap() != 0);
}
