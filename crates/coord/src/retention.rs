//! Retention leases: an ended record (a flow, a job) is bound to a lease that is never renewed, so
//! etcd itself deletes it when its retention has passed, even while no service runs. One lease per
//! record would cost a lease grant (a raft write and a round trip) at every end; instead the ends
//! of one reuse window share a lease granted for `retention + window`, so a record lives between
//! `retention` and `retention + window` after its end. The Kubernetes API server binds events to
//! shared leases the same way (`--lease-reuse-duration-seconds`).
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::{Coord, Result};

/// The longest a lease is shared; a tenth of the retention when that is shorter.
pub const MAX_REUSE: Duration = Duration::from_secs(60);

/// The lease ended records are bound to now, granted again once its reuse window has passed.
pub struct RetentionLeases {
    coord: Coord,
    retention: Duration,
    reuse: Duration,
    /// The shared lease and when it was granted; the lock makes the ends of one instant share one
    /// grant instead of racing to make several.
    current: Mutex<Option<(i64, Instant)>>,
}

impl RetentionLeases {
    /// Leases for records kept `retention` (at least a second) after their end.
    pub fn new(coord: Coord, retention: Duration) -> Self {
        let retention = retention.max(Duration::from_secs(1));
        Self {
            coord,
            retention,
            reuse: (retention / 10).min(MAX_REUSE),
            current: Mutex::new(None),
        }
    }

    /// The lease to bind a record ending now to.
    pub async fn lease(&self) -> Result<i64> {
        let mut current = self.current.lock().await;
        if let Some((lease, granted)) = *current {
            if granted.elapsed() < self.reuse {
                return Ok(lease);
            }
        }
        let ttl = (self.retention + self.reuse).as_secs_f64().ceil() as i64;
        let granted = Instant::now();
        let lease = self.coord.client().lease_grant(ttl, None).await?.id();
        *current = Some((lease, granted));
        Ok(lease)
    }

    /// A write bound to `lease` failed: it is not used again (it may have been revoked by hand),
    /// and the next end is granted a fresh one.
    pub async fn forget(&self, lease: i64) {
        let mut current = self.current.lock().await;
        if current.is_some_and(|(l, _)| l == lease) {
            *current = None;
        }
    }
}
