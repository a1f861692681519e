//! The session lease: one etcd lease per process that binds its liveness records (its `hosts/` key,
//! its volume leases). Renewed every TTL/3; when no renewal has succeeded for TTL − margin the session
//! is declared **lost** before etcd can expire it, so a host-worker can kill its copies (self-fencing,
//! as sanlock's watchdog does) before anyone else can take their volume leases. A lost session is
//! replaced by a new lease as soon as etcd answers again; the old one is revoked.
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{sleep, sleep_until, timeout, timeout_at, Instant},
};
use tracing::{debug, info, warn};

use crate::Coord;

/// The state of a session, as its holder must act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Not yet granted, or lost and not yet replaced: hold nothing, write nothing.
    Lost,
    /// A lease that was renewed in time.
    Valid {
        /// The etcd lease id.
        lease_id: i64,
    },
}

/// The intervals derived from one TTL, so they cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTiming {
    /// The lease's TTL in etcd.
    pub ttl: Duration,
    /// How often a renewal is sent.
    pub renew_every: Duration,
    /// How long after the last successful renewal the session counts as lost: TTL minus a margin
    /// that leaves time to fence before etcd expires the lease.
    pub fence_after: Duration,
}

impl SessionTiming {
    /// Timing for a TTL (at least one second; etcd counts whole seconds).
    pub fn new(ttl: Duration) -> Self {
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let margin = (ttl / 4).max(Duration::from_millis(500)).min(ttl / 2);
        Self {
            ttl,
            renew_every: ttl / 3,
            fence_after: ttl - margin,
        }
    }
}

/// A session lease kept alive by a background task.
pub struct Session {
    state: watch::Receiver<SessionState>,
    coord: Coord,
    task: JoinHandle<()>,
}

impl Session {
    /// Starts keeping a session for `ttl`; the state starts `Lost` until the first grant.
    pub fn start(coord: &Coord, ttl: Duration) -> Self {
        let (tx, state) = watch::channel(SessionState::Lost);
        let task = tokio::spawn(keep(coord.clone(), SessionTiming::new(ttl), tx));
        Self {
            state,
            coord: coord.clone(),
            task,
        }
    }

    /// Follows the state.
    pub fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// The current lease, if valid.
    pub fn lease_id(&self) -> Option<i64> {
        match *self.state.borrow() {
            SessionState::Valid { lease_id } => Some(lease_id),
            SessionState::Lost => None,
        }
    }

    /// Stops renewing and revokes the lease, so every key bound to it disappears now.
    pub async fn close(self) {
        self.task.abort();
        if let SessionState::Valid { lease_id } = *self.state.borrow() {
            let mut client = self.coord.client();
            match timeout(Duration::from_secs(2), client.lease_revoke(lease_id)).await {
                Ok(Ok(_)) => info!(lease_id, "session lease revoked"),
                other => warn!(lease_id, ?other, "could not revoke session lease"),
            }
        }
    }
}

/// Keeps the session. Every grant and every new keep-alive stream asks `coord` for its client anew, so
/// they follow it to another etcd member when the one in use dies.
async fn keep(coord: Coord, timing: SessionTiming, tx: watch::Sender<SessionState>) {
    let mut stale: Option<i64> = None;
    loop {
        let sent = Instant::now();
        let mut client = coord.client();
        let grant = timeout(
            timing.renew_every,
            client.lease_grant(timing.ttl.as_secs() as i64, None),
        );
        let lease_id = match grant.await {
            Ok(Ok(resp)) => resp.id(),
            other => {
                debug!(?other, "session lease grant failed; retrying");
                sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        if let Some(old) = stale.take() {
            let mut c = client.clone();
            tokio::spawn(async move { c.lease_revoke(old).await });
        }
        info!(lease_id, ttl = ?timing.ttl, "session lease granted");
        tx.send_replace(SessionState::Valid { lease_id });
        hold(&coord, lease_id, timing, sent).await;
        tx.send_replace(SessionState::Lost);
        crate::metrics::metrics().session_lost.inc();
        warn!(
            lease_id,
            "session lease not renewed within {:?}: session lost, fencing", timing.fence_after
        );
        stale = Some(lease_id);
    }
}

/// Renews `lease_id` until a renewal fails to land before the fencing deadline.
async fn hold(coord: &Coord, lease_id: i64, timing: SessionTiming, granted_at: Instant) {
    let mut last_ok = granted_at;
    let mut keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        sleep_until(last_ok + timing.renew_every).await;
        let deadline = last_ok + timing.fence_after;
        let sent = Instant::now();
        let renewed = timeout_at(deadline, renew(coord, lease_id, &mut keeper)).await;
        let m = crate::metrics::metrics();
        match &renewed {
            Ok(Ok(ttl)) if *ttl > 0 => m.lease_renewals.inc(),
            _ => m.lease_renewal_failures.inc(),
        };
        match renewed {
            Err(_) => return,
            Ok(Ok(ttl)) if ttl > 0 => last_ok = sent,
            Ok(Ok(_)) => {
                warn!(lease_id, "etcd says the session lease has expired");
                return;
            }
            Ok(Err(e)) => {
                debug!(lease_id, error = %e, "session lease renewal failed; retrying");
                keeper = None;
                if timeout_at(deadline, sleep(Duration::from_millis(200)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

async fn renew(
    coord: &Coord,
    lease_id: i64,
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<i64, etcd_client::Error> {
    if keeper.is_none() {
        *keeper = Some(coord.client().lease_keep_alive(lease_id).await?);
    }
    let Some((k, stream)) = keeper.as_mut() else {
        unreachable!("keeper set above")
    };
    k.keep_alive().await?;
    match stream.message().await? {
        Some(resp) => Ok(resp.ttl()),
        None => Err(etcd_client::Error::WatchError(
            "keep-alive stream closed".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_comes_before_expiry() {
        for secs in [1, 2, 3, 5, 10, 30] {
            let t = SessionTiming::new(Duration::from_secs(secs));
            assert!(t.renew_every < t.fence_after, "{t:?}");
            assert!(t.fence_after < t.ttl, "{t:?}");
            assert!(t.ttl - t.fence_after >= Duration::from_millis(500), "{t:?}");
        }
    }
}
