//! Reads of volumes' records in one transaction: a host without the volume view (clusters of more
//! than 32 hosts) asks etcd about a volume's generation, lease and read holds for every volume it
//! shows or checks. Asked one key at a time, CopyData's checks were three etcd round trips one
//! after another and a chain's listing two per volume; here every question about a set of volumes
//! is one transaction of range reads — one round trip, one request for etcd to admit, all answers
//! at one revision.
use datapath_api::{pb::VolumeLease, volume::VolumeKey};
use etcd_client::{GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse};

use crate::{generations::decode_generation, hosts::decode, Coord, CoordError, Result};

/// etcd 3.4's default limit on the operations of one transaction (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// What to read about one volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Its recorded generation (`generations/`).
    pub generation: bool,
    /// Its lease (`leases/volumes/`).
    pub lease: bool,
    /// Its read holds (`holds/volumes/`).
    pub holds: bool,
}

impl Wanted {
    fn count(self) -> usize {
        usize::from(self.generation) + usize::from(self.lease) + usize::from(self.holds)
    }
}

/// What etcd holds about one volume; a part not asked for is empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeRecords {
    /// The recorded generation and its mod revision.
    pub generation: Option<(u64, i64)>,
    /// The lease, with its create revision as `revision` (as [`Coord::volume_lease`] gives it).
    pub lease: Option<VolumeLease>,
    /// The read holds.
    pub holds: Vec<VolumeLease>,
}

impl Coord {
    /// Reads what `asks` want about each volume, in as few transactions as etcd allows (one for up
    /// to 42 volumes with everything wanted); the answers in the order asked.
    pub async fn volume_records(&self, asks: &[(VolumeKey, Wanted)]) -> Result<Vec<VolumeRecords>> {
        let mut answers = Vec::with_capacity(asks.len());
        let mut start = 0;
        while start < asks.len() {
            let mut ops = 0;
            let mut end = start;
            while end < asks.len() && ops + asks[end].1.count() <= MAX_TXN_OPS {
                ops += asks[end].1.count();
                end += 1;
            }
            answers.extend(self.volume_records_once(&asks[start..end]).await?);
            start = end;
        }
        Ok(answers)
    }

    async fn volume_records_once(
        &self,
        asks: &[(VolumeKey, Wanted)],
    ) -> Result<Vec<VolumeRecords>> {
        let keys = self.keys();
        let mut ops = Vec::new();
        for (volume, wanted) in asks {
            if wanted.generation {
                ops.push(TxnOp::get(keys.generation(volume), None));
            }
            if wanted.lease {
                ops.push(TxnOp::get(keys.volume_lease(volume), None));
            }
            if wanted.holds {
                ops.push(TxnOp::get(
                    keys.holds_of(volume),
                    Some(GetOptions::new().with_prefix()),
                ));
            }
        }
        if ops.is_empty() {
            return Ok(vec![VolumeRecords::default(); asks.len()]);
        }
        let resp = self.client().txn(Txn::new().and_then(ops)).await?;
        let mut gets = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(get) => Ok(get),
            _ => Err(CoordError::BadRecord {
                key: "volume_records".into(),
                why: "a read in a transaction answered as something else".into(),
            }),
        });
        let mut next = || {
            gets.next().unwrap_or_else(|| {
                Err(CoordError::BadRecord {
                    key: "volume_records".into(),
                    why: "a transaction answered fewer reads than it was asked".into(),
                })
            })
        };
        let mut answers = Vec::with_capacity(asks.len());
        for (_, wanted) in asks {
            let mut records = VolumeRecords::default();
            if wanted.generation {
                records.generation = generation_of(&next()?)?;
            }
            if wanted.lease {
                records.lease = lease_of(&next()?)?;
            }
            if wanted.holds {
                records.holds = next()?
                    .kvs()
                    .iter()
                    .map(|kv| decode(kv.key(), kv.value()))
                    .collect::<Result<_>>()?;
            }
            answers.push(records);
        }
        Ok(answers)
    }
}

fn generation_of(get: &GetResponse) -> Result<Option<(u64, i64)>> {
    get.kvs()
        .first()
        .map(|kv| Ok((decode_generation(kv.key(), kv.value())?, kv.mod_revision())))
        .transpose()
}

fn lease_of(get: &GetResponse) -> Result<Option<VolumeLease>> {
    get.kvs()
        .first()
        .map(|kv| {
            decode::<VolumeLease>(kv.key(), kv.value()).map(|mut l| {
                l.revision = kv.create_revision();
                l
            })
        })
        .transpose()
}
