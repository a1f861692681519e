//! etcd's share of the metrics: how long each kind of etcd request takes, and how the session lease
//! fares. Every request is timed in one place — a tower service under etcd-client's own balanced
//! channel (see [`Metered`]) — so no call site carries timing code and none can be missed.
use std::{
    future::Future,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use datapath_telemetry::metrics::{latency_histogram, register, CounterFamily, HistogramFamily};
use etcd_client::{BalancedChannelBuilder, Channel};
use http::{Request, Response};
use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter};
use tonic::{
    body::Body,
    transport::{channel::Change, Endpoint},
};
use tower::{util::BoxCloneSyncService, Service};

/// The label of an etcd request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EtcdLabels {
    /// `get`, `put`, `delete`, `txn`, `watch_create`, `lease_grant`, `lease_keep_alive`, `campaign`, …
    pub operation: &'static str,
}

/// The label of a record that did not decode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    /// `jobs`, `flows`, `hosts`, `generations`, `leases`, …: the key's place in the layout.
    pub kind: &'static str,
}

/// The coordination layer's families.
pub struct CoordMetrics {
    /// `datapath_etcd_request_duration_seconds{operation}`: until etcd's response headers, which it
    /// sends with a unary call's answer (a stream — watch, keep-alive — is timed until it is open).
    pub etcd_request: HistogramFamily<EtcdLabels>,
    /// `datapath_lease_renewals_total`: session lease keep-alives etcd confirmed.
    pub lease_renewals: Counter,
    /// `datapath_lease_renewal_failures_total`: keep-alives that failed, timed out or found the lease
    /// expired.
    pub lease_renewal_failures: Counter,
    /// `datapath_session_lost_total`: sessions declared lost (each one fences a host-worker).
    pub session_lost: Counter,
    /// `datapath_volume_view_resyncs_total`: times the volume view fell out of step with etcd (a
    /// watch broke or was compacted) and read everything again.
    pub volume_view_resyncs: Counter,
    /// `datapath_etcd_bad_records_total{kind}`: records skipped because they did not decode (each
    /// time a listing or a watch met one).
    pub bad_records: CounterFamily<RecordLabels>,
}

/// The families, registered on first use.
pub fn metrics() -> &'static CoordMetrics {
    static METRICS: LazyLock<CoordMetrics> = LazyLock::new(|| {
        let m = CoordMetrics {
            etcd_request: HistogramFamily::new_with_constructor(latency_histogram),
            lease_renewals: Counter::default(),
            lease_renewal_failures: Counter::default(),
            session_lost: Counter::default(),
            volume_view_resyncs: Counter::default(),
            bad_records: CounterFamily::default(),
        };
        register(
            "datapath_etcd_request_duration_seconds",
            "Time etcd took to answer a request, by operation (streams: until open)",
            m.etcd_request.clone(),
        );
        register(
            "datapath_lease_renewals",
            "Session lease keep-alives confirmed by etcd",
            m.lease_renewals.clone(),
        );
        register(
            "datapath_lease_renewal_failures",
            "Session lease keep-alives that failed, timed out or found the lease expired",
            m.lease_renewal_failures.clone(),
        );
        register(
            "datapath_session_lost",
            "Session leases declared lost (a host-worker fences itself at each)",
            m.session_lost.clone(),
        );
        register(
            "datapath_volume_view_resyncs",
            "Times the volume view fell out of step with etcd and read everything again",
            m.volume_view_resyncs.clone(),
        );
        register(
            "datapath_etcd_bad_records",
            "etcd records skipped because they did not decode, by kind",
            m.bad_records.clone(),
        );
        m
    });
    &METRICS
}

/// The operation label of a gRPC path of etcd's API: the key-value calls by their etcdctl names,
/// the rest by their method in snake case (a closed set: etcd's API).
pub fn operation(path: &str) -> &'static str {
    let method = path.rsplit('/').next().unwrap_or("");
    match method {
        "Range" => "get",
        "Put" => "put",
        "DeleteRange" => "delete",
        "Txn" => "txn",
        "Compact" => "compact",
        "Watch" => "watch_create",
        "LeaseGrant" => "lease_grant",
        "LeaseRevoke" => "lease_revoke",
        "LeaseKeepAlive" => "lease_keep_alive",
        "LeaseTimeToLive" => "lease_time_to_live",
        "LeaseLeases" => "lease_leases",
        "Status" => "status",
        "Campaign" => "campaign",
        "Proclaim" => "proclaim",
        "Leader" => "leader",
        "Observe" => "observe",
        "Resign" => "resign",
        "Lock" => "lock",
        "Unlock" => "unlock",
        "MemberList" => "member_list",
        "Authenticate" => "authenticate",
        _ => "other",
    }
}

/// How etcd-client adds endpoints to a balanced channel.
type EndpointUpdater = tokio::sync::mpsc::Sender<Change<http::Uri, Endpoint>>;

/// Builds etcd-client's balanced channel exactly as it does by itself, with [`Metered`] on top.
pub(crate) struct MeteredChannel;

impl BalancedChannelBuilder for MeteredChannel {
    type Error = tonic::transport::Error;

    fn balanced_channel(self, buffer: usize) -> Result<(Channel, EndpointUpdater), Self::Error> {
        let (channel, updater) = tonic::transport::Channel::balance_channel(buffer);
        Ok((
            Channel::Custom(BoxCloneSyncService::new(Metered(channel))),
            updater,
        ))
    }
}

/// Times every request through the inner channel into `datapath_etcd_request_duration_seconds`.
#[derive(Clone)]
pub(crate) struct Metered<S>(S);

type BoxError = tower::BoxError;

impl<S> Service<Request<Body>> for Metered<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let labels = EtcdLabels {
            operation: operation(req.uri().path()),
        };
        let started = Instant::now();
        let response = self.0.call(req);
        Box::pin(async move {
            let result = response.await.map_err(Into::into);
            metrics()
                .etcd_request
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::operation;

    #[test]
    fn etcd_paths_map_to_operations() {
        assert_eq!(operation("/etcdserverpb.KV/Range"), "get");
        assert_eq!(operation("/etcdserverpb.KV/Txn"), "txn");
        assert_eq!(operation("/etcdserverpb.Watch/Watch"), "watch_create");
        assert_eq!(operation("/etcdserverpb.Lease/LeaseGrant"), "lease_grant");
        assert_eq!(operation("/v3electionpb.Election/Campaign"), "campaign");
        assert_eq!(operation("/etcdserverpb.Maintenance/Defragment"), "other");
    }
}
