//! The example selector served on port 0 with the shared server set-up, called through a real tonic
//! client: the answers, the coded errors, health, and an orderly shutdown.
use clap::Parser as _;
use datapath_api::pb::{self, host_selector_service_client::HostSelectorServiceClient};
use datapath_example_host_selector::{run, Config};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{transport::Channel, Code};

const A: &str = "00000000-0000-4000-8000-00000000000a";
const B: &str = "00000000-0000-4000-8000-00000000000b";
const C: &str = "00000000-0000-4000-8000-00000000000c";

struct Served {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn serve(args: &[&str]) -> Served {
    let config = Config::try_parse_from(
        ["example-host-selector", "--insecure"]
            .into_iter()
            .chain(args.iter().copied()),
    )
    .expect("flags parse");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, listener, async {
        let _ = stopped.await;
    }));
    Served { url, stop, task }
}

async fn client(url: &str) -> HostSelectorServiceClient<Channel> {
    HostSelectorServiceClient::connect(url.to_string())
        .await
        .unwrap()
}

fn host(id: &str, job_slots: u32, running_jobs: u32, bytes_in_flight: u64) -> pb::Host {
    pb::Host {
        host_id: id.into(),
        address: "127.0.0.1:7301".into(),
        job_slots,
        running_jobs,
        bytes_in_flight,
        ..Default::default()
    }
}

fn request(candidates: Vec<pb::Host>) -> pb::SelectHostRequest {
    pb::SelectHostRequest {
        candidates,
        spm_host_id: A.into(),
        step: None,
        size_bytes: 1 << 30,
    }
}

#[tokio::test]
async fn select_host_answers_over_grpc() {
    let served = serve(&["--prefer", C]).await;
    let mut selector = client(&served.url).await;

    // C is preferred but not a candidate: the least loaded (B has more free slots) wins.
    let answer = selector
        .select_host(request(vec![host(A, 4, 3, 0), host(B, 4, 1, 0)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.host_id, B);

    // C is a candidate: preferred over a less loaded host.
    let answer = selector
        .select_host(request(vec![host(A, 8, 0, 0), host(C, 2, 1, 99)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.host_id, C);

    let status = selector.select_host(request(vec![])).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        datapath_api::error::reason(&status).as_deref(),
        Some("NO_CANDIDATES")
    );

    let status = selector
        .select_host(request(vec![host(A, 1, 0, 0), host("not-a-host", 1, 0, 0)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        datapath_api::error::field(&status).as_deref(),
        Some("candidates[1].host_id")
    );

    served.stop.send(()).unwrap();
    served.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_says_serving_for_the_selector() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let served = serve(&[]).await;
    let channel = Channel::from_shared(served.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", datapath_example_host_selector::SERVICE_NAME] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service:?} is SERVING");
    }
    served.stop.send(()).unwrap();
    served.task.await.unwrap().unwrap();
}
