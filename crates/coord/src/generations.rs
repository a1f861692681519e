//! Volume generations mirrored in etcd, `generations/<sd>/<img>/<vol>`: the arbiter of who may commit
//! a volume. A copy raises the generation (and so may mark the volume LEGAL) only in one transaction
//! that also proves it still holds the volume's lease (its fencing token, the lease key's create
//! revision) and that the generation is still the one it started from. The SPM fences a volume by
//! raising its generation past every outstanding attempt, so a stale worker that wakes up late fails
//! with a generation mismatch instead of overwriting a retried copy. The volume's metadata file
//! carries the same number for readers; a record missing from etcd means "never committed through
//! etcd" and the file's number stands.
use datapath_api::volume::{DiskKey, VolumeKey};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::{Coord, Result};

/// Why a commit or a fence did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The lease taken at the token is gone (expired or taken over): the caller was fenced.
    LeaseLost,
    /// The recorded generation is not the expected one.
    GenerationMoved {
        /// What etcd holds.
        found: u64,
    },
}

/// A generation record's number (decimal text); an unreadable one counts as 0, "never committed".
pub(crate) fn decode_generation(value: &[u8]) -> u64 {
    String::from_utf8_lossy(value).trim().parse().unwrap_or(0)
}

impl Coord {
    /// The generation etcd records for `volume`, with its mod revision; `None` if never recorded.
    pub async fn generation(&self, volume: &VolumeKey) -> Result<Option<(u64, i64)>> {
        let resp = self
            .client()
            .get(self.keys().generation(volume), None)
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (decode_generation(kv.value()), kv.mod_revision())))
    }

    /// Sets the generation of `volume` to `to`, if the lease taken at `token` still stands and the
    /// record is still what the caller read (`expected`, from [`Coord::generation`]; `None`: absent).
    async fn swap_generation(
        &self,
        volume: &VolumeKey,
        token: i64,
        expected: Option<(u64, i64)>,
        to: u64,
    ) -> Result<bool> {
        let key = self.keys().generation(volume);
        let lease_key = self.keys().volume_lease(volume);
        let record = match expected {
            Some((_, rev)) => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(lease_key, CompareOp::Equal, token),
                record,
            ])
            .and_then([TxnOp::put(key, to.to_string(), None)]);
        Ok(self.client().txn(txn).await?.succeeded())
    }

    /// Commits a copy into `volume`: its generation goes from `from` to `from + 1`, under the lease
    /// taken at `token`, in one transaction.
    pub async fn commit_generation(
        &self,
        volume: &VolumeKey,
        token: i64,
        from: u64,
    ) -> Result<std::result::Result<(), Refused>> {
        let current = self.generation(volume).await?;
        if current.is_some_and(|(g, _)| g != from) {
            // A lost lease is the first reason: a copy whose host was fenced reports FENCED, not the
            // generation the fencer raised.
            return self.refusal(volume, token).await.map(Err);
        }
        if self
            .swap_generation(volume, token, current, from + 1)
            .await?
        {
            return Ok(Ok(()));
        }
        self.refusal(volume, token).await.map(Err)
    }

    /// Fences `volume`: records generation `to` (above every outstanding attempt) under the lease
    /// taken at `token` by the fencer, if the record is still `seen`.
    pub async fn fence_generation(
        &self,
        volume: &VolumeKey,
        token: i64,
        seen: Option<(u64, i64)>,
        to: u64,
    ) -> Result<std::result::Result<(), Refused>> {
        if self.swap_generation(volume, token, seen, to).await? {
            return Ok(Ok(()));
        }
        self.refusal(volume, token).await.map(Err)
    }

    async fn refusal(&self, volume: &VolumeKey, token: i64) -> Result<Refused> {
        if !self.holds_volume_lease(volume, token).await? {
            return Ok(Refused::LeaseLost);
        }
        let found = self.generation(volume).await?.map(|(g, _)| g).unwrap_or(0);
        Ok(Refused::GenerationMoved { found })
    }

    /// Forgets the generations of every volume of an image (the image is being deleted).
    pub async fn delete_image_generations(&self, disk: &DiskKey) -> Result<()> {
        self.client()
            .delete(
                self.keys().image_generations(disk),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await?;
        Ok(())
    }

    /// Every recorded generation of an image, for operators and tests.
    pub async fn image_generations(&self, disk: &DiskKey) -> Result<Vec<(String, u64)>> {
        let resp = self
            .client()
            .get(
                self.keys().image_generations(disk),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    decode_generation(kv.value()),
                )
            })
            .collect())
    }
}
