//! Everything datapath keeps in etcd, read at one revision and sorted by the key layout ([`crate::keys`]),
//! for people debugging a cluster (`dpctl debug etcd`): which hosts are live under which lease, who is
//! SPM and who runs the flows, which volume leases are held and how long they have left, every job,
//! flow, disk lock, generation and setting. Read-only; one range read of the prefix plus one
//! `LeaseTimeToLive` per distinct lease, so it is consistent except for the TTLs, read just after.
use std::collections::BTreeMap;

use datapath_api::pb;
use etcd_client::{GetOptions, KeyValue};
use prost::Message;

use crate::{Coord, Result};

/// One record with the etcd facts about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    /// The key below its section, e.g. the host id, `<sd>/<img>/<vol>` or the election lease.
    pub name: String,
    /// The decoded value.
    pub value: T,
    /// The etcd lease the key is bound to (0: none, it is permanent).
    pub lease: i64,
    /// The revision that created the key (for a volume lease: its fencing token).
    pub create_revision: i64,
    /// The revision that last wrote it.
    pub mod_revision: i64,
}

/// Candidates of one election, oldest first: the first is the leader.
pub type Candidates = Vec<Entry<String>>;

/// What etcd says of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTtl {
    /// The TTL it was granted, in seconds.
    pub granted: i64,
    /// Seconds left; `None` when it has expired or was revoked since the read.
    pub left: Option<i64>,
}

/// A key under the prefix that did not decode as its place in the layout says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The full key.
    pub key: String,
    /// Why it could not be read.
    pub error: String,
}

/// The whole datapath keyspace at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The key prefix read.
    pub prefix: String,
    /// The etcd revision the records were read at.
    pub revision: i64,
    /// `hosts/<host_id>`: live hosts.
    pub hosts: Vec<Entry<pb::Host>>,
    /// `spm/<lease>`: host ids campaigning for the SPM role; the first is the SPM.
    pub spm: Candidates,
    /// `scheduler/<lease>`: scheduler addresses; the first runs the flows.
    pub schedulers: Candidates,
    /// `leases/volumes/<sd>/<img>/<vol>`: held volume leases (`revision` is the fencing token).
    pub volume_leases: Vec<Entry<pb::VolumeLease>>,
    /// `holds/volumes/<sd>/<img>/<vol>/<job_id>`: copies reading a volume (the reader).
    pub volume_holds: Vec<Entry<pb::VolumeLease>>,
    /// `deleting/<sd>/<img>`: images the SPM is deleting (its host id).
    pub image_deletions: Vec<Entry<String>>,
    /// `jobs/<job_id>`.
    pub jobs: Vec<Entry<pb::Job>>,
    /// `flows/<operation_id>`.
    pub flows: Vec<Entry<pb::Flow>>,
    /// `locks/disks/<sd>/<img>`.
    pub disk_locks: Vec<Entry<pb::DiskLock>>,
    /// `generations/<sd>/<img>/<vol>`: the committed generation of each volume.
    pub generations: Vec<Entry<u64>>,
    /// `requests/<hex request id>`: idempotency keys and the operation each names.
    pub requests: Vec<Entry<String>>,
    /// `config/<name>`: runtime settings.
    pub config: Vec<Entry<String>>,
    /// Keys outside the known layout (a newer version's), as text.
    pub other: Vec<Entry<String>>,
    /// Records that did not decode.
    pub unreadable: Vec<Unreadable>,
    /// Every lease a key above is bound to.
    pub leases: BTreeMap<i64, LeaseTtl>,
}

impl Coord {
    /// Reads the whole keyspace under the prefix at one revision, then the TTL of every lease in it.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let prefix = self.keys().prefix().to_string();
        let resp = self
            .client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut snapshot = Snapshot {
            prefix: prefix.clone(),
            revision: resp.header().map_or(0, |h| h.revision()),
            ..Snapshot::default()
        };
        for kv in resp.kvs() {
            snapshot.add(&prefix, kv);
        }
        for candidates in [&mut snapshot.spm, &mut snapshot.schedulers] {
            candidates.sort_by_key(|c| c.create_revision);
        }
        let leases: Vec<i64> = snapshot.bound_leases();
        for id in leases {
            let ttl = self.client().lease_time_to_live(id, None).await?;
            snapshot.leases.insert(
                id,
                LeaseTtl {
                    granted: ttl.granted_ttl(),
                    left: (ttl.ttl() >= 0).then_some(ttl.ttl()),
                },
            );
        }
        Ok(snapshot)
    }
}

impl Snapshot {
    /// Files one key under its section.
    fn add(&mut self, prefix: &str, kv: &KeyValue) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(rest) = key.strip_prefix(prefix) else {
            return;
        };
        let (section, name) = rest.split_once('/').unwrap_or((rest, ""));
        let text = String::from_utf8_lossy(kv.value()).into_owned();
        let result = match (section, name) {
            ("hosts", _) => decode(kv).map(|v| self.hosts.push(entry(kv, name, v))),
            ("jobs", _) => decode(kv).map(|v| self.jobs.push(entry(kv, name, v))),
            ("flows", _) => decode(kv).map(|v| self.flows.push(entry(kv, name, v))),
            ("leases", n) if n.starts_with("volumes/") => {
                decode(kv).map(|v: pb::VolumeLease| {
                    // The fencing token is the key's create revision, as the lease's holder reads it.
                    let v = pb::VolumeLease {
                        revision: kv.create_revision(),
                        ..v
                    };
                    let volume = &n["volumes/".len()..];
                    self.volume_leases.push(entry(kv, volume, v));
                })
            }
            ("holds", n) if n.starts_with("volumes/") => decode(kv).map(|v| {
                self.volume_holds.push(entry(kv, &n["volumes/".len()..], v));
            }),
            ("deleting", _) => {
                self.image_deletions.push(entry(kv, name, text));
                Ok(())
            }
            ("locks", n) if n.starts_with("disks/") => decode(kv).map(|v| {
                let disk = &n["disks/".len()..];
                self.disk_locks.push(entry(kv, disk, v));
            }),
            ("generations", _) => crate::generations::decode_generation(kv.key(), kv.value())
                .map(|v| self.generations.push(entry(kv, name, v)))
                .map_err(|_| "not a generation (a decimal number)".to_string()),
            ("spm", _) => {
                self.spm.push(entry(kv, name, text));
                Ok(())
            }
            ("scheduler", _) => {
                self.schedulers.push(entry(kv, name, text));
                Ok(())
            }
            ("requests", _) => {
                self.requests.push(entry(kv, name, text));
                Ok(())
            }
            ("config", _) => {
                self.config.push(entry(kv, name, text));
                Ok(())
            }
            _ => {
                self.other.push(entry(kv, rest, text));
                Ok(())
            }
        };
        if let Err(error) = result {
            self.unreadable.push(Unreadable { key, error });
        }
    }

    /// The leases keys are bound to, each once.
    fn bound_leases(&self) -> Vec<i64> {
        let mut leases: Vec<i64> = self
            .hosts
            .iter()
            .map(|e| e.lease)
            .chain(self.spm.iter().map(|e| e.lease))
            .chain(self.schedulers.iter().map(|e| e.lease))
            .chain(self.volume_leases.iter().map(|e| e.lease))
            .chain(self.volume_holds.iter().map(|e| e.lease))
            .chain(self.image_deletions.iter().map(|e| e.lease))
            .chain(self.jobs.iter().map(|e| e.lease))
            .chain(self.flows.iter().map(|e| e.lease))
            .chain(self.requests.iter().map(|e| e.lease))
            .filter(|&l| l != 0)
            .collect();
        leases.sort_unstable();
        leases.dedup();
        leases
    }

    /// The SPM's host id, if a host holds the role.
    pub fn spm_host(&self) -> Option<&str> {
        self.spm.first().map(|c| c.value.as_str())
    }

    /// The address of the scheduler replica that runs the flows, if one leads.
    pub fn scheduler_leader(&self) -> Option<&str> {
        self.schedulers.first().map(|c| c.value.as_str())
    }
}

fn entry<T>(kv: &KeyValue, name: &str, value: T) -> Entry<T> {
    Entry {
        name: name.to_string(),
        value,
        lease: kv.lease(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

fn decode<M: Message + Default>(kv: &KeyValue) -> std::result::Result<M, String> {
    M::decode(kv.value()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_lease_is_asked_twice_and_none_is_zero() {
        let entry = |lease| Entry {
            name: String::new(),
            value: String::new(),
            lease,
            create_revision: 0,
            mod_revision: 0,
        };
        let snapshot = Snapshot {
            spm: vec![entry(5), entry(3)],
            schedulers: vec![entry(5)],
            requests: vec![entry(0)],
            ..Snapshot::default()
        };
        assert_eq!(snapshot.bound_leases(), [3, 5]);
        assert_eq!(snapshot.spm_host(), Some(""));
        assert_eq!(Snapshot::default().scheduler_leader(), None);
    }
}
