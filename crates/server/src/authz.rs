//! Authorisation by caller identity, one tower layer on every server. With mutual TLS the caller is
//! who its certificate says (`datapath_tls::peer`); [`ALLOWED`] says which kinds of identity may call
//! each method, and anything it does not name is refused (fail closed). A refusal is
//! `PERMISSION_DENIED` with an `ErrorInfo` (reason `PERMISSION_DENIED`, metadata `identity` and
//! `method`), counted in `datapath_grpc_server_denied_total`, and logged; the handler never runs, so
//! nothing changes. An allowed call carries its [`Caller`] in the request's extensions, for the checks
//! that depend on the request itself (a host may update only its own jobs).
//!
//! Without TLS (`--insecure`) there is no identity and every call passes: that is what the flag means.
use std::{
    future::Future,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
};

use datapath_telemetry::metrics::{register, CounterFamily};
use datapath_tls::{peer::identity_of_chain, Identity};
use prometheus_client::encoding::EncodeLabelSet;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// The identity that made a call, in its request's extensions once authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Identity);

/// Kinds of identity, as [`Identity::kind`] names them.
const SCHEDULER: &str = "scheduler";
const JOB_TRACKER: &str = "job-tracker";
const HOST: &str = "host";
const OPERATOR: &str = "operator";
const ADMIN: &str = "admin";
const VIEWER: &str = "viewer";
const PLUGIN: &str = "plugin";

/// Every kind: reads open to anyone the CA vouches for.
const ANYONE: &[&str] = &[
    SCHEDULER,
    JOB_TRACKER,
    HOST,
    OPERATOR,
    ADMIN,
    VIEWER,
    PLUGIN,
];
/// Changes to storage and operations.
const RUNS: &[&str] = &[SCHEDULER, OPERATOR, ADMIN];
/// Reads of storage and operations.
const READS: &[&str] = &[SCHEDULER, OPERATOR, ADMIN, VIEWER];

/// Which kinds of identity may call each method (`/package.Service/Method`), or every method of a
/// service (`/package.Service/`). PROTOCOLS.md has the same table in prose.
pub const ALLOWED: &[(&str, &[&str])] = &[
    ("/grpc.health.v1.Health/", ANYONE),
    ("/grpc.reflection.v1.ServerReflection/", ANYONE),
    ("/grpc.reflection.v1alpha.ServerReflection/", ANYONE),
    // Host-workers: storage changes come from the engine or a person running operations.
    ("/datapath.v1.HostWorkerService/CreateStorageDomain", RUNS),
    ("/datapath.v1.HostWorkerService/CreateVolume", RUNS),
    ("/datapath.v1.HostWorkerService/DeleteImage", RUNS),
    ("/datapath.v1.HostWorkerService/CopyData", RUNS),
    ("/datapath.v1.HostWorkerService/FenceVolume", RUNS),
    (
        "/datapath.v1.HostWorkerService/AbortHostJob",
        &[SCHEDULER, JOB_TRACKER, OPERATOR, ADMIN],
    ),
    ("/datapath.v1.HostWorkerService/ListStorageDomains", READS),
    ("/datapath.v1.HostWorkerService/GetVolumeInfo", READS),
    ("/datapath.v1.HostWorkerService/ListImages", READS),
    ("/datapath.v1.HostWorkerService/ListVolumes", READS),
    ("/datapath.v1.HostWorkerService/ListHostJobs", READS),
    // The job-tracker: a job is created and updated by its host (for its own host id: checked by the
    // handler), aborted by the engine or a person.
    ("/datapath.v1.JobTrackerService/CreateJob", &[HOST]),
    ("/datapath.v1.JobTrackerService/UpdateJob", &[HOST]),
    ("/datapath.v1.JobTrackerService/AbortJob", RUNS),
    (
        "/datapath.v1.JobTrackerService/DeleteJob",
        &[OPERATOR, ADMIN],
    ),
    ("/datapath.v1.JobTrackerService/GetJob", ANYONE),
    ("/datapath.v1.JobTrackerService/ListJobs", ANYONE),
    ("/datapath.v1.JobTrackerService/WatchJobs", ANYONE),
    ("/datapath.v1.JobTrackerService/ListRegisteredHosts", ANYONE),
    // The scheduler: operations by people; runtime settings by admins only.
    ("/datapath.v1.SchedulerService/MoveDisk", &[OPERATOR, ADMIN]),
    (
        "/datapath.v1.SchedulerService/CloneDisk",
        &[OPERATOR, ADMIN],
    ),
    (
        "/datapath.v1.SchedulerService/CancelOperation",
        &[OPERATOR, ADMIN],
    ),
    ("/datapath.v1.SchedulerService/SetConfig", &[ADMIN]),
    ("/datapath.v1.SchedulerService/GetOperation", READS),
    ("/datapath.v1.SchedulerService/ListOperations", READS),
    ("/datapath.v1.SchedulerService/WatchOperation", READS),
    ("/datapath.v1.SchedulerService/GetDiskStatus", READS),
    ("/datapath.v1.SchedulerService/ListHosts", READS),
    ("/datapath.v1.SchedulerService/GetConfig", READS),
    // A placement plugin answers the engine only.
    ("/datapath.v1.HostSelectorService/SelectHost", &[SCHEDULER]),
];

/// Whether `identity` may call `path`.
pub fn allowed(path: &str, identity: &Identity) -> bool {
    let kind = identity.kind();
    ALLOWED
        .iter()
        .find(|(method, _)| {
            if method.ends_with('/') {
                path.starts_with(method)
            } else {
                path == *method
            }
        })
        .is_some_and(|(_, kinds)| kinds.contains(&kind))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    grpc_method: String,
    identity: &'static str,
}

fn denied_total() -> &'static CounterFamily<DeniedLabels> {
    static DENIED: LazyLock<CounterFamily<DeniedLabels>> = LazyLock::new(|| {
        let family = CounterFamily::default();
        register(
            "datapath_grpc_server_denied",
            "Calls refused PERMISSION_DENIED by the authorisation layer, by method and the kind of \
             identity that made them (no certificate: `none`)",
            family.clone(),
        );
        family
    });
    &DENIED
}

/// Registers the denial counter, so it shows from the first scrape.
pub fn init() {
    denied_total();
}

/// The layer; `enforce` is false under `--insecure`.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    enforce: bool,
}

impl AuthorizeLayer {
    /// Enforces [`ALLOWED`] when `enforce` (the server runs mutual TLS).
    pub fn new(enforce: bool) -> Self {
        init();
        Self { enforce }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            enforce: self.enforce,
        }
    }
}

/// The service [`AuthorizeLayer`] makes.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    enforce: bool,
}

/// Why a call was refused: the status to answer and what to count.
fn refusal(path: &str, who: Result<Identity, String>) -> (tonic::Status, &'static str) {
    let (identity, kind) = match &who {
        Ok(id) => (id.uri(), id.kind()),
        Err(why) => (format!("none ({why})"), "none"),
    };
    let status = datapath_api::error::status_with_metadata(
        tonic::Code::PermissionDenied,
        "PERMISSION_DENIED",
        format!("{identity} may not call {path}"),
        &[("identity", identity.clone()), ("method", path.to_string())],
    );
    (status, kind)
}

impl<S, B, ResB> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !self.enforce {
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path().to_string();
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        let who =
            identity_of_chain(certs.as_ref().map(|c| c.as_slice())).map_err(|e| e.to_string());
        match who {
            Ok(identity) if allowed(&path, &identity) => {
                request.extensions_mut().insert(Caller(identity));
                Box::pin(self.inner.call(request))
            }
            who => {
                let response = deny(&path, who).into_http::<ResB>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// Refuses a call to `method` by `who` (an identity, or why there is none): logs it, counts it,
/// and returns the `PERMISSION_DENIED` status to answer. Handlers use it for the checks that depend
/// on the request (a host updating another host's job).
pub fn deny(method: &str, who: Result<Identity, String>) -> tonic::Status {
    let (status, kind) = refusal(method, who);
    tracing::warn!(%method, caller = %status.message(), "call refused: PERMISSION_DENIED");
    denied_total()
        .get_or_create(&DeniedLabels {
            grpc_method: method.to_string(),
            identity: kind,
        })
        .inc();
    status
}

/// The caller of a request the layer let through, when the server runs mutual TLS.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Identity> {
    request.extensions().get::<Caller>().map(|c| &c.0)
}

#[cfg(test)]
mod tests {
    use datapath_api::ids::HostId;

    use super::*;

    fn every_kind() -> Vec<Identity> {
        vec![
            Identity::Host(HostId::random()),
            Identity::Scheduler,
            Identity::JobTracker,
            Identity::Operator("o".into()),
            Identity::Admin("a".into()),
            Identity::Viewer("v".into()),
            Identity::Plugin("p".into()),
        ]
    }

    /// Every row of the table, for every kind of identity: allowed exactly when the row names it.
    #[test]
    fn every_row_allows_exactly_the_kinds_it_names() {
        for (method, kinds) in ALLOWED {
            let path = if method.ends_with('/') {
                format!("{method}Any")
            } else {
                method.to_string()
            };
            for id in every_kind() {
                assert_eq!(
                    allowed(&path, &id),
                    kinds.contains(&id.kind()),
                    "{} calling {path}",
                    id.kind()
                );
            }
        }
    }

    #[test]
    fn a_method_the_table_does_not_name_is_refused_to_everyone() {
        for id in every_kind() {
            assert!(!allowed("/datapath.v1.HostWorkerService/Format", &id));
            assert!(!allowed("/datapath.v1.SchedulerService/", &id));
            assert!(!allowed("/other.Service/Call", &id));
        }
    }

    /// The table names every method of every datapath service, so none is refused by omission.
    #[test]
    fn every_method_of_the_api_is_in_the_table() {
        use prost::Message as _;
        let set =
            prost_types::FileDescriptorSet::decode(datapath_api::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(
                        ALLOWED.iter().any(|(m, _)| *m == path),
                        "{path} is not in the authorisation table"
                    );
                    methods += 1;
                }
            }
        }
        assert!(methods >= 30, "only {methods} methods found");
    }
}
