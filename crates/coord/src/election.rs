//! Elections with etcd's election API: the SPM among host-workers, the acting scheduler among
//! scheduler replicas. A candidate campaigns on its session lease, so a leader that dies or is cut off
//! loses the role when its lease expires (and steps down earlier, when its session is declared lost).
//! A leader's writes that must not come from a deposed leader compare its leader key in the same
//! transaction ([`Leadership::guard`]).
//!
//! The election loop (`candidacy.rs`) and the SPM's checks ask for no more than [`Elections`], so the
//! loop's step-down rules are unit-tested on an in-memory election; [`Coord`] is the etcd one.
use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, LeaderKey, ResignOptions};

use crate::{Coord, Result};

/// A role decided by election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Storage Pool Manager: the one host that makes structural changes.
    Spm,
    /// The scheduler replica that runs flows.
    Scheduler,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Spm => "spm",
            Self::Scheduler => "scheduler",
        }
    }
}

/// Proof of leadership: the candidate's key, created at `revision` under `lease`.
#[derive(Debug, Clone)]
pub struct Leadership {
    key: LeaderKey,
}

impl Leadership {
    /// The etcd lease the leadership is bound to.
    pub fn lease(&self) -> i64 {
        self.key.lease()
    }

    /// The leader key's create revision: what identifies this leadership.
    pub fn revision(&self) -> i64 {
        self.key.rev()
    }

    /// The leader key.
    pub(crate) fn key_name(&self) -> String {
        String::from_utf8_lossy(self.key.key()).into_owned()
    }

    /// A leadership not won in etcd: for in-memory stores in unit tests, whose compares it names.
    #[doc(hidden)]
    pub fn detached(name: &str, revision: i64) -> Self {
        Self::detached_on(name, revision, 0)
    }

    /// [`Leadership::detached`] on `lease`: for in-memory elections.
    #[doc(hidden)]
    pub fn detached_on(name: &str, revision: i64, lease: i64) -> Self {
        Self {
            key: LeaderKey::new()
                .with_key(name)
                .with_rev(revision)
                .with_lease(lease),
        }
    }

    /// A transaction condition that holds only while this leadership stands.
    pub fn guard(&self) -> Compare {
        Compare::create_revision(self.key.key().to_vec(), CompareOp::Equal, self.key.rev())
    }
}

/// The current holder of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// What the leader campaigned with (a host id, an address).
    pub value: String,
    /// The leader's lease.
    pub lease: i64,
}

/// What an election asks of the store: campaign, resign, who leads, and whether (and since when) a
/// leadership still stands.
#[async_trait]
pub trait Elections: Send + Sync {
    /// Campaigns for `role` with `value` on `lease`; returns once this candidate leads. Blocks while
    /// another leads: run it in its own task and drop it to withdraw.
    async fn campaign(&self, role: Role, value: &str, lease: i64) -> Result<Leadership>;

    /// Gives the role up at once (instead of when the lease expires).
    async fn resign(&self, leadership: &Leadership) -> Result<()>;

    /// Who holds `role` now, if anyone.
    async fn leader(&self, role: Role) -> Result<Option<Leader>>;

    /// Whether `leadership` still stands, and the revision the answer was read at.
    async fn leadership_at(&self, leadership: &Leadership) -> Result<(bool, i64)>;

    /// Returns at the first change (rewrite or deletion) of `leadership`'s key after `revision`, or at
    /// once if it changed since; an error when the watch ends (the caller reads the key again).
    async fn leader_key_changed(&self, leadership: &Leadership, revision: i64) -> Result<()>;

    /// Whether `leadership` still stands.
    async fn still_leads(&self, leadership: &Leadership) -> Result<bool> {
        Ok(self.leadership_at(leadership).await?.0)
    }
}

#[async_trait]
impl Elections for Coord {
    async fn campaign(&self, role: Role, value: &str, lease: i64) -> Result<Leadership> {
        let name = self.keys().election(role.name());
        let mut resp = self
            .blocking()
            .campaign(name, value.as_bytes(), lease)
            .await?;
        let key = resp.take_leader().ok_or_else(|| {
            etcd_client::Error::ElectError("campaign answered without a leader key".into())
        })?;
        Ok(Leadership { key })
    }

    async fn resign(&self, leadership: &Leadership) -> Result<()> {
        self.client()
            .resign(Some(
                ResignOptions::new().with_leader(leadership.key.clone()),
            ))
            .await?;
        Ok(())
    }

    async fn leader(&self, role: Role) -> Result<Option<Leader>> {
        match self
            .client()
            .leader(self.keys().election(role.name()))
            .await
        {
            Ok(resp) => Ok(resp.kv().map(|kv| Leader {
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                lease: kv.lease(),
            })),
            // etcd 3.4 answers "election: no leader" as Unknown rather than NotFound.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn leadership_at(&self, leadership: &Leadership) -> Result<(bool, i64)> {
        let resp = self.client().get(leadership.key.key(), None).await?;
        let stands = resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == leadership.key.rev());
        Ok((
            stands,
            resp.header().map(|h| h.revision()).unwrap_or_default(),
        ))
    }

    async fn leader_key_changed(&self, leadership: &Leadership, revision: i64) -> Result<()> {
        self.key_changed_after(leadership.key_name(), revision)
            .await
    }
}
