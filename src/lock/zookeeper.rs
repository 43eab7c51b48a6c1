//! The ZooKeeper lock: ephemeral-sequential contender nodes under `/<namespace>/<lock-id>`;
//! the lowest holds, each waiter watches only its predecessor (no herd).
//!
//! One task per lock owns the ZooKeeper session and talks to the coordinator through a watch
//! of what it wants (`Desired`) and a channel of what happened (`ZkEvent`), so start-up and
//! shutdown never block on ZooKeeper.
//!
//! Fencing comes before anyone else can hold the lock. The rule:
//! - a renewal counts only if it went through the **quorum**: every F/4 the holder rewrites its
//!   own node with the expected version (`set_data`), which the leader commits only with a
//!   majority and only while our session is alive there. A read (`check_stat`, even after a
//!   `sync`) does not count: a follower cut from the leader, or a leader cut from its
//!   followers, answers reads from a stale state for up to syncLimit × tickTime after the
//!   majority expired our session and gave the lock away;
//! - the [`Lease`] runs F from the moment the confirming write was **sent** (the server's
//!   session clock was reset no earlier than that), and `Disconnected` caps it at F from then;
//! - F ≤ S − C − margin (`ZkConfig::fencing`), so the holder stops forwarding before the
//!   server can expire its session.
//!
//! `Expired` arrives after the server already gave the lock away, so it is never waited for.
//! [`CONFIRM`] names the renewal this module uses; `tests/model.rs` checks the rule with it.

mod fencing;
mod session;

pub use fencing::{Fencing, ZK_SCHEDULING_SLACK};

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, info_span, warn};
use zookeeper_client as zk;

use super::{LockError, Observed, OwnerRecord, unix_ms_now};
use crate::config::ZkConfig;
use crate::gate::Closed;
use crate::lease::Lease;
use session::Session;

/// Prefix of contender node names: `lock-<session id>-`, then the server's sequence number.
/// The session id in the name lets a contender recognise its own orphans: a create whose
/// answer was lost with the connection may still have made a node, which it would otherwise
/// queue behind forever (as Curator's "protected" mode does with a GUID).
const NODE_PREFIX: &str = "lock-";

/// How a holder proves, each renewal, that it still holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Confirm {
    /// A read of our node, answered by whichever server we are connected to.
    Read,
    /// `sync` then a read: answered through the leader, which may itself be cut off.
    SyncRead,
    /// A versioned write of our node: committed only by a quorum.
    VersionedWrite,
}

/// The renewal this backend uses (see the module doc for why).
pub const CONFIRM: Confirm = Confirm::VersionedWrite;

/// The shortest renewal period, whatever F is (F/4 of a tiny F would spin).
const MIN_CONFIRM_EVERY: Duration = Duration::from_millis(10);

/// What the coordinator wants. `generation` grows each time it starts contending anew, so a
/// late report about an earlier contention is recognised and ignored.
#[derive(Debug, Clone, Default)]
struct Desired {
    want: bool,
    generation: u64,
    node_id: String,
    last_term: u64,
}

#[derive(Debug)]
enum ZkEvent {
    Acquired { generation: u64, term: u64 },
    Failed { generation: u64, error: LockError },
    Lost { generation: u64, error: LockError },
}

/// The coordinator's handle on the session task.
pub struct ZkLock {
    path: String,
    desired: watch::Sender<Desired>,
    events: mpsc::UnboundedReceiver<ZkEvent>,
    /// The last generation whose node the task has deleted (or never created).
    deleted: watch::Receiver<u64>,
    lease: Lease,
    /// The generation we hold the lock in.
    held: Option<u64>,
    release_wait: Duration,
    task: JoinHandle<()>,
}

impl Drop for ZkLock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock_path(cfg: &ZkConfig, lock_id: &str) -> String {
    format!("/{}/{}", cfg.namespace, lock_id)
}

impl ZkLock {
    pub fn new(cfg: &ZkConfig, name: &str, lock_id: &str, check_period: Duration) -> ZkLock {
        let path = lock_path(cfg, lock_id);
        let (desired, desired_rx) = watch::channel(Desired::default());
        let (events_tx, events) = mpsc::unbounded_channel();
        let (deleted_tx, deleted) = watch::channel(0);
        let lease = Lease::revoked();
        let session = Session {
            cfg: cfg.clone(),
            name: name.to_owned(),
            path: path.clone(),
            check_period,
            desired: desired_rx,
            events: events_tx,
            deleted: deleted_tx,
            lease: lease.clone(),
            failed: None,
        };
        // Its own task, so its own span: the same as its coordinator's.
        let task = tokio::spawn(session.run().instrument(info_span!("lock", lock = %name)));
        ZkLock {
            path,
            desired,
            events,
            deleted,
            lease,
            held: None,
            release_wait: cfg.connection.min(Duration::from_secs(2)),
            task,
        }
    }

    pub fn describe(&self) -> String {
        self.path.clone()
    }

    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    pub fn contend(&mut self, node_id: &str, last_term: u64) {
        if self.held.is_some() {
            return;
        }
        self.desired.send_if_modified(|d| {
            if d.want {
                return false;
            }
            *d = Desired {
                want: true,
                generation: d.generation + 1,
                node_id: node_id.to_owned(),
                last_term,
            };
            true
        });
    }

    pub async fn acquired(&mut self) -> Result<u64, LockError> {
        loop {
            let Some(event) = self.events.recv().await else {
                return std::future::pending().await;
            };
            let current = self.desired.borrow().generation;
            match event {
                ZkEvent::Acquired { generation, term } if generation == current => {
                    self.held = Some(generation);
                    self.desired.send_modify(|d| d.last_term = term);
                    return Ok(term);
                }
                ZkEvent::Failed { generation, error } if generation == current => {
                    return Err(error);
                }
                stale => debug!(event = ?stale, "ignoring a stale ZooKeeper lock event"),
            }
        }
    }

    /// Resolves when the held lock is lost: the lease ran out, the node went, the session
    /// ended.
    pub async fn lost(&mut self) -> LockError {
        loop {
            let remaining = self.lease.remaining().unwrap_or(Duration::MAX);
            if remaining.is_zero() {
                return LockError::LeaseExpired;
            }
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(ZkEvent::Lost { generation, error }) if Some(generation) == self.held => {
                        return error;
                    }
                    Some(stale) => debug!(
                        event = ?stale,
                        "ignoring a ZooKeeper lock event while holding"
                    ),
                    None => return std::future::pending().await,
                },
                _ = tokio::time::sleep(remaining) => {}
            }
        }
    }

    pub fn check(&self) -> Result<(), LockError> {
        if self.lease.is_valid() {
            Ok(())
        } else {
            Err(LockError::LeaseExpired)
        }
    }

    /// Stops contending. A held lock stays held (its node is deleted only by
    /// [`ZkLock::release`], which needs the gate closed).
    pub fn withdraw(&mut self) {
        if self.held.is_some() {
            debug!(path = %self.path, "withdraw while holding: the lock stays until released");
            return;
        }
        self.stop_wanting();
    }

    fn stop_wanting(&mut self) {
        self.desired
            .send_if_modified(|d| std::mem::replace(&mut d.want, false));
    }

    /// Fences the lease and deletes our node, waiting a bounded time for ZooKeeper to confirm
    /// (so a clean shutdown hands over at once; a dead ensemble does not block it). Only with
    /// the gate closed.
    pub async fn release(&mut self, _gate: &Closed) {
        self.lease.revoke();
        self.held = None;
        self.stop_wanting();
        self.settle().await;
    }

    /// Waits, bounded, until the session task has deleted the node of the current generation
    /// (or never made one).
    pub async fn settle(&mut self) {
        if self.desired.borrow().want {
            return;
        }
        let generation = self.desired.borrow().generation;
        let mut deleted = self.deleted.clone();
        let confirmed =
            tokio::time::timeout(self.release_wait, deleted.wait_for(|g| *g >= generation)).await;
        if !matches!(confirmed, Ok(Ok(_))) {
            warn!(
                path = %self.path,
                "ZooKeeper did not confirm the release in time; the session's end will free the \
                 lock"
            );
        }
    }
}

/// `lock-<session id>-`: the name prefix of this session's contender nodes.
fn session_tag(client: &zk::Client) -> String {
    format!("{NODE_PREFIX}{:x}-", client.session_id().0)
}

/// The sequence number at the end of a contender node's name.
fn parse_seq(name: &str) -> Option<i64> {
    name.strip_prefix(NODE_PREFIX)?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

/// For `lockgate status`: the holder (lowest node) and the standbys queued behind it.
pub async fn observe(
    cfg: &ZkConfig,
    lock_id: &str,
) -> Result<(Observed, Vec<OwnerRecord>), LockError> {
    let path = lock_path(cfg, lock_id);
    let connect = zk::Client::connector()
        .with_session_timeout(cfg.session)
        .with_connection_timeout(cfg.connection)
        .with_fail_eagerly()
        .connect(&cfg.connect_string);
    let client =
        match tokio::time::timeout(cfg.connection.max(Duration::from_secs(2)), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(LockError::Unreachable(e.to_string())),
            Err(_) => return Err(LockError::Unreachable("timed out".to_owned())),
        };
    let children = match client.list_children(&path).await {
        Ok(c) => c,
        Err(zk::Error::NoNode) => return Ok((Observed::Absent, Vec::new())),
        Err(e) => return Err(LockError::ZooKeeper(e.to_string())),
    };
    let mut seqs: Vec<(i64, String)> = children
        .into_iter()
        .filter_map(|c| Some((parse_seq(&c)?, c)))
        .collect();
    seqs.sort();
    let mut records = Vec::new();
    for (_, name) in &seqs {
        if let Ok((data, _)) = client.get_data(&format!("{path}/{name}")).await
            && let Some(r) = OwnerRecord::from_text(&String::from_utf8_lossy(&data))
        {
            records.push(r);
        }
    }
    if seqs.is_empty() {
        return Ok((Observed::Free(None), Vec::new()));
    }
    let mut rest = records.into_iter();
    let holder = rest
        .next()
        .filter(|r| r.term > 0 && r.acquired_at_unix_ms <= unix_ms_now());
    Ok((Observed::Held(holder), rest.collect()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sequence_numbers_parse_with_and_without_a_session_tag() {
        assert_eq!(super::parse_seq("lock-0000000007"), Some(7));
        assert_eq!(
            super::parse_seq("lock-300005ebb7e0001-0000000012"),
            Some(12)
        );
        assert_eq!(super::parse_seq("other-0000000001"), None);
        assert_eq!(super::parse_seq("lock-abc-"), None);
    }
}
