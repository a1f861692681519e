//! Traces an SRE can follow: the real services export spans over OTLP (to a collector this test
//! runs), and one trace crosses processes — a caller's `traceparent` reaches the host-worker, which
//! carries it on to the job-tracker.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use datapath_api::pb::{Legality, VolumeFormat};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

use crate::harness::*;

/// (service.name, trace id, span name) of one exported span.
type SeenSpan = (String, Vec<u8>, String);

/// An OTLP trace collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            // The resource as `service.name=… host.id=…` (what names the emitter).
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .filter(|a| a.key == "service.name" || a.key == "host.id")
                .map(|a| format!("{}={:?}", a.key, a.value.as_ref().map(|v| &v.value)))
                .collect::<Vec<_>>()
                .join(" ");
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push((service.clone(), span.trace_id, span.name));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_the_services_and_reaches_the_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let tc = TestCluster::start(1, |c| {
        c.env
            .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
        c.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
    })
    .await
    .unwrap();
    let img = uuid::Uuid::new_v4().to_string();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = tc
        .volume(&a, &img, VolumeFormat::Raw, 8 << 20, Legality::Legal)
        .await;
    let dst = tc
        .volume(&b, &img, VolumeFormat::Raw, 8 << 20, Legality::Illegal)
        .await;

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let mut req = Request::new(copy_request(
        &uuid::Uuid::new_v4().to_string(),
        &src,
        &dst,
        None,
    ));
    let traceparent = format!(
        "00-{trace_id}-{}-01",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    req.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    tc.host(0).await.copy_data(req).await.unwrap();

    let wanted = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let services = wait_for(
        Duration::from_secs(20),
        "spans of both services in the trace",
        || {
            let spans = collector.spans.lock().unwrap().clone();
            let wanted = wanted.clone();
            async move {
                let mut in_trace: Vec<String> = spans
                    .into_iter()
                    .filter(|s| s.1 == wanted)
                    .map(|s| format!("{} {}", s.0, s.2))
                    .collect();
                in_trace.sort();
                let both = in_trace.iter().any(|s| {
                    s.contains("host-worker")
                        && s.contains("datapath.v1.HostWorkerService/CopyData")
                }) && in_trace.iter().any(|s| {
                    s.contains("job-tracker")
                        && s.contains("datapath.v1.JobTrackerService/CreateJob")
                });
                both.then_some(in_trace)
            }
        },
    )
    .await
    .unwrap();
    assert!(
        services
            .iter()
            .filter(|s| s.contains("host-worker"))
            .all(|s| s.contains("host.id=")),
        "a host-worker's resource lacks its host id: {services:?}"
    );
    assert!(
        services.iter().any(|s| s.contains("CopyData job")),
        "the copy job's own span is missing: {services:?}"
    );
    server.abort();
}

/// A collector this test runs, and its endpoint.
async fn start_collector() -> (Collector, String, tokio::task::JoinHandle<()>) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn({
        let collector = collector.clone();
        async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        }
    });
    (collector, endpoint, server)
}

/// Copies a 16 MiB volume with 4 MiB of data on host 0; returns the job's record in etcd once it
/// succeeded.
async fn copy_to_the_end(tc: &TestCluster) -> datapath_api::pb::Job {
    use prost::Message as _;
    let (src, dst) = tc
        .source_and_destination(VolumeFormat::Raw, 16 << 20, 4)
        .await;
    let job_id = tc.start_copy(0, &src, &dst).await;
    let seen = follow_job(tc.tracker().await, job_id.clone())
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.last().map(|s| s.0),
        Some(datapath_api::pb::JobStatus::Succeeded)
    );
    let key = tc
        .layout()
        .job(datapath_api::ids::JobId::parse("job_id", &job_id).unwrap());
    let resp = tc.etcd.clone().get(key, None).await.unwrap();
    datapath_api::pb::Job::decode(resp.kvs()[0].value()).unwrap()
}

/// `OTEL_SDK_DISABLED=true` turns tracing off even with an endpoint set: the job's stored context is
/// not sampled, and after the services stop (which flushes whatever they hold) the collector has
/// received nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_sdk_exports_nothing() {
    let (collector, endpoint, server) = start_collector().await;
    let mut tc = TestCluster::start(1, |c| {
        c.env
            .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
        c.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
        c.env.push(("OTEL_SDK_DISABLED".into(), "true".into()));
    })
    .await
    .unwrap();
    let job = copy_to_the_end(&tc).await;
    let traceparent = job
        .trace_context
        .get("traceparent")
        .cloned()
        .unwrap_or_default();
    assert!(
        traceparent.is_empty() || traceparent.ends_with("-00"),
        "a sampled context with the SDK disabled: {traceparent}"
    );
    tc.cluster
        .host_mut(0)
        .stop(Duration::from_secs(10))
        .await
        .unwrap();
    tc.cluster
        .job_tracker_mut()
        .stop(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(collector.spans.lock().unwrap().is_empty());
    server.abort();
}

/// A collector that accepts connections and never answers (the worst kind of unreachable) slows no
/// copy, and a service still stops promptly: its last flush gives up after two seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_blocks_nothing() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    let mut tc = TestCluster::start(1, |c| {
        c.env
            .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
        c.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    })
    .await
    .unwrap();
    for _ in 0..2 {
        let job = copy_to_the_end(&tc).await;
        assert!(job.trace_context.contains_key("traceparent"));
    }
    let started = std::time::Instant::now();
    tc.cluster
        .host_mut(0)
        .stop(Duration::from_secs(20))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "stopping took {took:?}");
    drop(hole);
}

/// The exporter honours the standard TLS variables: spans reach a collector that serves only TLS
/// with certificates of its own CA, and that wants a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_over_mutual_tls() {
    use datapath_tls::{
        ca::{file_name, Ca, LEAF_LIFETIME},
        Identity, TlsOptions,
    };
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::init(pki.path(), "otel").unwrap();
    let (collector_id, exporter_id) = (
        Identity::Plugin("otel-collector".into()),
        Identity::Viewer("otel-exporter".into()),
    );
    for id in [&collector_id, &exporter_id] {
        ca.issue(id, &["127.0.0.1".parse().unwrap()], LEAF_LIFETIME)
            .unwrap()
            .write(pki.path(), &file_name(id))
            .unwrap();
    }
    let server_tls = TlsOptions::in_dir(pki.path(), &file_name(&collector_id))
        .load()
        .unwrap()
        .unwrap();
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(server_tls.server())
            .unwrap()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let file = |name: String| pki.path().join(name).display().to_string();
    let exporter = file_name(&exporter_id);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", file("ca.pem".into())),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            file(format!("{exporter}.pem")),
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            file(format!("{exporter}.key")),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ];
    let tc = TestCluster::start(1, |c| {
        c.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    })
    .await
    .unwrap();
    tc.domain().await;
    let seen = wait_for(
        Duration::from_secs(20),
        "a host-worker span at the TLS collector",
        || {
            let spans = collector.spans.lock().unwrap().clone();
            async move {
                spans.into_iter().find(|s| {
                    s.0.contains("host-worker")
                        && s.2 == "datapath.v1.HostWorkerService/CreateStorageDomain"
                })
            }
        },
    )
    .await;
    server.abort();
    seen.unwrap();
}
