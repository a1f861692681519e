//! `/metrics` end to end: every service's page is valid Prometheus text (checked by the real
//! `promtool check metrics`, then read back in Rust), and after a known copy, a bad request and a
//! MoveDisk its counters have moved by exactly what happened. Bytes copied are measured by the copier
//! watchdog from qemu-img's own I/O counters, so they must equal what the source holds.
use std::{
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use datapath_api::pb::{self, JobStatus, VolumeFormat};
use datapath_telemetry::metrics::text::{parse, Samples};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

use crate::{
    disks::{create, error_of, follow, start_move},
    harness::{copy_request, fill_random, follow_job, throttle, wait_for, TestCluster},
};

const MIB: u64 = 1 << 20;

/// How far the measured bytes may exceed the source's allocation: qemu-img's own writes besides the
/// data — its `-p` progress lines on stdout (about 16 bytes per step) and any message on stderr —
/// which `wchar` counts too. Measured here: a few hundred bytes.
const BYTES_MARGIN: u64 = 64 * 1024;

/// The text of `/metrics` at `addr`, over plain HTTP/1.1.
pub(crate) async fn scrape_text(addr: SocketAddr) -> String {
    get_metrics(addr)
        .await
        .unwrap_or_else(|e| panic!("GET /metrics of {addr}: {e:#}"))
}

async fn get_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: it\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    s.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}: {head}");
    }
    Ok(body.to_string())
}

/// GETs `/metrics` over plain HTTP/1.1 and checks it with `promtool check metrics`.
async fn scrape(addr: SocketAddr) -> anyhow::Result<Samples> {
    let body = get_metrics(addr).await?;
    promtool(&body).with_context(|| format!("promtool check metrics of {addr}"))?;
    parse(&body).with_context(|| format!("parse /metrics of {addr}"))
}

/// `promtool check metrics` (syntax and Prometheus' naming lints) must accept `text`.
fn promtool(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run promtool (Debian package prometheus; scripts/setup.sh installs it)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{}{}\n--- the page ---\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One scrape of every service.
struct Scrape {
    job_tracker: Samples,
    scheduler: Samples,
    hosts: Vec<Samples>,
}

impl Scrape {
    async fn of(tc: &TestCluster) -> Self {
        let c = &tc.cluster;
        let mut hosts = Vec::new();
        for i in 0..c.host_count() {
            hosts.push(scrape(c.host_metrics(i)).await.unwrap());
        }
        Self {
            job_tracker: scrape(c.job_tracker_metrics()).await.unwrap(),
            scheduler: scrape(c.scheduler_metrics()).await.unwrap(),
            hosts,
        }
    }

    /// A sum over every host-worker.
    fn hosts(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.hosts.iter().map(|h| h.sum(name, labels)).sum()
    }
}

fn handled(s: &Samples, method: &str, code: &str) -> f64 {
    s.sum(
        "datapath_grpc_server_handled_total",
        &[("grpc_method", method), ("grpc_code", code)],
    )
}

/// Bytes a file holds on disk.
fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn transitions(s: &Samples, status: &str) -> f64 {
    s.sum("datapath_job_transitions_total", &[("status", status)])
}

fn step_count(s: &Samples, step: &str) -> f64 {
    s.sum(
        "datapath_flow_step_duration_seconds_count",
        &[("step", step), ("result", "succeeded")],
    )
}

#[tokio::test]
async fn every_service_counts_a_known_copy_a_bad_request_and_a_move() {
    // 16 MiB/s: the 32 MiB copy takes about two seconds, long enough to see its bytes move live.
    let tc = TestCluster::start(2, |c| throttle(c, 16 * MIB))
        .await
        .unwrap();
    // 64 MiB, half of it random data in 1 MiB chunks, half holes.
    let (src, dst) = tc
        .source_and_destination(VolumeFormat::Raw, 64 * MIB, 32)
        .await;
    let expected = allocated(&tc.volume_path(&src));
    assert!(
        (32 * MIB..=33 * MIB).contains(&expected),
        "the source holds {expected} bytes"
    );
    let before = Scrape::of(&tc).await;
    for s in [&before.job_tracker, &before.scheduler]
        .into_iter()
        .chain(&before.hosts)
    {
        assert!(s.has("datapath_build_info"));
    }

    // The known copy, on host 1, watched until it ends.
    let job_id = uuid::Uuid::new_v4().to_string();
    let watcher = follow_job(tc.tracker().await, job_id.clone()).await;
    tc.host(1)
        .await
        .copy_data(copy_request(&job_id, &src, &dst, None))
        .await
        .unwrap();
    let live = wait_for(
        Duration::from_secs(30),
        "bytes counted mid-copy",
        || async {
            let s = scrape(tc.cluster.host_metrics(1)).await.ok()?;
            let moved = s.sum("datapath_copy_bytes_total", &[])
                - before.hosts[1].sum("datapath_copy_bytes_total", &[]);
            (moved > 0.0 && moved < expected as f64).then_some(moved)
        },
    )
    .await
    .unwrap();
    let seen = watcher.await.unwrap().unwrap();
    assert_eq!(seen.last().unwrap().0, JobStatus::Succeeded, "{seen:?}");
    let bad = tc
        .host(1)
        .await
        .copy_data(copy_request("not-a-uuid", &src, &dst, None))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // The job's slot is free again and the job-tracker's listing (once a second) caught up.
    let after = wait_for(Duration::from_secs(15), "gauges back at rest", || async {
        let s = Scrape::of(&tc).await;
        let jobs = |s: &Samples| s.sum("datapath_jobs", &[("status", "SUCCEEDED")]);
        let rest = s.hosts(
            "datapath_host_running_jobs",
            &[("host_id", tc.cluster.host_id(1))],
        ) == 0.0
            && s.hosts(
                "datapath_host_free_job_slots",
                &[("host_id", tc.cluster.host_id(1))],
            ) == s.hosts(
                "datapath_host_job_slots",
                &[("host_id", tc.cluster.host_id(1))],
            )
            && jobs(&s.job_tracker) == jobs(&before.job_tracker) + 1.0;
        rest.then_some(s)
    })
    .await
    .unwrap();
    let (h0, h1) = (&before.hosts[1], &after.hosts[1]);
    assert_eq!(
        handled(h1, "CopyData", "OK") - handled(h0, "CopyData", "OK"),
        1.0
    );
    assert_eq!(
        handled(h1, "CopyData", "INVALID_ARGUMENT") - handled(h0, "CopyData", "INVALID_ARGUMENT"),
        1.0
    );
    let copied = (h1.sum("datapath_copy_bytes_total", &[])
        - h0.sum("datapath_copy_bytes_total", &[])) as u64;
    eprintln!("copied {copied} bytes of {expected} allocated; {live} seen mid-copy");
    assert!(
        copied >= expected && copied - expected <= BYTES_MARGIN,
        "measured {copied} bytes written for a source holding {expected}"
    );
    let count = |s: &Samples, name, labels: &[(&str, &str)]| s.sum(name, labels);
    assert_eq!(
        count(
            h1,
            "datapath_copy_duration_seconds_count",
            &[("result", "succeeded")]
        ) - count(
            h0,
            "datapath_copy_duration_seconds_count",
            &[("result", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        count(h1, "datapath_copy_throughput_bytes_per_second_count", &[])
            - count(h0, "datapath_copy_throughput_bytes_per_second_count", &[]),
        1.0
    );
    let (j0, j1) = (&before.job_tracker, &after.job_tracker);
    for status in ["PENDING", "RUNNING", "SUCCEEDED"] {
        assert_eq!(
            transitions(j1, status) - transitions(j0, status),
            1.0,
            "{status}"
        );
    }
    assert_eq!(transitions(j1, "FAILED") - transitions(j0, "FAILED"), 0.0);
    assert!(
        handled(j1, "CreateJob", "OK") > handled(j0, "CreateJob", "OK"),
        "the job-tracker counted no CreateJob"
    );
    for s in [&after.job_tracker, &after.scheduler]
        .into_iter()
        .chain(&after.hosts)
    {
        assert!(s.sum("datapath_etcd_request_duration_seconds_count", &[]) > 0.0);
    }
    assert!(
        h1.sum(
            "datapath_etcd_request_duration_seconds_count",
            &[("operation", "txn")]
        ) > 0.0
    );
    assert_eq!(after.hosts("datapath_host_is_spm", &[]), 1.0, "one SPM");
    assert_eq!(after.hosts("datapath_host_session_valid", &[]), 2.0);
    assert_eq!(
        after.scheduler.sum("datapath_scheduler_is_leader", &[]),
        1.0
    );
    // The launcher runs this cluster on mutual TLS, and no service says it is insecure.
    for s in [&after.job_tracker, &after.scheduler]
        .into_iter()
        .chain(&after.hosts)
    {
        assert!(s.has("datapath_insecure"), "no datapath_insecure gauge");
        assert_eq!(s.sum("datapath_insecure", &[]), 0.0);
    }

    // A MoveDisk of a 64 MiB disk holding 16 MiB.
    let (a, b) = (tc.domain().await, tc.domain().await);
    let disk = pb::VolumeRef {
        storage_domain_id: a.clone(),
        image_id: uuid::Uuid::new_v4().to_string(),
        volume_id: uuid::Uuid::new_v4().to_string(),
    };
    create(
        &tc,
        &disk,
        VolumeFormat::Raw,
        64 * MIB,
        None,
        pb::VolumeRole::Leaf,
    )
    .await;
    fill_random(&tc.volume_path(&disk), "raw", 64 * MIB, 16).unwrap();
    let disk_bytes = allocated(&tc.volume_path(&disk));
    let name = start_move(&tc, &a, &disk.image_id, &b).await;
    let seen = follow(&tc, &name, Duration::from_secs(120)).await.unwrap();
    assert!(error_of(seen.last().unwrap()).is_none(), "{seen:#?}");
    let moved = wait_for(
        Duration::from_secs(15),
        "the move's flow to be counted",
        || async {
            let s = Scrape::of(&tc).await;
            let running = s.scheduler.sum("datapath_operations_running", &[]);
            let jobs = s
                .job_tracker
                .sum("datapath_jobs", &[("status", "SUCCEEDED")]);
            (running == 0.0
                && jobs
                    == after
                        .job_tracker
                        .sum("datapath_jobs", &[("status", "SUCCEEDED")])
                        + 1.0)
                .then_some(s)
        },
    )
    .await
    .unwrap();
    let (s0, s1) = (&after.scheduler, &moved.scheduler);
    assert_eq!(
        handled(s1, "MoveDisk", "OK") - handled(s0, "MoveDisk", "OK"),
        1.0
    );
    let ops = |s: &Samples| {
        s.sum(
            "datapath_operations_total",
            &[("kind", "move_disk"), ("result", "succeeded")],
        )
    };
    assert_eq!(ops(s1) - ops(s0), 1.0);
    let attempts =
        |s: &Samples, result| s.sum("datapath_copy_attempts_total", &[("result", result)]);
    assert_eq!(attempts(s1, "succeeded") - attempts(s0, "succeeded"), 1.0);
    for result in ["transient", "lost", "failed"] {
        assert_eq!(attempts(s1, result), attempts(s0, result), "{result}");
    }
    for step in ["clone_structure", "copy_data", "delete_source"] {
        assert_eq!(step_count(s1, step) - step_count(s0, step), 1.0, "{step}");
    }
    assert_eq!(
        transitions(&moved.job_tracker, "SUCCEEDED") - transitions(j1, "SUCCEEDED"),
        1.0
    );
    let move_bytes = (moved.hosts("datapath_copy_bytes_total", &[])
        - after.hosts("datapath_copy_bytes_total", &[])) as u64;
    assert!(
        move_bytes >= disk_bytes && move_bytes - disk_bytes <= BYTES_MARGIN,
        "the move wrote {move_bytes} bytes of a disk holding {disk_bytes}"
    );
    for (method, code) in [("CreateVolume", "OK"), ("DeleteImage", "OK")] {
        assert!(
            moved.hosts(
                "datapath_grpc_server_handled_total",
                &[("grpc_method", method), ("grpc_code", code)]
            ) > after.hosts(
                "datapath_grpc_server_handled_total",
                &[("grpc_method", method), ("grpc_code", code)]
            ),
            "{method} {code}"
        );
    }
    wait_for(
        Duration::from_secs(15),
        "session lease renewals",
        || async {
            let s = Scrape::of(&tc).await;
            s.hosts
                .iter()
                .all(|h| h.sum("datapath_lease_renewals_total", &[]) > 0.0)
                .then_some(())
        },
    )
    .await
    .unwrap();
}
