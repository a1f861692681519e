//! dpctl's scheduler commands against the real scheduler: move and clone with progress, disk status,
//! operations, settings, hosts — and grpcurl against the scheduler with nothing but reflection.
use std::process::{Command, Output};

use crate::{
    disks::{chain_disk, moved, template},
    harness::{sha256, TestCluster},
};

const MIB: u64 = 1 << 20;

fn dpctl(tc: &TestCluster, args: &[&str]) -> Output {
    let bin = dpctl::local::find_binary("dpctl", &dpctl::local::search_dirs(None)).unwrap();
    Command::new(bin)
        .envs(tc.dpctl_env())
        .args(["--scheduler", &tc.cluster.scheduler_url()])
        .args(["--job-tracker", &tc.cluster.job_tracker_url()])
        .args(args)
        .output()
        .expect("run dpctl")
}

fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dpctl failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test]
async fn dpctl_moves_and_clones_disks_and_shows_operations() {
    let tc = TestCluster::start(3, |_| {}).await.unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let img = src[0].image_id.clone();
    let leaf_before = crate::disks::content_sha256(&tc.volume_path(&src[2]), "qcow2");

    let hosts = ok(dpctl(&tc, &["hosts"]));
    assert_eq!(hosts.matches("spm").count(), 1, "{hosts}");

    // Plain progress lines on a pipe, and the operation's end.
    let out = dpctl(&tc, &["disk", "move", &a, &img, &b]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok(out);
    assert!(stdout.contains("operations/"), "{stdout}");
    assert!(stderr.contains("100%"), "{stderr}");
    let leaf = moved(&src[2], &b);
    assert_eq!(
        crate::disks::content_sha256(&tc.volume_path(&leaf), "qcow2"),
        leaf_before
    );
    let status = ok(dpctl(&tc, &["disk", "status", &b, &img]));
    assert!(status.starts_with("ok"), "{status}");

    // A second move of the same disk back, asked for the same way but with a request id: one
    // operation, even when asked twice.
    let rid = uuid::Uuid::new_v4().to_string();
    let first = ok(dpctl(
        &tc,
        &["disk", "move", &b, &img, &a, "--request-id", &rid],
    ));
    let again = ok(dpctl(
        &tc,
        &[
            "disk",
            "move",
            &b,
            &img,
            &a,
            "--request-id",
            &rid,
            "--detach",
        ],
    ));
    let name = |s: &str| {
        s.split_whitespace()
            .find(|w| w.starts_with("operations/"))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(name(&first), name(&again));

    let tpl = template(&tc, &a, 8 * MIB).await;
    let new_img = uuid::Uuid::new_v4().to_string();
    let new_vol = uuid::Uuid::new_v4().to_string();
    ok(dpctl(
        &tc,
        &[
            "disk",
            "clone",
            &a,
            &tpl.image_id,
            &tpl.volume_id,
            &b,
            "--format",
            "raw",
            "--image-id",
            &new_img,
            "--volume-id",
            &new_vol,
        ],
    ));
    let clone = datapath_api::pb::VolumeRef {
        storage_domain_id: b.clone(),
        image_id: new_img,
        volume_id: new_vol,
    };
    assert_eq!(
        sha256(&tc.volume_path(&clone)),
        sha256(&tc.volume_path(&tpl))
    );

    let ops = ok(dpctl(&tc, &["-o", "json", "ops", "list"]));
    assert_eq!(ops.matches("\"name\"").count(), 3, "{ops}");
    // The API pages in the order operations were started (AIP-158).
    let mut s = crate::disks::scheduler(&tc).await;
    let list = |token: String| datapath_api::pb::ListOperationsRequest {
        page_size: 2,
        page_token: token,
        ..Default::default()
    };
    let p1 = s
        .list_operations(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.operations.len(), 2);
    assert!(!p1.next_page_token.is_empty());
    let p2 = s
        .list_operations(list(p1.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.operations.len(), 1);
    assert!(p2.next_page_token.is_empty());
    let created = |o: &datapath_api::pb::Operation| {
        let t = o.metadata.as_ref().unwrap().created_at.unwrap();
        (t.seconds, t.nanos)
    };
    let all: Vec<_> = p1
        .operations
        .iter()
        .chain(&p2.operations)
        .map(created)
        .collect();
    assert!(
        all.windows(2).all(|w| w[0] <= w[1]),
        "not in the order started: {all:?}"
    );
    // A filter that only the last operation matches, with pages of one: the reads from etcd go on
    // past the operations that do not match (two per read here) until the page is full.
    let cloned = s
        .list_operations(datapath_api::pb::ListOperationsRequest {
            image_id: clone.image_id.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cloned.operations.len(), 1, "{cloned:?}");
    assert!(cloned.next_page_token.is_empty(), "{cloned:?}");
    assert_eq!(
        cloned.operations[0].name, p2.operations[0].name,
        "the clone, started last"
    );
    let running = s
        .list_operations(datapath_api::pb::ListOperationsRequest {
            done: Some(false),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(running.operations.is_empty() && running.next_page_token.is_empty());
    let got = ok(dpctl(&tc, &["ops", "get", &name(&first)]));
    assert!(got.contains(&name(&first)), "{got}");

    assert_eq!(
        ok(dpctl(&tc, &["config", "get", "data_operations_by_hsm"])).trim(),
        "data_operations_by_hsm=true"
    );
    ok(dpctl(
        &tc,
        &["config", "set", "data_operations_by_hsm", "false"],
    ));
    assert_eq!(
        ok(dpctl(&tc, &["config", "get", "data_operations_by_hsm"])).trim(),
        "data_operations_by_hsm=false"
    );
    let bad = dpctl(&tc, &["config", "set", "no_such_setting", "1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("key"));

    // grpcurl sees the scheduler through reflection alone.
    let addr = tc
        .cluster
        .scheduler_url()
        .split_once("://")
        .map_or(String::new(), |(_, a)| a.to_string());
    let out = tc.grpcurl(&[&addr, "list"]).unwrap();
    assert!(out.contains("datapath.v1.SchedulerService"), "{out}");
    let out = tc
        .grpcurl(&["-d", "{}", &addr, "datapath.v1.SchedulerService/ListHosts"])
        .unwrap();
    assert_eq!(out.matches("\"isSpm\": true").count(), 1, "{out}");
}
