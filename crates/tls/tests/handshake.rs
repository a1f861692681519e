//! Real TLS handshakes between a tonic server and clients on loopback, with certificates from
//! `Ca`: who gets in, and what identity the server reads from the caller's certificate.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use datapath_api::ids::HostId;
use datapath_tls::{
    ca::{file_name, Ca, LEAF_LIFETIME},
    peer::identity_of_chain,
    Identity, TlsOptions,
};
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const LOOPBACK: [std::net::IpAddr; 1] = [std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];

/// Serves health over TLS as `server`; returns its address and the identities it saw.
async fn serve(dir: &std::path::Path, server: &Identity) -> (String, Arc<Mutex<Vec<Identity>>>) {
    let tls = TlsOptions::in_dir(dir, &file_name(server))
        .load()
        .unwrap()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let (_, health) = tonic_health::server::health_reporter();
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            let certs = req.peer_certs();
            let id = identity_of_chain(certs.as_ref().map(|c| c.as_slice()))
                .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
            record.lock().unwrap().push(id);
            Ok(req)
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let config = tls.server();
    tokio::spawn(async move {
        Server::builder()
            .tls_config(config)
            .unwrap()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
    });
    (address, seen)
}

async fn check(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
}

async fn connect(
    address: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// A call through a channel that connected: the handshake may only fail on the first request.
async fn call(address: &str, tls: Option<tonic::transport::ClientTlsConfig>) -> Result<(), String> {
    let channel = connect(address, tls).await?;
    check(channel).await.map_err(|s| s.to_string())
}

#[tokio::test]
async fn only_callers_with_a_valid_certificate_of_the_cluster_ca_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path(), "test").unwrap();
    let host = Identity::Host(HostId::random());
    let operator = Identity::Operator("alice".into());
    for id in [&host, &operator] {
        ca.issue(id, &LOOPBACK, LEAF_LIFETIME)
            .unwrap()
            .write(dir.path(), &file_name(id))
            .unwrap();
    }
    let (address, seen) = serve(dir.path(), &host).await;
    let client = |name: &str| {
        TlsOptions::in_dir(dir.path(), name)
            .load()
            .unwrap()
            .unwrap()
    };

    // An operator, verifying the server as that host: in, and seen as who it is.
    let alice = client(&file_name(&operator));
    call(&address, Some(alice.client(Some(&host))))
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![operator.clone()]);
    // By address (grpcurl's way): the certificate carries 127.0.0.1.
    call(&address, Some(alice.client(None))).await.unwrap();

    // Plaintext, or TLS without a client certificate: refused in the handshake.
    assert!(call(&address, None).await.is_err(), "plaintext got in");
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()));
    assert!(
        call(&address, Some(anonymous)).await.is_err(),
        "no certificate got in"
    );

    // A certificate from another CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Ca::init(other_dir.path(), "other").unwrap();
    other
        .issue(&operator, &LOOPBACK, LEAF_LIFETIME)
        .unwrap()
        .write(other_dir.path(), "mallory")
        .unwrap();
    std::fs::copy(dir.path().join("ca.pem"), other_dir.path().join("ca.pem")).unwrap();
    let mallory = TlsOptions::in_dir(other_dir.path(), "mallory")
        .load()
        .unwrap()
        .unwrap();
    assert!(
        call(&address, Some(mallory.client(None))).await.is_err(),
        "another CA got in"
    );

    // An expired certificate of the right CA.
    let now = time::OffsetDateTime::now_utc();
    ca.issue_valid(
        &operator,
        &[],
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap()
    .write(dir.path(), "expired")
    .unwrap();
    let expired = client("expired");
    assert!(
        call(&address, Some(expired.client(None))).await.is_err(),
        "expired got in"
    );

    // The server is not the service the client means to reach: refused by the client.
    assert!(
        call(&address, Some(alice.client(Some(&Identity::JobTracker))))
            .await
            .is_err(),
        "a host passed for the job-tracker"
    );
    assert_eq!(seen.lock().unwrap().len(), 2, "{:?}", seen.lock().unwrap());
}

#[test]
fn the_flags_are_all_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        TlsOptions::default().load(),
        Err(datapath_tls::TlsError::Missing)
    ));
    assert!(TlsOptions::insecure().load().unwrap().is_none());
    let mut both = TlsOptions::in_dir(dir.path(), "x");
    both.insecure = true;
    assert!(matches!(both.load(), Err(datapath_tls::TlsError::Both)));
    assert!(matches!(
        TlsOptions::in_dir(dir.path(), "x").load(),
        Err(datapath_tls::TlsError::Read { .. })
    ));
}
