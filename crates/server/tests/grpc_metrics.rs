//! The gRPC metrics layer counts what clients really get: an OK unary call (status in the trailers),
//! an error (trailers-only), a method the server does not serve, and a stream the client walks away
//! from — read back from the `/metrics` page over HTTP, as Prometheus would.
use std::time::{Duration, Instant};

use datapath_api::pb::{
    host_worker_service_client::HostWorkerServiceClient, ListStorageDomainsRequest,
};
use datapath_server::{serve, MetricsEndpoint, ServerOptions};
use datapath_telemetry::metrics::text::{parse, Samples};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;
use tonic::{service::Routes, transport::Endpoint};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

async fn scrape(addr: std::net::SocketAddr) -> Samples {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(body).unwrap()
}

fn handled(s: &Samples, method: &str, code: &str) -> f64 {
    s.sum(
        "datapath_grpc_server_handled_total",
        &[("grpc_method", method), ("grpc_code", code)],
    )
}

#[tokio::test]
async fn calls_are_counted_by_method_and_the_code_the_client_gets() {
    let metrics = MetricsEndpoint::start("test", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve(
            listener,
            &ServerOptions::default(),
            None,
            &[],
            Routes::new(health),
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let before = scrape(metrics.local_addr()).await;

    let mut client = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    client.check(check("")).await.unwrap();
    client.check(check("")).await.unwrap();
    let missing = client.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let unserved = HostWorkerServiceClient::new(channel.clone())
        .list_storage_domains(ListStorageDomainsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(unserved.code(), tonic::Code::Unimplemented);
    let mut watch = client.watch(check("")).await.unwrap().into_inner();
    watch.next().await.unwrap().unwrap();
    drop(watch);

    let until = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = scrape(metrics.local_addr()).await;
        if handled(&s, "Watch", "CANCELLED") > handled(&before, "Watch", "CANCELLED") {
            break s;
        }
        assert!(
            Instant::now() < until,
            "the abandoned Watch was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let delta = |method, code| handled(&after, method, code) - handled(&before, method, code);
    assert_eq!(delta("Check", "OK"), 2.0);
    assert_eq!(delta("Check", "NOT_FOUND"), 1.0);
    assert_eq!(delta("ListStorageDomains", "UNIMPLEMENTED"), 1.0);
    assert_eq!(delta("Watch", "CANCELLED"), 1.0);
    assert_eq!(
        after.sum(
            "datapath_grpc_server_handled_total",
            &[
                ("grpc_service", "grpc.health.v1.Health"),
                ("grpc_method", "Check")
            ]
        ),
        after.sum(
            "datapath_grpc_server_handling_seconds_count",
            &[
                ("grpc_service", "grpc.health.v1.Health"),
                ("grpc_method", "Check")
            ]
        ),
        "every call counted is timed"
    );
    assert_eq!(
        after.sum("datapath_build_info", &[("service", "test")]),
        1.0
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
