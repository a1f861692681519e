//! Volume generations mirrored in etcd, `generations/<sd>/<img>/<vol>`: the arbiter of who may commit
//! a volume. A copy raises the generation (and so may mark the volume LEGAL) only in one transaction
//! that also proves it still holds the volume's lease (its fencing token, the lease key's create
//! revision) and that the generation is still the one it started from. The SPM fences a volume by
//! raising its generation past every outstanding attempt, so a stale worker that wakes up late fails
//! with a generation mismatch instead of overwriting a retried copy. The volume's metadata file
//! carries the same number for readers; a record missing from etcd means "never committed through
//! etcd" and the file's number stands.
//!
//! Generation arithmetic is checked (this module denies `clippy::arithmetic_side_effects`): at
//! `u64::MAX` a commit or fence is refused as [`Refused::Exhausted`], never wrapped to 0, and a
//! record that is not a decimal number is an error ([`CoordError::BadRecord`]), never read as 0.
#![deny(clippy::arithmetic_side_effects)]
use datapath_api::volume::{DiskKey, VolumeKey};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::{Coord, CoordError, Result};

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
    /// The generation is at `u64::MAX`: it cannot be raised again.
    Exhausted,
}

/// A generation record's number (decimal text, as etcdctl shows it).
pub fn decode_generation(key: &[u8], value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CoordError::BadRecord {
            key: String::from_utf8_lossy(key).into_owned(),
            why: "a generation is a decimal number".into(),
        })
}

impl Coord {
    /// The generation etcd records for `volume`, with its mod revision; `None` if never recorded.
    pub async fn generation(&self, volume: &VolumeKey) -> Result<Option<(u64, i64)>> {
        let resp = self
            .client()
            .get(self.keys().generation(volume), None)
            .await?;
        resp.kvs()
            .first()
            .map(|kv| Ok((decode_generation(kv.key(), kv.value())?, kv.mod_revision())))
            .transpose()
    }

    /// Sets the generation of `volume` to `to`, if the lease taken at `token` still stands and the
    /// record is still what the caller read (`expected`, from [`Coord::generation`]; `None`: absent).
    /// `to` must be above the expected number: the transaction pins the record by its mod revision,
    /// so the number it replaces is exactly the one checked here (etcd 3.4 compares values only as
    /// bytes, which would not order decimal numbers).
    async fn swap_generation(
        &self,
        volume: &VolumeKey,
        token: i64,
        expected: Option<(u64, i64)>,
        to: u64,
    ) -> Result<bool> {
        let below = expected.map_or(0, |(g, _)| g);
        if to <= below {
            return Err(CoordError::GenerationNotRaised { from: below, to });
        }
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
        let Some(to) = from.checked_add(1) else {
            return Ok(Err(Refused::Exhausted));
        };
        let current = self.generation(volume).await?;
        if current.is_some_and(|(g, _)| g != from) {
            // A lost lease is the first reason: a copy whose host was fenced reports FENCED, not the
            // generation the fencer raised.
            return self.refusal(volume, token).await.map(Err);
        }
        if self.swap_generation(volume, token, current, to).await? {
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
        let found = self.generation(volume).await?.map_or(0, |(g, _)| g);
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

    /// Every recorded generation of an image, for operators and tests; a record that does not
    /// decode fails the call.
    pub async fn image_generations(&self, disk: &DiskKey) -> Result<Vec<(String, u64)>> {
        let resp = self
            .client()
            .get(
                self.keys().image_generations(disk),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                Ok((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    decode_generation(kv.key(), kv.value())?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::decode_generation;

    #[test]
    fn a_generation_record_is_a_decimal_number_or_an_error() {
        assert_eq!(decode_generation(b"k", b"7").unwrap(), 7);
        assert_eq!(
            decode_generation(b"k", u64::MAX.to_string().as_bytes()).unwrap(),
            u64::MAX
        );
        for bad in [
            &b""[..],
            b"x",
            b"-1",
            b" 3",
            b"18446744073709551616",
            b"\xff",
        ] {
            let e = decode_generation(b"gen/key", bad).unwrap_err().to_string();
            assert!(e.contains("gen/key"), "{e}");
        }
    }
}
