//! Records that do not decode are quarantined, not fatal. A hand-edited value, a record written by
//! a newer or broken version, or plain garbage under the prefix must not stop a listing: the acting
//! scheduler would run no flow, the job-tracker would answer no ListJobs and sweep no lost host.
//! A listing or a watch skips such a record, logs it once per key and revision (its key, so an
//! operator can look at it with `dpctl debug etcd` or `etcdctl`), and counts it in
//! `datapath_etcd_bad_records_total{kind}`. Reads of one named record still fail with
//! [`CoordError::Decode`](crate::CoordError::Decode): the caller asked for that record.
use std::{
    collections::HashSet,
    sync::{LazyLock, Mutex},
};

use etcd_client::KeyValue;
use prost::Message;
use tracing::warn;

use crate::metrics::{metrics, RecordLabels};

/// Keys (with revisions) already logged; cleared when it grows past this, so it stays bounded.
const LOGGED_MAX: usize = 10_000;

/// A record's key and mod revision.
type Seen = (Vec<u8>, i64);

static LOGGED: LazyLock<Mutex<HashSet<Seen>>> = LazyLock::new(Mutex::default);

/// The record in `kv` as an `M`, or `None` (logged once, counted under `kind`) if it does not
/// decode.
pub fn listed<M: Message + Default>(kind: &'static str, kv: &KeyValue) -> Option<M> {
    match M::decode(kv.value()) {
        Ok(m) => Some(m),
        Err(e) => {
            skipped(kind, kv, &e.to_string());
            None
        }
    }
}

/// Counts and logs (once per key and revision) a record of `kind` skipped because of `why`.
pub fn skipped(kind: &'static str, kv: &KeyValue, why: &str) {
    metrics()
        .bad_records
        .get_or_create(&RecordLabels { kind })
        .inc();
    let mut logged = LOGGED.lock().expect("quarantine log lock");
    if logged.len() >= LOGGED_MAX {
        logged.clear();
    }
    if logged.insert((kv.key().to_vec(), kv.mod_revision())) {
        warn!(
            key = %String::from_utf8_lossy(kv.key()),
            kind,
            revision = kv.mod_revision(),
            error = why,
            "skipping an etcd record that does not decode"
        );
    }
}
