//! What every part of the scheduler shares: etcd, the clients of the other services, the placement
//! policy and its bookkeeping, and the settings. The scheduler never touches storage: what it knows
//! about a volume it learns from a live host-worker.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use datapath_api::pb;
use datapath_coord::{cluster_view::ClusterView, volume_view::Known, Coord};
use tokio::sync::{Mutex, Notify};
use tonic::{Code, Status};

use crate::{
    clients::{Clients, HostClient},
    error::Error,
    selection::{HostSelector, Placed},
};

/// The runtime setting that sends every data step to the SPM when false (the seed's
/// `DataOperationsByHSM`).
pub const DATA_OPERATIONS_BY_HSM: &str = "data_operations_by_hsm";

/// Tunables of the flows.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Volumes of one chain copied at once (the seed copied them one by one: 1).
    pub parallel_copies: usize,
    /// Copy attempts per volume before the operation rolls back.
    pub copy_attempts: u32,
    /// How long a run of transient conflicts may last before a copy fails.
    pub copy_retry_budget: Duration,
    /// How long an ended operation stays visible.
    pub retention: Duration,
    /// How long a step waits for a host that reaches both domains before the operation fails.
    pub no_host_timeout: Duration,
    /// The flow point at which this scheduler kills itself, for fault tests (see [`Engine::failpoint`]).
    pub failpoint: Option<crate::flow::failpoint::Failpoint>,
}

impl Settings {
    /// The limits on one volume's copy.
    pub fn retry_policy(&self) -> crate::flow::retry::RetryPolicy {
        crate::flow::retry::RetryPolicy {
            attempts: self.copy_attempts,
            budget: self.copy_retry_budget,
        }
    }
}

/// The queue of the steps waiting for a host between two storage domains.
pub type PlacementQueue = Arc<Mutex<()>>;

/// The shared context.
pub struct Engine {
    /// etcd.
    pub coord: Coord,
    /// Hosts, the SPM and the settings, watched: read without an etcd round trip.
    pub view: ClusterView,
    /// Every followed copy job, through one WatchJobs stream.
    pub jobs: crate::job_watch::JobWatch,
    /// Notified when a placement of this scheduler is forgotten (a slot it counted is free).
    pub unplaced: Notify,
    /// One queue per pair of storage domains for the steps waiting for a host: only the first
    /// of each queue looks for one (and wakes on changes), the others wait their turn, so a
    /// thousand waiting steps cost what one does.
    pub placement_queues: std::sync::Mutex<HashMap<(String, String), PlacementQueue>>,
    /// The other services.
    pub clients: Clients,
    /// The placement policy.
    pub selector: Arc<dyn HostSelector>,
    /// Tunables.
    pub settings: Settings,
    /// The disk locks, as MoveDisk, CloneDisk and a move's source deletion take them.
    pub locks: Arc<dyn datapath_coord::disk_locks::DiskLocks>,
    /// The flow records, as runners read and save them.
    pub flows: Arc<dyn datapath_coord::flow_store::FlowStore>,
    /// Turns for flows to start (`--max-starting-flows`).
    pub admission: crate::flow::admission::Admission,
    /// Copies placed by this scheduler and not yet ended; held while a placement is decided, so two
    /// steps placed at the same instant see each other.
    pub placed: Mutex<Placed>,
    /// Turns among the hosts that reach a domain, for reads: a host that does not answer is not
    /// asked again and again.
    pub read_turn: std::sync::atomic::AtomicUsize,
    /// Hosts (by address) that did not answer a volume read lately, and when: reads skip them for
    /// [`UNANSWERED_FOR`] while another host reaches the domain, so a host cut off from the engine
    /// (but alive in etcd) costs one timeout, not one per read.
    pub unanswered: std::sync::Mutex<HashMap<String, Instant>>,
}

/// How long a host that did not answer a read is skipped by later reads.
pub const UNANSWERED_FOR: Duration = Duration::from_secs(30);
/// Deadline of one volume read (GetVolumeInfo: a metadata file and two etcd reads).
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

impl Engine {
    /// Live hosts, in id order: from the view, or etcd while the view is out of step.
    pub async fn live_hosts(&self) -> Result<Vec<pb::Host>, Error> {
        match self.view.hosts() {
            Some(hosts) => Ok(hosts),
            None => Ok(self.coord.list_hosts().await?),
        }
    }

    /// Host `host_id`'s registration, if it is live: from the view, or etcd while the view is
    /// out of step.
    pub async fn host(&self, host_id: &str) -> Result<Option<pb::Host>, Error> {
        match self.view.host(host_id) {
            Known::Present(h) => Ok(Some(h)),
            Known::Absent => Ok(None),
            Known::Unknown => {
                let id = datapath_api::ids::HostId::parse("host_id", host_id)?;
                Ok(self.coord.get_host(id).await?)
            }
        }
    }

    /// Whether host `host_id` is registered (live). An etcd error is not evidence that it is
    /// gone: then it counts as live.
    pub async fn host_live(&self, host_id: &str) -> bool {
        match self.host(host_id).await {
            Ok(h) => h.is_some(),
            Err(Error::Invalid(_)) => false,
            Err(_) => true,
        }
    }

    /// The host id the SPM election names, if any.
    pub async fn spm_id(&self) -> Result<Option<String>, Error> {
        match self.view.spm() {
            Known::Present(id) => Ok(Some(id)),
            Known::Absent => Ok(None),
            Known::Unknown => Ok(datapath_coord::election::Elections::leader(
                &self.coord,
                datapath_coord::election::Role::Spm,
            )
            .await?
            .map(|l| l.value)),
        }
    }

    /// The SPM's host id and registration, when one is elected and registered.
    pub async fn spm(&self) -> Result<Option<pb::Host>, Error> {
        let Some(id) = self.spm_id().await? else {
            return Ok(None);
        };
        Ok(self
            .live_hosts()
            .await?
            .into_iter()
            .find(|h| h.host_id == id))
    }

    /// A client of the SPM, or UNAVAILABLE while none is elected.
    pub async fn spm_client(&self) -> Result<(pb::Host, HostClient), Status> {
        let host = self
            .spm()
            .await
            .map_err(Status::from)?
            .ok_or_else(|| Status::unavailable("no SPM is elected"))?;
        let client = self.clients.host(&host)?;
        Ok((host, client))
    }

    /// A live host that reaches storage domain `sd`, to read from: the hosts take turns (the SPM
    /// last in each round, as it has work of its own), so a caller that retries after a host did not
    /// answer asks another.
    pub async fn host_reaching(&self, sd: &str, field: &str) -> Result<HostClient, Error> {
        self.reader(sd, field).await.map(|(_, client)| client)
    }

    /// [`Engine::host_reaching`], with the chosen host's address.
    async fn reader(&self, sd: &str, field: &str) -> Result<(String, HostClient), Error> {
        let spm = self.spm_id().await?;
        let mut hosts: Vec<pb::Host> = self
            .live_hosts()
            .await?
            .into_iter()
            .filter(|h| crate::selection::reaches(h, sd))
            .collect();
        if hosts.is_empty() {
            return Err(Error::DomainNotFound {
                sd: sd.to_string(),
                field: field.to_string(),
            });
        }
        {
            let mut unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
            unanswered.retain(|_, at| at.elapsed() < UNANSWERED_FOR);
            if hosts.iter().any(|h| !unanswered.contains_key(&h.address)) {
                hosts.retain(|h| !unanswered.contains_key(&h.address));
            }
        }
        hosts.sort_by_key(|h| Some(&h.host_id) == spm.as_ref());
        let turn = self
            .read_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host = &hosts[turn % hosts.len()];
        let client = self.clients.host(host).map_err(|status| Error::Host {
            host: host.address.clone(),
            status,
        })?;
        Ok((host.address.clone(), client))
    }

    /// Reads a volume from a live host that reaches its domain (see [`Engine::host_reaching`]),
    /// each host within [`READ_TIMEOUT`]; a host that does not answer is skipped by later reads and
    /// the next one is asked at once (up to three).
    pub async fn volume_info(
        &self,
        v: &pb::VolumeRef,
        field: &str,
    ) -> Result<pb::VolumeInfo, Status> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (address, mut client) = self
                .reader(&v.storage_domain_id, field)
                .await
                .map_err(Status::from)?;
            let mut req = tonic::Request::new(pb::GetVolumeInfoRequest {
                volume: Some(v.clone()),
            });
            req.set_timeout(READ_TIMEOUT);
            match client.get_volume_info(req).await {
                Ok(resp) => return Ok(resp.into_inner().volume.unwrap_or_default()),
                Err(s) if unanswered(&s) => {
                    self.unanswered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(address, Instant::now());
                    if tries >= 3 {
                        return Err(s);
                    }
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// A failpoint: when the configured one is `name`, the scheduler kills itself (SIGKILL) right
    /// here, so a test can crash it at an exact flow step. Off unless `--failpoint` is set.
    pub fn failpoint(&self, point: crate::flow::failpoint::Failpoint) {
        if self.settings.failpoint == Some(point) {
            tracing::error!(
                failpoint = point.name(),
                "failpoint reached: killing this scheduler"
            );
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Whether data steps may run on any host (default true).
    pub async fn data_operations_by_hsm(&self) -> Result<bool, Error> {
        let value = match self.view.config(DATA_OPERATIONS_BY_HSM) {
            Known::Present(v) => Some(v),
            Known::Absent => None,
            Known::Unknown => self.coord.get_config(DATA_OPERATIONS_BY_HSM).await?,
        };
        Ok(value.map(|v| v != "false").unwrap_or(true))
    }

    /// The placement queue of steps from storage domain `src` to `dst`.
    pub fn placement_queue(&self, src: &str, dst: &str) -> PlacementQueue {
        let mut queues = self
            .placement_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Queues nobody waits in are dropped, so the map holds only pairs in use.
        queues.retain(|_, q| Arc::strong_count(q) > 1);
        queues
            .entry((src.to_string(), dst.to_string()))
            .or_default()
            .clone()
    }
}

/// Whether a call's failure says the host did not answer (rather than answered no).
fn unanswered(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Whether a failed call is worth repeating later (the callee or the network may recover, or the SPM
/// role may move) rather than a verdict on the request.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    ) || datapath_api::error::reason(status).as_deref() == Some("NOT_SPM")
}
