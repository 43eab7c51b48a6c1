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
pub use fencing::{Fencing, ZK_SCHEDULING_SLACK};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use zookeeper_client as zk;

use super::{LockError, Observed, OwnerRecord, unix_ms_now};
use crate::config::ZkConfig;
use crate::gate::Closed;
use crate::lease::{Lease, now_ns};
use crate::metrics as m;

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
    released: watch::Receiver<u64>,
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
        let (released_tx, released) = watch::channel(0);
        let lease = Lease::revoked();
        let session = Session {
            cfg: cfg.clone(),
            name: name.to_owned(),
            path: path.clone(),
            check_period,
            desired: desired_rx,
            events: events_tx,
            released: released_tx,
            lease: lease.clone(),
            failed: None,
        };
        let task = tokio::spawn(session.run());
        ZkLock {
            path,
            desired,
            events,
            released,
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
                    Some(stale) => debug!(event = ?stale, "ignoring a ZooKeeper lock event while holding"),
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
        let mut released = self.released.clone();
        let confirmed =
            tokio::time::timeout(self.release_wait, released.wait_for(|g| *g >= generation)).await;
        if !matches!(confirmed, Ok(Ok(_))) {
            warn!(path = %self.path, "ZooKeeper did not confirm the release in time; the session's end will free the lock");
        }
    }
}

type Watch = Pin<Box<dyn Future<Output = zk::WatchedEvent> + Send>>;
type Confirming = Pin<Box<dyn Future<Output = (u64, Result<zk::Stat, zk::Error>)> + Send>>;

/// The session task's state and channels.
struct Session {
    cfg: ZkConfig,
    name: String,
    path: String,
    check_period: Duration,
    desired: watch::Receiver<Desired>,
    events: mpsc::UnboundedSender<ZkEvent>,
    released: watch::Sender<u64>,
    lease: Lease,
    /// The last generation a failure was reported for: one report per contention, so failures
    /// do not pile up while the coordinator holds off.
    failed: Option<u64>,
}

/// Our contender node in the current session.
struct Node {
    path: String,
    seq: i64,
    generation: u64,
    /// What the node holds (the owner record once we hold), rewritten by each renewal.
    data: Vec<u8>,
    /// The node's version as of our last write; renewals expect it.
    version: i32,
}

impl Session {
    async fn run(mut self) {
        let up = metrics::gauge!(m::LOCK_BACKEND_UP, "lock" => self.name.clone());
        up.set(0.0);
        let mut attempts: u32 = 0;
        let mut last_error = String::new();
        loop {
            // Nothing wanted and nothing held: still keep a session, so contention starts at
            // once when wanted (and `status` has a live view).
            match self.connect().await {
                Ok(client) => {
                    attempts = 0;
                    last_error.clear();
                    up.set(1.0);
                    self.serve(&client).await;
                    up.set(0.0);
                }
                Err(e) => {
                    metrics::counter!(m::LOCK_BACKEND_ERRORS, "lock" => self.name.clone(), "reason" => "unreachable").increment(1);
                    let text = e.to_string();
                    if text != last_error {
                        warn!(lock = %self.name, connect_string = %self.cfg.connect_string, error = %text, "cannot reach ZooKeeper; open routes keep serving, retrying");
                        last_error = text;
                    }
                    let desired = self.desired.borrow().clone();
                    if desired.want {
                        self.fail(desired.generation, LockError::Unreachable(e.to_string()));
                    }
                    self.released.send_replace(desired.generation);
                    attempts += 1;
                    let wait = if attempts <= self.cfg.retries {
                        self.cfg.retries_wait
                    } else {
                        self.check_period
                    };
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn connect(&self) -> Result<zk::Client, zk::Error> {
        let connector = zk::Client::connector()
            .with_session_timeout(self.cfg.session)
            .with_connection_timeout(self.cfg.connection)
            .with_fail_eagerly();
        let client = match tokio::time::timeout(
            self.cfg.session,
            connector.connect(&self.cfg.connect_string),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(zk::Error::Timeout),
        };
        let f = self.fencing(&client);
        info!(
            lock = %self.name,
            session_ms = f.session.as_millis() as u64,
            connection_ms = f.connection.as_millis() as u64,
            fence_after_ms = f.fence_after.as_millis() as u64,
            margin_ms = f.margin.as_millis() as u64,
            "ZooKeeper session established"
        );
        if !f.is_safe() {
            error!(lock = %self.name, "the negotiated session timeout leaves no safe fencing margin; fencing at once on any disconnection");
        }
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match client.mkdir(&self.path, &options).await {
            Ok(()) | Err(zk::Error::NodeExists) => Ok(client),
            Err(e) => Err(e),
        }
    }

    fn fencing(&self, client: &zk::Client) -> Fencing {
        self.cfg.fencing(client.session_timeout())
    }

    /// Reports that contending failed, once per generation.
    fn fail(&mut self, generation: u64, error: LockError) {
        if self.failed == Some(generation) {
            debug!(lock = %self.name, error = %error, "contending still fails");
            return;
        }
        self.failed = Some(generation);
        let _ = self.events.send(ZkEvent::Failed { generation, error });
    }

    /// Serves one session until it ends (expired, closed, auth failed).
    async fn serve(&mut self, client: &zk::Client) {
        let fence_after = self.fencing(client).fence_after;
        let mut state = client.state_watcher();
        let mut node: Option<Node> = None;
        let mut holding = false;
        let mut pred_watch: Option<Watch> = None;
        let mut own_watch: Option<Watch> = None;
        let mut confirm: Option<Confirming> = None;
        let mut confirm_tick = tokio::time::interval((fence_after / 4).max(MIN_CONFIRM_EVERY));
        confirm_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = true;
        let mut disconnected_at: Option<Instant> = None;
        // A generation we lost the lock in: never re-acquired until the coordinator contends
        // anew.
        let mut fenced: Option<u64> = None;
        // Our nodes that could not be deleted yet (disconnected): deleted when connected, so
        // we never queue behind ourselves.
        let mut stale: Vec<String> = Vec::new();
        loop {
            let desired = self.desired.borrow_and_update().clone();
            if connected && !stale.is_empty() {
                let mut left = Vec::new();
                for path in stale.drain(..) {
                    match client.delete(&path, None).await {
                        Ok(()) | Err(zk::Error::NoNode) => {
                            info!(lock = %self.name, node = %path, "stale contender node deleted");
                        }
                        Err(_) => left.push(path),
                    }
                }
                stale = left;
            }
            // Align with what the coordinator wants.
            if !desired.want {
                if let Some(n) = node.take() {
                    self.lease.revoke();
                    holding = false;
                    own_watch = None;
                    pred_watch = None;
                    confirm = None;
                    match client.delete(&n.path, None).await {
                        Ok(()) | Err(zk::Error::NoNode) => {
                            info!(lock = %self.name, node = %n.path, "contender node deleted");
                            self.released.send_replace(desired.generation);
                        }
                        Err(e) => {
                            // Not released yet: the release waits (bounded) and says so.
                            warn!(lock = %self.name, node = %n.path, error = %e, "cannot delete our contender node now; retrying when connected");
                            stale.push(n.path);
                        }
                    }
                } else {
                    self.released.send_replace(desired.generation);
                }
            } else if connected {
                if node
                    .as_ref()
                    .is_some_and(|n| n.generation != desired.generation)
                {
                    // Contending anew: keep our place in the queue.
                    if let Some(n) = node.as_mut() {
                        n.generation = desired.generation;
                    }
                    holding = false;
                    pred_watch = None;
                }
                if node.is_none() {
                    match self.create_node(client, &desired).await {
                        Ok(n) => node = Some(n),
                        Err(e) => {
                            if self.session_over(client) {
                                return;
                            }
                            self.fail(desired.generation, LockError::ZooKeeper(e.to_string()));
                        }
                    }
                }
                let evaluate =
                    !holding && pred_watch.is_none() && fenced != Some(desired.generation);
                if let Some(n) = node.as_mut().filter(|_| evaluate) {
                    let sent = now_ns();
                    match self.position(client, n).await {
                        Ok(Position::Lowest) => {
                            let term = desired.last_term.max(n.seq.max(0) as u64) + 1;
                            let record = OwnerRecord::new(&desired.node_id, term).to_text();
                            // A write, committed by the quorum: our session is alive and our
                            // node exists as of no earlier than `sent`.
                            match client.set_data(&n.path, record.as_bytes(), None).await {
                                Ok(stat) => {
                                    n.data = record.into_bytes();
                                    n.version = stat.version;
                                    self.lease.set_for(sent, fence_after);
                                    holding = true;
                                    own_watch = self.watch_own(client, &n.path).await;
                                    let _ = self.events.send(ZkEvent::Acquired {
                                        generation: n.generation,
                                        term,
                                    });
                                }
                                Err(e) => {
                                    debug!(lock = %self.name, error = %e, "cannot write the owner record; retrying")
                                }
                            }
                        }
                        Ok(Position::Behind(watch)) => pred_watch = Some(watch),
                        Ok(Position::Gone) => node = None,
                        Err(e) => {
                            if self.session_over(client) {
                                return;
                            }
                            debug!(lock = %self.name, error = %e, "cannot read the contenders; retrying when reconnected");
                        }
                    }
                    if node.is_none() {
                        // Our node vanished before we held: contend again at once.
                        continue;
                    }
                }
            }

            let fence_at = disconnected_at.map(|t| t + fence_after);
            tokio::select! {
                r = self.desired.changed() => {
                    if r.is_err() {
                        return; // the coordinator is gone
                    }
                }
                s = state.changed() => match s {
                    zk::SessionState::Disconnected => {
                        connected = false;
                        let now = Instant::now();
                        disconnected_at = Some(now);
                        if holding {
                            // Fence no later than F from now, even if the last confirmation
                            // was recent.
                            self.lease.cap(now_ns(), fence_after);
                            warn!(lock = %self.name, fence_after_ms = fence_after.as_millis() as u64, "disconnected from ZooKeeper while holding the lock; fencing unless it comes back in time");
                        } else {
                            warn!(lock = %self.name, "disconnected from ZooKeeper");
                        }
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        connected = true;
                        disconnected_at = None;
                        info!(lock = %self.name, "reconnected to ZooKeeper");
                        if holding {
                            // Confirm our node before trusting the lock again.
                            confirm = Some(self.confirm(client, &node));
                        }
                        pred_watch = None;
                    }
                    terminal => {
                        warn!(lock = %self.name, state = ?terminal, "ZooKeeper session ended; starting a new one");
                        self.lease.revoke();
                        if let Some(n) = node.filter(|_| holding) {
                            let _ = self.events.send(ZkEvent::Lost {
                                generation: n.generation,
                                error: LockError::SessionEnded(format!("{terminal:?}")),
                            });
                        }
                        return;
                    }
                },
                e = async { match pred_watch.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if pred_watch.is_some() => {
                    debug!(lock = %self.name, event = ?e.event_type, "predecessor changed");
                    pred_watch = None;
                }
                e = async { match own_watch.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if own_watch.is_some() => {
                    own_watch = None;
                    if holding && e.event_type == zk::EventType::NodeDeleted {
                        fenced = self.lose(&node, &mut holding, LockError::NodeDeleted(e.path.clone()));
                        node = None;
                    } else if holding {
                        own_watch = self.watch_own(client, &e.path).await;
                    }
                }
                _ = confirm_tick.tick(), if holding && connected && confirm.is_none() => {
                    confirm = Some(self.confirm(client, &node));
                }
                r = async { match confirm.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if confirm.is_some() => {
                    confirm = None;
                    let (sent, result) = r;
                    match result {
                        Ok(stat) if holding => {
                            if let Some(n) = node.as_mut() {
                                n.version = stat.version;
                            }
                            self.lease.set_for(sent, fence_after);
                        }
                        Err(zk::Error::NoNode) if holding => {
                            let path = node.as_ref().map(|n| n.path.clone()).unwrap_or_default();
                            fenced = self.lose(&node, &mut holding, LockError::NodeDeleted(path));
                            node = None;
                        }
                        Err(zk::Error::BadVersion) if holding => {
                            // A renewal whose answer was lost went through: learn the version
                            // (a read, so it does not extend the lease) and renew next time.
                            if let Some(n) = node.as_mut()
                                && let Ok(Some(stat)) = client.check_stat(&n.path).await
                            {
                                n.version = stat.version;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => debug!(lock = %self.name, error = %e, "ZooKeeper renewal failed; the lease keeps running down"),
                    }
                }
                _ = sleep_until_opt(fence_at), if holding && fence_at.is_some() => {
                    fenced = self.lose(&node, &mut holding, LockError::LeaseExpired);
                    disconnected_at = None;
                }
            }
        }
    }

    /// Reports a loss and revokes the lease. Our node is kept (it may still exist) until the
    /// coordinator withdraws; the caller stops acquiring in this generation.
    fn lose(&self, node: &Option<Node>, holding: &mut bool, error: LockError) -> Option<u64> {
        self.lease.revoke();
        *holding = false;
        let n = node.as_ref()?;
        warn!(lock = %self.name, node = %n.path, error = %error, "ZooKeeper lock lost");
        let _ = self.events.send(ZkEvent::Lost {
            generation: n.generation,
            error,
        });
        Some(n.generation)
    }

    fn session_over(&self, client: &zk::Client) -> bool {
        matches!(
            client.state(),
            zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
        )
    }

    async fn create_node(&self, client: &zk::Client, desired: &Desired) -> Result<Node, zk::Error> {
        let record = OwnerRecord {
            term: 0,
            acquired_at_unix_ms: 0,
            ..OwnerRecord::new(&desired.node_id, 0)
        }
        .to_text();
        let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let prefix = format!("{}/{}", self.path, session_tag(client));
        let (_, seq) = client.create(&prefix, record.as_bytes(), &options).await?;
        let path = format!("{prefix}{seq}");
        info!(lock = %self.name, node = %path, "contending for the lock");
        Ok(Node {
            path,
            seq: seq.into_i64(),
            generation: desired.generation,
            data: record.into_bytes(),
            version: 0,
        })
    }

    async fn position(&self, client: &zk::Client, n: &Node) -> Result<Position, zk::Error> {
        let ours = session_tag(client);
        loop {
            let children = client.list_children(&self.path).await?;
            let mut seqs: Vec<(i64, String)> = Vec::new();
            for c in children {
                let Some(seq) = parse_seq(&c) else { continue };
                if c.starts_with(&ours) && seq != n.seq {
                    // An orphan of this session (a create whose answer was lost): delete it,
                    // or we would wait for ourselves.
                    match client.delete(&format!("{}/{c}", self.path), None).await {
                        Ok(()) | Err(zk::Error::NoNode) => {
                            info!(lock = %self.name, node = %c, "deleted an orphaned contender node of this session");
                        }
                        Err(e) => return Err(e),
                    }
                    continue;
                }
                seqs.push((seq, c));
            }
            seqs.sort();
            let Some(i) = seqs.iter().position(|(s, _)| *s == n.seq) else {
                return Ok(Position::Gone);
            };
            if i == 0 {
                return Ok(Position::Lowest);
            }
            let pred = format!("{}/{}", self.path, seqs[i - 1].1);
            let (stat, watcher) = client.check_and_watch_stat(&pred).await?;
            if stat.is_some() {
                debug!(lock = %self.name, predecessor = %pred, "waiting for the predecessor");
                return Ok(Position::Behind(Box::pin(watcher.changed())));
            }
        }
    }

    async fn watch_own(&self, client: &zk::Client, path: &str) -> Option<Watch> {
        match client.check_and_watch_stat(path).await {
            Ok((Some(_), w)) => Some(Box::pin(w.changed())),
            Ok((None, _)) => None,
            Err(e) => {
                debug!(lock = %self.name, error = %e, "cannot watch our own node");
                None
            }
        }
    }

    /// One renewal: a versioned rewrite of our node ([`CONFIRM`]); the lease will run from
    /// `sent`.
    fn confirm(&self, client: &zk::Client, node: &Option<Node>) -> Confirming {
        let client = client.clone();
        let (path, data, version) = node
            .as_ref()
            .map(|n| (n.path.clone(), n.data.clone(), n.version))
            .unwrap_or_default();
        Box::pin(async move {
            let sent = now_ns();
            (sent, client.set_data(&path, &data, Some(version)).await)
        })
    }
}

enum Position {
    Lowest,
    Behind(Watch),
    Gone,
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
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
