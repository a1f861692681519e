//! One election loop for every role ([`Role::Spm`] among host-workers, [`Role::Scheduler`] among
//! scheduler replicas): campaign on each valid session lease, act while leading, step down the
//! moment the session's lease is lost or replaced, the leader key goes from etcd (deleted by hand,
//! say: seen on a watch of the key, not a poll), or the work ends; then resign and campaign again
//! on the next valid lease. What leading means is the [`Candidate`]'s.
use std::{future::Future, time::Duration};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    election::{Elections, Leadership, Role},
    session::SessionState,
};

/// Pause before campaigning again after a failed campaign call.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Pause before watching the leader key again after its watch failed.
const REWATCH_AFTER: Duration = Duration::from_secs(1);
/// How long a resignation may take; the lease's end resigns anyway.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a leadership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDown {
    /// The session's lease was lost or replaced.
    SessionEnded,
    /// The leader key is gone from etcd.
    KeyGone,
    /// The candidate's work returned.
    WorkEnded,
}

impl StepDown {
    /// Words for a log line.
    pub fn reason(self) -> &'static str {
        match self {
            Self::SessionEnded => "the session lease was lost or replaced",
            Self::KeyGone => "its leader key is gone from etcd",
            Self::WorkEnded => "its work ended",
        }
    }
}

/// A role's holder-to-be: what it campaigns with and what it does while it leads.
pub trait Candidate: Send + Sync {
    /// The role campaigned for.
    fn role(&self) -> Role;
    /// The value the leader key carries (a host id, an address).
    fn value(&self) -> String;
    /// Acts while leading; dropped at the step-down. Returning steps down.
    fn lead(&self, leadership: Leadership) -> impl Future<Output = ()> + Send;
    /// Called once a leadership ended, before the resignation.
    fn stepped_down(&self, leadership: &Leadership, why: StepDown);
}

/// Campaigns for `candidate`'s role on every valid lease of `session`, for as long as `session`'s
/// sender lives. Run it in a task of its own; dropping it withdraws (the lease's end resigns).
pub async fn campaign_forever(
    coord: impl Elections,
    candidate: impl Candidate,
    mut session: watch::Receiver<SessionState>,
) {
    loop {
        let SessionState::Valid { lease_id } = *session.borrow_and_update() else {
            if session.changed().await.is_err() {
                return;
            }
            continue;
        };
        let won = tokio::select! {
            won = win(&coord, &candidate, lease_id) => won,
            changed = session.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        info!(role = ?candidate.role(), lease_id, "leading");
        let why = tokio::select! {
            () = candidate.lead(won.clone()) => StepDown::WorkEnded,
            () = key_gone(&coord, &won) => StepDown::KeyGone,
            () = session_ended(&mut session, lease_id) => StepDown::SessionEnded,
        };
        warn!(role = ?candidate.role(), lease_id, "stepping down: {}", why.reason());
        candidate.stepped_down(&won, why);
        match tokio::time::timeout(RESIGN_TIMEOUT, coord.resign(&won)).await {
            Ok(Ok(())) => debug!(role = ?candidate.role(), "resigned"),
            other => debug!(?other, "could not resign; the role ends with the lease"),
        }
        if why == StepDown::WorkEnded {
            // Work that ends at once (a failing start) must not spin campaign and resignation.
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}

/// Campaigns until the candidate leads on `lease_id` (blocking while another leads).
async fn win(coord: &impl Elections, candidate: &impl Candidate, lease_id: i64) -> Leadership {
    let value = candidate.value();
    loop {
        debug!(role = ?candidate.role(), lease_id, "campaigning");
        match coord.campaign(candidate.role(), &value, lease_id).await {
            Ok(leadership) => return leadership,
            Err(e) => {
                warn!(role = ?candidate.role(), lease_id, error = %e, "campaign failed; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Returns once `leadership`'s key no longer stands in etcd, on a watch of the key. An unreachable
/// etcd is no loss — the session decides that — so a failed watch or read is only tried again.
async fn key_gone(coord: &impl Elections, leadership: &Leadership) {
    let mut after = leadership.revision();
    loop {
        if let Err(e) = coord.leader_key_changed(leadership, after).await {
            debug!(error = %e, "the watch of the leader key failed");
            tokio::time::sleep(REWATCH_AFTER).await;
        }
        match coord.leadership_at(leadership).await {
            // Still ours (the watch broke, or the key was rewritten): watch on from this read.
            Ok((true, read_at)) => after = read_at,
            Ok((false, _)) => return,
            Err(e) => {
                debug!(error = %e, "could not read the leader key");
                tokio::time::sleep(REWATCH_AFTER).await;
            }
        }
    }
}

/// Returns once the session is no longer valid on `lease_id`.
async fn session_ended(session: &mut watch::Receiver<SessionState>, lease_id: i64) {
    loop {
        if *session.borrow_and_update() != (SessionState::Valid { lease_id }) {
            return;
        }
        if session.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    };

    use async_trait::async_trait;
    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::{election::Leader, Result};

    /// The leader key as it stands: who, on which lease, created at which revision.
    #[derive(Clone, Copy)]
    struct Key {
        value: u32,
        lease: i64,
        created: i64,
    }

    /// One role's election in memory, with etcd's rules: a campaign waits while a key stands; a
    /// resignation deletes only the resigner's own key; every change raises the revision.
    #[derive(Default)]
    struct Mem {
        state: Mutex<(i64, Option<Key>, i64)>,
        changed: watch::Sender<()>,
        failing_campaigns: AtomicUsize,
        campaigns: AtomicUsize,
        resigned: Mutex<Vec<i64>>,
    }

    impl Mem {
        /// Sets (or, with `None`, deletes) the key as someone else would; the new revision.
        fn set(&self, value: Option<(u32, i64)>) -> i64 {
            let mut s = self.state.lock().unwrap();
            s.0 += 1;
            s.1 = value.map(|(value, lease)| Key {
                value,
                lease,
                created: s.0,
            });
            s.2 = s.0;
            drop(s);
            self.changed.send_replace(());
            self.state.lock().unwrap().0
        }

        fn key(&self) -> Option<Key> {
            self.state.lock().unwrap().1
        }
    }

    #[async_trait]
    impl Elections for Arc<Mem> {
        async fn campaign(&self, _: Role, value: &str, lease: i64) -> Result<Leadership> {
            self.campaigns.fetch_add(1, Ordering::SeqCst);
            let failing =
                self.failing_campaigns
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return Err(crate::CoordError::WatchCanceled("etcd away".into()));
            }
            let mut changes = self.changed.subscribe();
            loop {
                if self.key().is_none() {
                    let rev = self.set(Some((value.parse().unwrap(), lease)));
                    return Ok(Leadership::detached_on("leader", rev, lease));
                }
                changes.changed().await.unwrap();
            }
        }

        async fn resign(&self, leadership: &Leadership) -> Result<()> {
            self.resigned.lock().unwrap().push(leadership.revision());
            if self
                .key()
                .is_some_and(|k| k.created == leadership.revision())
            {
                self.set(None);
            }
            Ok(())
        }

        async fn leader(&self, _: Role) -> Result<Option<Leader>> {
            Ok(self.key().map(|k| Leader {
                value: k.value.to_string(),
                lease: k.lease,
            }))
        }

        async fn leadership_at(&self, leadership: &Leadership) -> Result<(bool, i64)> {
            let s = self.state.lock().unwrap();
            let stands = s.1.is_some_and(|k| k.created == leadership.revision());
            Ok((stands, s.0))
        }

        async fn leader_key_changed(&self, _: &Leadership, revision: i64) -> Result<()> {
            let mut changes = self.changed.subscribe();
            while self.state.lock().unwrap().2 <= revision {
                changes.changed().await.unwrap();
            }
            Ok(())
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Led { lease: i64, revision: i64 },
        SteppedDown(StepDown),
    }

    /// Reports what happens to it; its work ends when `work_ends` is set.
    struct Probe {
        seen: mpsc::UnboundedSender<Seen>,
        work_ends: watch::Receiver<bool>,
    }

    impl Candidate for Probe {
        fn role(&self) -> Role {
            Role::Scheduler
        }
        fn value(&self) -> String {
            "1".into()
        }
        async fn lead(&self, leadership: Leadership) {
            let _ = self.seen.send(Seen::Led {
                lease: leadership.lease(),
                revision: leadership.revision(),
            });
            let mut ends = self.work_ends.clone();
            let _ = ends.wait_for(|end| *end).await;
        }
        fn stepped_down(&self, _: &Leadership, why: StepDown) {
            let _ = self.seen.send(Seen::SteppedDown(why));
        }
    }

    struct Run {
        mem: Arc<Mem>,
        session: watch::Sender<SessionState>,
        seen: mpsc::UnboundedReceiver<Seen>,
        work_ends: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn run(mem: Arc<Mem>, session: SessionState) -> Run {
        let (session, rx) = watch::channel(session);
        let (tx, seen) = mpsc::unbounded_channel();
        let (work_ends, ends) = watch::channel(false);
        let probe = Probe {
            seen: tx,
            work_ends: ends,
        };
        let task = tokio::spawn(campaign_forever(mem.clone(), probe, rx));
        Run {
            mem,
            session,
            seen,
            work_ends,
            task,
        }
    }

    impl Run {
        /// The next thing the candidate saw, within a (paused-clock) minute.
        async fn next(&mut self) -> Seen {
            tokio::time::timeout(Duration::from_secs(60), self.seen.recv())
                .await
                .expect("nothing happened within a minute")
                .expect("the loop ended")
        }

        /// Nothing happens for a (paused-clock) minute while everything else is idle.
        async fn quiet(&mut self) {
            let next = tokio::time::timeout(Duration::from_secs(60), self.seen.recv()).await;
            assert!(next.is_err(), "{next:?}");
        }
    }

    const VALID: SessionState = SessionState::Valid { lease_id: 7 };

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_key_is_deleted_steps_down_resigns_and_leads_again() {
        let mut r = run(Arc::default(), VALID);
        let Seen::Led { lease: 7, revision } = r.next().await else {
            panic!("did not lead on lease 7")
        };
        r.mem.set(None);
        assert_eq!(r.next().await, Seen::SteppedDown(StepDown::KeyGone));
        let Seen::Led {
            lease: 7,
            revision: again,
        } = r.next().await
        else {
            panic!("did not lead again")
        };
        assert!(again > revision);
        assert_eq!(r.mem.resigned.lock().unwrap().as_slice(), &[revision]);
        r.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_lease_ends_the_leadership_and_the_next_campaign_uses_the_new_one() {
        let mut r = run(Arc::default(), VALID);
        let Seen::Led { lease: 7, revision } = r.next().await else {
            panic!("did not lead on lease 7")
        };
        r.session.send_replace(SessionState::Valid { lease_id: 8 });
        assert_eq!(r.next().await, Seen::SteppedDown(StepDown::SessionEnded));
        assert!(matches!(r.next().await, Seen::Led { lease: 8, .. }));
        assert_eq!(r.mem.resigned.lock().unwrap().as_slice(), &[revision]);
        assert_eq!(r.mem.key().map(|k| k.lease), Some(8));
        r.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_session_steps_down_and_campaigns_only_on_a_valid_lease() {
        let mut r = run(Arc::default(), VALID);
        assert!(matches!(r.next().await, Seen::Led { lease: 7, .. }));
        r.session.send_replace(SessionState::Lost);
        assert_eq!(r.next().await, Seen::SteppedDown(StepDown::SessionEnded));
        r.quiet().await;
        assert!(r.mem.key().is_none(), "resigned");
        assert_eq!(r.mem.campaigns.load(Ordering::SeqCst), 1);
        r.session.send_replace(SessionState::Valid { lease_id: 9 });
        assert!(matches!(r.next().await, Seen::Led { lease: 9, .. }));
        r.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_waits_while_another_leads_and_wins_when_it_goes() {
        let mem = Arc::new(Mem::default());
        mem.set(Some((2, 5)));
        let mut r = run(mem, VALID);
        r.quiet().await;
        assert_eq!(
            r.mem.key().map(|k| k.value),
            Some(2),
            "the other still leads"
        );
        r.mem.set(None);
        assert!(matches!(r.next().await, Seen::Led { lease: 7, .. }));
        assert_eq!(r.mem.key().map(|k| k.value), Some(1));
        r.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_campaign_is_tried_again() {
        let mem = Arc::new(Mem::default());
        mem.failing_campaigns.store(2, Ordering::SeqCst);
        let mut r = run(mem, VALID);
        assert!(matches!(r.next().await, Seen::Led { lease: 7, .. }));
        assert_eq!(r.mem.campaigns.load(Ordering::SeqCst), 3);
        r.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_resigns_and_campaigns_again() {
        let mut r = run(Arc::default(), VALID);
        let Seen::Led { revision, .. } = r.next().await else {
            panic!("did not lead")
        };
        r.work_ends.send_replace(true);
        assert_eq!(r.next().await, Seen::SteppedDown(StepDown::WorkEnded));
        let ended = tokio::time::Instant::now();
        r.work_ends.send_replace(false);
        let Seen::Led {
            revision: again, ..
        } = r.next().await
        else {
            panic!("did not lead again")
        };
        assert!(again > revision);
        assert!(ended.elapsed() >= RETRY_AFTER, "campaigned again at once");
        assert_eq!(r.mem.resigned.lock().unwrap().as_slice(), &[revision]);
        r.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_ends_with_its_session() {
        let mut r = run(Arc::default(), VALID);
        assert!(matches!(r.next().await, Seen::Led { .. }));
        let (alive, _) = watch::channel(SessionState::Lost);
        drop(std::mem::replace(&mut r.session, alive));
        assert_eq!(r.next().await, Seen::SteppedDown(StepDown::SessionEnded));
        tokio::time::timeout(Duration::from_secs(60), r.task)
            .await
            .expect("the loop ended")
            .unwrap();
    }
}
