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
};

use datapath_api::pb;
use etcd_client::KeyValue;
use tokio::sync::watch;

use crate::{
    volume_view::Known,
    watched::{self, TaskGuard, Watched},
    Coord,
};

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
    state: Arc<Shared>,
    changes: watch::Receiver<u64>,
    _task: Option<Arc<TaskGuard>>,
}

/// What the view's task and its readers share.
struct Shared {
    state: RwLock<State>,
    changes: watch::Sender<u64>,
    /// Bumped when a host's registration goes (or the view is read afresh, which may have missed a
    /// departure): what followers of a host's work wake on, rarer than every change.
    departures: watch::Sender<u64>,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("cluster view lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("cluster view lock")
    }
}

impl ClusterView {
    /// Every live host in id order; `None` while the view is not in step with etcd.
    pub fn hosts(&self) -> Option<Vec<pb::Host>> {
        let state = self.state.read();
        state
            .synced
            .then(|| state.hosts.values().cloned().collect())
    }

    /// One host's registration.
    pub fn host(&self, host_id: &str) -> Known<pb::Host> {
        let state = self.state.read();
        match (state.synced, state.hosts.get(host_id)) {
            (false, _) => Known::Unknown,
            (true, None) => Known::Absent,
            (true, Some(h)) => Known::Present(h.clone()),
        }
    }

    /// The host id the SPM election names (its oldest candidate).
    pub fn spm(&self) -> Known<String> {
        let state = self.state.read();
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
        let state = self.state.read();
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

    /// A receiver that changes whenever a host's registration goes, or the view is read afresh:
    /// the wake-up of whoever waits on one host's loss, without waking on every registration
    /// refresh of hundreds of hosts.
    pub fn departures(&self) -> watch::Receiver<u64> {
        self.state.departures.subscribe()
    }

    /// Whether the view is in step with etcd, and the revision it reflects.
    pub fn synced(&self) -> (bool, i64) {
        let state = self.state.read();
        (state.synced, state.revision)
    }
}

impl Coord {
    /// Starts the cluster view: it is [`Known::Unknown`] until its first full read is done.
    pub fn cluster_view(&self) -> ClusterView {
        let (tx, rx) = watch::channel(0u64);
        let state = Arc::new(Shared {
            state: RwLock::default(),
            changes: tx,
            departures: watch::channel(0).0,
        });
        ClusterView {
            _task: Some(watched::start(self, state.clone())),
            state,
            changes: rx,
        }
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

impl Watched for Shared {
    const NAME: &'static str = "cluster";

    fn prefixes(&self, coord: &Coord) -> Vec<String> {
        prefixes(coord).to_vec()
    }

    fn reset(&self, coord: &Coord, revision: i64, kvs: &[KeyValue]) {
        let mut s = self.write();
        *s = State {
            synced: true,
            revision,
            ..State::default()
        };
        for kv in kvs {
            put(coord, &mut s, kv);
        }
        drop(s);
        self.departures.send_modify(|n| *n += 1);
    }

    fn change(&self, coord: &Coord, put_it: bool, kv: &KeyValue) {
        let mut s = self.write();
        let departed = !put_it && kv.key().starts_with(coord.keys().hosts().as_bytes());
        if put_it {
            put(coord, &mut s, kv);
        } else {
            delete(coord, &mut s, kv);
        }
        s.revision = s.revision.max(kv.mod_revision());
        drop(s);
        if departed {
            self.departures.send_modify(|n| *n += 1);
        }
    }

    fn out_of_step(&self) {
        self.write().synced = false;
    }

    fn revision(&self) -> i64 {
        self.read().revision
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
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
        let (tx, rx) = watch::channel(0);
        ClusterView {
            state: Arc::new(Shared {
                state: RwLock::new(state),
                changes: tx,
                departures: watch::channel(0).0,
            }),
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
