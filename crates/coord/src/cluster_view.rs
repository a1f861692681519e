//! A watched copy of the cluster's membership: every host's registration (`hosts/`), the SPM
//! election's candidates (`spm/`) and the runtime settings (`config/`), so that the scheduler's
//! frequent questions — which hosts are live and reach a domain, which host is the SPM, whether
//! data steps may run on any host, whether a copy's host is still there — cost no etcd round trip,
//! and a step waiting for a host or a slot wakes on a change instead of polling. Built from one
//! range read of each prefix at one revision, then kept by a watch of each from the next revision;
//! a broken or compacted watch sends it back to a full read, and until that read is done the view
//! answers [`Known::Unknown`] (callers then ask etcd).
//!
//! The view lags etcd by the time a watch event takes to arrive. Its readers only use it where
//! that cannot mislead: placement re-checks nothing it could get wrong (a host that vanished a
//! moment ago fails the copy's call and the step is retried), and "is the copy's host gone?" is a
//! question the scheduler asks again every few seconds.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use datapath_api::pb;
use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions, WatchResponse};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{volume_view::Known, Coord, CoordError, Result};

/// The longest pause between two attempts to read and watch again.
const MAX_PAUSE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    synced: bool,
    revision: i64,
    /// Registrations by host id; a record that does not decode is left out (and counted).
    hosts: BTreeMap<String, pb::Host>,
    /// SPM candidates by key: (create revision, host id). The leader is the oldest.
    spm: HashMap<Vec<u8>, (i64, String)>,
    /// Settings by name.
    config: HashMap<String, String>,
}

/// The watched view; cheap to clone. The watch stops when the last clone is dropped.
#[derive(Clone)]
pub struct ClusterView {
    state: Arc<RwLock<State>>,
    changes: watch::Receiver<u64>,
    _task: Option<Arc<crate::volume_view::TaskGuard>>,
}

impl ClusterView {
    /// Every live host in id order; `None` while the view is not in step with etcd.
    pub fn hosts(&self) -> Option<Vec<pb::Host>> {
        let state = self.state.read().expect("cluster view lock");
        state
            .synced
            .then(|| state.hosts.values().cloned().collect())
    }

    /// One host's registration.
    pub fn host(&self, host_id: &str) -> Known<pb::Host> {
        let state = self.state.read().expect("cluster view lock");
        match (state.synced, state.hosts.get(host_id)) {
            (false, _) => Known::Unknown,
            (true, None) => Known::Absent,
            (true, Some(h)) => Known::Present(h.clone()),
        }
    }

    /// The host id the SPM election names (its oldest candidate).
    pub fn spm(&self) -> Known<String> {
        let state = self.state.read().expect("cluster view lock");
        if !state.synced {
            return Known::Unknown;
        }
        match state.spm.values().min_by_key(|(rev, _)| *rev) {
            Some((_, host)) => Known::Present(host.clone()),
            None => Known::Absent,
        }
    }

    /// A runtime setting.
    pub fn config(&self, name: &str) -> Known<String> {
        let state = self.state.read().expect("cluster view lock");
        match (state.synced, state.config.get(name)) {
            (false, _) => Known::Unknown,
            (true, None) => Known::Absent,
            (true, Some(v)) => Known::Present(v.clone()),
        }
    }

    /// A receiver that changes whenever the view does (a host registers, refreshes or goes, the
    /// SPM changes, a setting changes, or the view falls out of step or comes back).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Whether the view is in step with etcd, and the revision it reflects.
    pub fn synced(&self) -> (bool, i64) {
        let state = self.state.read().expect("cluster view lock");
        (state.synced, state.revision)
    }
}

impl Coord {
    /// Starts the cluster view: it is [`Known::Unknown`] until its first full read is done.
    pub fn cluster_view(&self) -> ClusterView {
        let state = Arc::new(RwLock::new(State::default()));
        let (tx, rx) = watch::channel(0u64);
        let task = tokio::spawn(follow_forever(self.clone(), state.clone(), tx));
        ClusterView {
            state,
            changes: rx,
            _task: Some(Arc::new(crate::volume_view::TaskGuard(task.abort_handle()))),
        }
    }
}

async fn follow_forever(coord: Coord, state: Arc<RwLock<State>>, changes: watch::Sender<u64>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let outcome = follow(&coord, &state, &changes).await;
        state.write().expect("cluster view lock").synced = false;
        changes.send_modify(|n| *n += 1);
        match outcome {
            Ok(()) => info!("cluster view: a watch ended; reading everything again"),
            Err(e) => {
                warn!(error = %e, "cluster view: out of step with etcd; reading everything again")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// The prefixes the view follows: hosts, the SPM election's candidates, settings.
fn prefixes(coord: &Coord) -> [String; 3] {
    let keys = coord.keys();
    [
        keys.hosts(),
        format!("{}/", keys.election("spm")),
        keys.config(""),
    ]
}

/// One full read, then the watches until one of them ends or fails.
async fn follow(coord: &Coord, state: &RwLock<State>, changes: &watch::Sender<u64>) -> Result<()> {
    let [hosts_prefix, spm_prefix, config_prefix] = prefixes(coord);
    let mut client = coord.client();
    let hosts = client
        .get(hosts_prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = hosts.header().map(|h| h.revision()).unwrap_or_default();
    let at_revision = GetOptions::new().with_prefix().with_revision(revision);
    let spm = client
        .get(spm_prefix.clone(), Some(at_revision.clone()))
        .await?;
    let config = client.get(config_prefix.clone(), Some(at_revision)).await?;
    let from = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut host_watch = client.watch(hosts_prefix, Some(from.clone())).await?;
    let mut spm_watch = client.watch(spm_prefix, Some(from.clone())).await?;
    let mut config_watch = client.watch(config_prefix, Some(from)).await?;
    {
        let mut s = state.write().expect("cluster view lock");
        *s = State {
            synced: true,
            revision,
            ..State::default()
        };
        for kv in hosts.kvs().iter().chain(spm.kvs()).chain(config.kvs()) {
            put(coord, &mut s, kv);
        }
        debug!(revision, hosts = s.hosts.len(), "cluster view in step");
    }
    changes.send_modify(|n| *n += 1);
    loop {
        let resp = tokio::select! {
            r = host_watch.message() => r?,
            r = spm_watch.message() => r?,
            r = config_watch.message() => r?,
        };
        let Some(resp) = resp else { return Ok(()) };
        apply(coord, state, &resp)?;
        changes.send_modify(|n| *n += 1);
    }
}

fn apply(coord: &Coord, state: &RwLock<State>, resp: &WatchResponse) -> Result<()> {
    if resp.compact_revision() > 0 {
        return Err(CoordError::Compacted {
            requested: state.read().expect("cluster view lock").revision + 1,
            compacted: resp.compact_revision(),
        });
    }
    if resp.canceled() {
        return Err(CoordError::WatchCanceled(resp.cancel_reason().to_string()));
    }
    let mut s = state.write().expect("cluster view lock");
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        if event.event_type() == EventType::Put {
            put(coord, &mut s, kv);
        } else {
            delete(coord, &mut s, kv);
        }
        s.revision = s.revision.max(kv.mod_revision());
    }
    Ok(())
}

fn put(coord: &Coord, s: &mut State, kv: &KeyValue) {
    let [hosts, spm, config] = prefixes(coord);
    let key = String::from_utf8_lossy(kv.key());
    if let Some(id) = key.strip_prefix(&hosts) {
        match crate::quarantine::listed::<pb::Host>("hosts", kv) {
            Some(host) => s.hosts.insert(id.to_string(), host),
            None => s.hosts.remove(id),
        };
    } else if key.starts_with(&spm) {
        let host = String::from_utf8_lossy(kv.value()).into_owned();
        s.spm
            .insert(kv.key().to_vec(), (kv.create_revision(), host));
    } else if let Some(name) = key.strip_prefix(&config) {
        s.config.insert(
            name.to_string(),
            String::from_utf8_lossy(kv.value()).into_owned(),
        );
    }
}

fn delete(coord: &Coord, s: &mut State, kv: &KeyValue) {
    let [hosts, _, config] = prefixes(coord);
    let key = String::from_utf8_lossy(kv.key());
    if let Some(id) = key.strip_prefix(&hosts) {
        s.hosts.remove(id);
    } else if let Some(name) = key.strip_prefix(&config) {
        s.config.remove(name);
    } else {
        s.spm.remove(kv.key());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: State) -> ClusterView {
        let (_tx, rx) = watch::channel(0);
        ClusterView {
            state: Arc::new(RwLock::new(state)),
            changes: rx,
            _task: None,
        }
    }

    #[test]
    fn out_of_step_the_view_knows_nothing() {
        let v = view(State::default());
        assert!(v.hosts().is_none());
        assert_eq!(v.host("h"), Known::Unknown);
        assert_eq!(v.spm(), Known::Unknown);
        assert_eq!(v.config("c"), Known::Unknown);
    }

    #[test]
    fn the_spm_is_the_oldest_candidate() {
        let v = view(State {
            synced: true,
            hosts: BTreeMap::from([(
                "a".to_string(),
                pb::Host {
                    host_id: "a".into(),
                    ..Default::default()
                },
            )]),
            spm: HashMap::from([
                (b"k2".to_vec(), (9, "b".to_string())),
                (b"k1".to_vec(), (7, "a".to_string())),
            ]),
            ..State::default()
        });
        assert_eq!(v.spm(), Known::Present("a".into()));
        assert_eq!(v.host("b"), Known::Absent);
        assert!(matches!(v.host("a"), Known::Present(_)));
        assert_eq!(v.config("c"), Known::Absent);
        assert_eq!(v.hosts().unwrap().len(), 1);
    }
}
