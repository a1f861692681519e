//! One trace per operation, read back from a real OTLP receiver (Phoenix): a MoveDisk's trace holds
//! spans of all three services and the qemu-img run, forming one tree under the scheduler's MoveDisk
//! span; and when the scheduler is killed mid-move, the restarted one's flow joins the same trace.
use std::{collections::HashMap, time::Duration};

use serde_json::Value;

use crate::{
    disks::{chain_disk, follow, start_move},
    harness::{throttle, wait_for, TestCluster},
    invariants::flow,
    phoenix::Phoenix,
};

const MIB: u64 = 1 << 20;

/// A stored span, as much of it as the tests read.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    id: String,
    parent: String,
    /// Start, in nanoseconds since the epoch.
    start: u64,
    attributes: HashMap<String, Value>,
}

fn parse(v: &Value) -> Span {
    let attributes = v["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let value = a["value"]
                .as_object()?
                .values()
                .find(|v| !v.is_null())?
                .clone();
            Some((a["key"].as_str()?.to_string(), value))
        })
        .collect();
    Span {
        name: v["name"].as_str().unwrap_or_default().to_string(),
        id: v["span_id"].as_str().unwrap_or_default().to_string(),
        parent: v["parent_span_id"].as_str().unwrap_or_default().to_string(),
        start: v["start_time_unix_nano"].as_u64().unwrap_or_default(),
        attributes,
    }
}

/// The trace id the operation's flow record carries.
async fn trace_of(tc: &TestCluster, name: &str) -> String {
    let f = flow(tc, name).await.expect("the flow record");
    let tp = f
        .trace_context
        .get("traceparent")
        .expect("a traceparent in the flow");
    tp.split('-').nth(1).expect("a trace id").to_string()
}

/// The spans of `trace` once they form one whole tree (every parent stored) that holds `wanted`.
async fn whole_trace(phoenix: &Phoenix, trace: &str, wanted: &[&str]) -> Vec<Span> {
    let got = wait_for(Duration::from_secs(30), "the whole trace", || {
        let spans: Vec<Span> = phoenix
            .spans(trace)
            .unwrap_or_default()
            .iter()
            .map(parse)
            .collect();
        let ids: Vec<&str> = spans.iter().map(|s| s.id.as_str()).collect();
        let whole = spans
            .iter()
            .all(|s| s.parent.is_empty() || ids.contains(&s.parent.as_str()));
        let complete = wanted.iter().all(|w| spans.iter().any(|s| s.name == *w));
        let done = (whole && complete).then_some(spans);
        async move { done }
    })
    .await;
    match got {
        Ok(spans) => spans,
        Err(e) => {
            let names: Vec<(String, String, String)> = phoenix
                .spans(trace)
                .unwrap_or_default()
                .iter()
                .map(parse)
                .map(|s| (s.name, s.id, s.parent))
                .collect();
            panic!("{e}: {names:#?}");
        }
    }
}

/// A server span: the RPC conventions put the caller's address on it (Phoenix keeps no span kind).
fn served(s: &Span) -> bool {
    s.attributes.contains_key("network.peer.address")
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes.get(key)
}

/// An integer attribute (OTLP's JSON may carry 64-bit integers as strings).
fn int(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(t) => t.parse().ok(),
        _ => None,
    }
}

/// The names from `s` up to the root.
fn ancestry(spans: &[Span], s: &Span) -> Vec<String> {
    let mut names = vec![s.name.clone()];
    let mut at = s;
    while let Some(p) = spans.iter().find(|p| p.id == at.parent) {
        names.push(p.name.clone());
        at = p;
    }
    names
}

/// The RPC attributes on every gRPC span, client and server.
fn assert_rpc_attributes(spans: &[Span]) {
    let rpcs: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.contains("Service/"))
        .collect();
    assert!(rpcs.len() > 5, "too few RPC spans: {}", rpcs.len());
    for s in rpcs {
        let (service, method) = s.name.split_once('/').unwrap();
        assert_eq!(attr(s, "rpc.system"), Some(&Value::from("grpc")), "{s:?}");
        assert_eq!(attr(s, "rpc.service"), Some(&Value::from(service)), "{s:?}");
        assert_eq!(attr(s, "rpc.method"), Some(&Value::from(method)), "{s:?}");
        assert!(attr(s, "rpc.grpc.status_code").is_some(), "{s:?}");
        assert!(attr(s, "server.port").is_some(), "{s:?}");
    }
}

/// The qemu-img spans, each a descendant of a host's CopyData call made by the flow.
fn assert_qemu_spans(spans: &[Span], copies: usize) {
    let qemu: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "qemu-img convert")
        .collect();
    assert_eq!(qemu.len(), copies, "one qemu-img span per volume copied");
    for q in &qemu {
        assert_eq!(int(q, "process.exit.code"), Some(0), "{q:?}");
        for a in [
            "datapath.copy.source_format",
            "datapath.copy.destination_format",
        ] {
            assert!(attr(q, a).is_some(), "{a} missing on {q:?}");
        }
        let path = ancestry(spans, q);
        for hop in [
            "CopyData job",
            "datapath.v1.HostWorkerService/CopyData",
            "CopyAttempt",
            "CopyVolume",
            "CopyImageGroupVolumesData",
            "flow MoveDisk",
        ] {
            assert!(
                path.iter().any(|n| n == hop),
                "{hop} is not above qemu-img: {path:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_is_one_trace_across_every_service() {
    let phoenix = Phoenix::start().await.unwrap();
    let tc = TestCluster::start(2, |c| {
        c.env
            .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), phoenix.otlp.clone()));
        c.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
    })
    .await
    .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    follow(&tc, &name, Duration::from_secs(90)).await.unwrap();
    let trace = trace_of(&tc, &name).await;
    // The operation names its trace, for an SRE to look it up.
    let op = crate::disks::scheduler(&tc)
        .await
        .get_operation(datapath_api::pb::GetOperationRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(op.metadata.unwrap().trace_id, trace);
    let spans = whole_trace(
        &phoenix,
        &trace,
        &["EndOperation", "RemoveSourceImage", "qemu-img convert"],
    )
    .await;

    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one tree: {roots:?}");
    assert_eq!(roots[0].name, "datapath.v1.SchedulerService/MoveDisk");
    // Each service's own server spans are in the trace.
    for rpc in [
        "datapath.v1.SchedulerService/MoveDisk",
        "datapath.v1.HostWorkerService/CreateVolume",
        "datapath.v1.HostWorkerService/CopyData",
        "datapath.v1.HostWorkerService/DeleteImage",
        "datapath.v1.JobTrackerService/CreateJob",
        "datapath.v1.JobTrackerService/UpdateJob",
    ] {
        assert!(
            spans.iter().any(|s| s.name == rpc && served(s)),
            "no server span of {rpc}"
        );
    }
    let flows: Vec<&Span> = spans.iter().filter(|s| s.name == "flow MoveDisk").collect();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        attr(flows[0], "datapath.flow.resumed"),
        Some(&Value::from(false))
    );
    assert_rpc_attributes(&spans);
    assert_qemu_spans(&spans, src.len());
    // Every reported success was checked against its destination before the source went.
    let verified: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "VerifyDestination")
        .collect();
    assert_eq!(verified.len(), src.len(), "{verified:?}");
    for v in verified {
        assert_eq!(
            attr(v, "datapath.recovery.decision"),
            Some(&Value::from("committed")),
            "{v:?}"
        );
        assert!(ancestry(&spans, v).contains(&"CopyAttempt".to_string()));
    }
}

/// The scheduler is SIGKILLed mid-move and restarted: its second run of the flow continues the
/// operation's trace (a child of the MoveDisk call, through the flow record's trace context). Spans
/// that were still open in the killed process are lost with it, so the children they had already
/// exported (its own client calls) are stored without their parent: those are the only gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_resumed_by_a_restarted_scheduler_stays_in_its_trace() {
    let phoenix = Phoenix::start().await.unwrap();
    let mut tc = TestCluster::start(2, |c| {
        c.env
            .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), phoenix.otlp.clone()));
        c.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
        throttle(c, MIB);
    })
    .await
    .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let trace = trace_of(&tc, &name).await;
    // The first run's call and its first copy have reached the receiver: kill it mid-copy.
    wait_for(Duration::from_secs(30), "the first copy's span", || {
        let spans = phoenix.spans(&trace).unwrap_or_default();
        let sent = spans
            .iter()
            .map(parse)
            .any(|s| s.name == "datapath.v1.HostWorkerService/CopyData" && served(&s));
        async move { sent.then_some(()) }
    })
    .await
    .unwrap();
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    tc.cluster
        .scheduler_mut()
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    tc.cluster.restart_scheduler().await.unwrap();
    follow(&tc, &name, Duration::from_secs(90)).await.unwrap();

    let spans = wait_for(Duration::from_secs(30), "the resumed run's spans", || {
        let spans: Vec<Span> = phoenix
            .spans(&trace)
            .unwrap_or_default()
            .iter()
            .map(parse)
            .collect();
        let done = spans
            .iter()
            .any(|s| s.name == "flow MoveDisk" && int(s, "datapath.flow.runs") == Some(2))
            && spans
                .iter()
                .filter(|s| s.name == "qemu-img convert")
                .count()
                == src.len();
        async move { done.then_some(spans) }
    })
    .await
    .unwrap_or_else(|e| {
        let seen: Vec<(String, Option<Value>)> = phoenix
            .spans(&trace)
            .unwrap_or_default()
            .iter()
            .map(parse)
            .map(|s| (s.name.clone(), attr(&s, "datapath.flow.runs").cloned()))
            .collect();
        tc.dump_logs();
        panic!("{e}: {seen:?}")
    });
    let root = spans
        .iter()
        .find(|s| s.name == "datapath.v1.SchedulerService/MoveDisk")
        .expect("the MoveDisk span");
    assert!(root.parent.is_empty());
    let resumed: Vec<&Span> = spans.iter().filter(|s| s.name == "flow MoveDisk").collect();
    assert_eq!(
        resumed.len(),
        1,
        "only the second run's flow span ended: {resumed:#?}"
    );
    let resumed = resumed[0];
    assert_eq!(
        attr(resumed, "datapath.flow.resumed"),
        Some(&Value::from(true))
    );
    assert_eq!(int(resumed, "datapath.flow.runs"), Some(2));
    assert_eq!(
        resumed.parent, root.id,
        "the resumed flow hangs under MoveDisk"
    );
    // The resumed run's work is in the tree under it: its steps, and the copies it started.
    for step in ["RemoveSourceImage", "EndOperation"] {
        let s = spans.iter().find(|s| s.name == step).unwrap();
        assert!(ancestry(&spans, s).contains(&"flow MoveDisk".to_string()));
    }
    let under_resumed = spans
        .iter()
        .filter(|s| s.name == "qemu-img convert")
        .filter(|s| ancestry(&spans, s).contains(&"flow MoveDisk".to_string()))
        .count();
    assert!(
        under_resumed >= 1,
        "no copy of the resumed run is in its tree"
    );
    // The only gaps are the spans that were open in the killed scheduler: whatever lost its parent
    // started before the kill; everything after it forms one tree.
    let ids: Vec<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let orphans: Vec<&Span> = spans
        .iter()
        .filter(|s| !s.parent.is_empty() && !ids.contains(&s.parent.as_str()))
        .collect();
    assert!(!orphans.is_empty(), "the killed run lost no open span?");
    for o in &orphans {
        assert!(
            o.start < killed_at,
            "a span started after the kill lost its parent: {o:?}"
        );
    }
    assert_rpc_attributes(&spans);
}

/// The host copying a volume is SIGKILLed: the operation's trace shows the recovery — the attempt
/// that failed, the decision taken from the destination volume (with the SPM's FenceVolume when it
/// fences), and the retry on another host that succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_copy_shows_its_recovery_decision_and_retry_in_the_trace() {
    use datapath_api::pb::{FlowVolumeState, JobStatus};
    let phoenix = Phoenix::start().await.unwrap();
    let mut tc = TestCluster::start(3, |c| {
        c.env
            .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), phoenix.otlp.clone()));
        c.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
        throttle(c, 4 * MIB);
    })
    .await
    .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let trace = trace_of(&tc, &name).await;
    let victim = wait_for(Duration::from_secs(20), "a running copy", || async {
        let f = flow(&tc, &name).await?;
        let v = f
            .volumes
            .iter()
            .find(|v| v.state() == FlowVolumeState::Copying)?;
        (v.job_status() == JobStatus::Running).then(|| v.host_id.clone())
    })
    .await
    .unwrap();
    let i = tc.cluster.host_index(&victim).unwrap();
    tc.cluster
        .host_mut(i)
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    follow(&tc, &name, Duration::from_secs(90)).await.unwrap();

    let spans = wait_for(Duration::from_secs(30), "the recovery's spans", || {
        let spans: Vec<Span> = phoenix
            .spans(&trace)
            .unwrap_or_default()
            .iter()
            .map(parse)
            .collect();
        let done = spans.iter().any(|s| s.name == "flow MoveDisk")
            && spans.iter().any(|s| s.name == "ConcludeFromDestination");
        async move { done.then_some(spans) }
    })
    .await
    .unwrap();
    let conclude = spans
        .iter()
        .find(|s| s.name == "ConcludeFromDestination")
        .unwrap();
    let decision = attr(conclude, "datapath.recovery.decision").cloned();
    assert!(
        matches!(
            decision.as_ref().and_then(Value::as_str),
            Some("fenced" | "committed" | "already_fenced" | "committed_before_fence")
        ),
        "{conclude:?}"
    );
    if decision.as_ref().and_then(Value::as_str) == Some("fenced") {
        let fenced = spans
            .iter()
            .find(|s| s.name == "datapath.v1.HostWorkerService/FenceVolume" && served(s))
            .expect("the SPM's FenceVolume in the trace");
        assert!(ancestry(&spans, fenced).contains(&"ConcludeFromDestination".to_string()));
    }
    let path = ancestry(&spans, conclude);
    for hop in [
        "CopyAttempt",
        "CopyVolume",
        "flow MoveDisk",
        "datapath.v1.SchedulerService/MoveDisk",
    ] {
        assert!(
            path.iter().any(|n| n == hop),
            "{hop} is not above the decision: {path:?}"
        );
    }
    // The lost attempt and its retry, on two hosts, under the same volume's span.
    let attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "CopyAttempt"
                && attr(s, "datapath.host.id") == Some(&Value::from(victim.as_str()))
        })
        .collect();
    assert!(!attempts.is_empty(), "no attempt on the killed host");
    let lost = attempts[0];
    let retry = spans
        .iter()
        .find(|s| {
            s.name == "CopyAttempt"
                && s.parent == lost.parent
                && s.id != lost.id
                && attr(s, "datapath.copy.outcome") == Some(&Value::from("succeeded"))
        })
        .expect("a successful retry beside the lost attempt");
    assert_ne!(
        attr(retry, "datapath.host.id"),
        attr(lost, "datapath.host.id")
    );
    assert_eq!(
        attr(lost, "datapath.copy.outcome"),
        Some(&Value::from("failed"))
    );
}
