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
