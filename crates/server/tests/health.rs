//! Health on a real server on port 0: checks answer while every slot of the global concurrency limit is
//! taken by calls that hang (as calls do on a dead etcd), the limit still holds for other calls, and
//! statuses start NOT_SERVING, answer per service name and for `""`, and reach watchers only when they
//! change.
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use datapath_server::{health::ServerHealth, serve, ServerOptions};
use tokio_stream::StreamExt as _;
use tonic::{
    body::Body,
    server::NamedService,
    service::Routes,
    transport::{Channel, Endpoint},
    Code,
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tower::{Service, ServiceExt as _};

/// A service whose every call hangs forever, counting the calls that reached it.
#[derive(Clone, Default)]
struct Hang {
    entered: Arc<AtomicUsize>,
}

impl NamedService for Hang {
    const NAME: &'static str = "test.Hang";
}

impl Service<http::Request<Body>> for Hang {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        self.entered.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

/// Serves `routes` with a concurrency limit of `limit` on port 0; the channel reaches it.
async fn start(routes: Routes, limit: usize) -> (Channel, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServerOptions {
        concurrency_limit: limit,
        ..ServerOptions::default()
    };
    tokio::spawn(async move {
        serve(listener, &options, None, &["test.Hang"], routes, async {
            let _ = stopped.await;
        })
        .await
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    (channel, stop)
}

/// Sends a call to `test.Hang/Call` that never gets an answer.
fn hang_call(channel: &Channel) {
    let request = http::Request::builder()
        .method("POST")
        .uri("/test.Hang/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::empty())
        .unwrap();
    let channel = channel.clone();
    tokio::spawn(async move { channel.oneshot(request).await });
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

#[tokio::test]
async fn health_answers_while_hanging_calls_hold_every_slot() {
    let (health, server) = ServerHealth::new(&["test.Hang"]).await;
    health.set(true).await;
    let hang = Hang::default();
    let routes = Routes::new(server).add_service(hang.clone());
    let (channel, _stop) = start(routes, 1).await;

    hang_call(&channel);
    let deadline = Instant::now() + Duration::from_secs(5);
    while hang.entered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first call never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hang_call(&channel);

    let mut client = HealthClient::new(channel.clone());
    for service in ["", "test.Hang"] {
        let answer = tokio::time::timeout(Duration::from_secs(2), client.check(check(service)))
            .await
            .expect("a health check waited behind the concurrency limit")
            .unwrap();
        assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
    }
    let mut watch = tokio::time::timeout(Duration::from_secs(2), client.watch(check("")))
        .await
        .expect("a health watch waited behind the concurrency limit")
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    // The health calls were answered after the second hanging call was sent: it still waits for the
    // slot, so the limit holds for everything else.
    assert_eq!(
        hang.entered.load(Ordering::SeqCst),
        1,
        "the limit of 1 let a second call in"
    );
}

#[tokio::test]
async fn statuses_start_not_serving_and_watchers_hear_only_changes() {
    let (health, server) = ServerHealth::new(&["test.Hang"]).await;
    let (channel, _stop) = start(Routes::new(server), 8).await;
    let mut client = HealthClient::new(channel);
    let status =
        |r: tonic::Response<tonic_health::pb::HealthCheckResponse>| r.into_inner().status();

    for service in ["", "test.Hang"] {
        let answer = client.check(check(service)).await.unwrap();
        assert_eq!(status(answer), ServingStatus::NotServing, "{service:?}");
    }
    let unknown = client.check(check("test.Nope")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watch = client.watch(check("test.Hang")).await.unwrap().into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing);
    assert!(health.set(true).await);
    assert_eq!(next(&mut watch).await, ServingStatus::Serving);
    assert!(
        !health.set(true).await,
        "setting the same status is no change"
    );
    assert!(health.set(false).await);
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing);
    for service in ["", "test.Hang"] {
        let answer = client.check(check(service)).await.unwrap();
        assert_eq!(status(answer), ServingStatus::NotServing, "{service:?}");
    }
}

/// The next message of a Watch stream, waited for at most 2 s.
async fn next(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("no Watch message within 2 s")
        .unwrap()
        .unwrap()
        .status()
}
