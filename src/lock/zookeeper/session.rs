//! The task that owns a lock's ZooKeeper session (see the parent module for the fencing rule).
//!
//! [`Session::run`] keeps a session up (reconnecting, with back-off) for as long as the lock
//! exists. Each established session is served by a [`Serving`], whose steps are its methods:
//! [`Serving::delete_stale`] (clean up our nodes that could not be deleted yet),
//! [`Serving::align`] (with what the coordinator wants), [`Serving::take_turn`] (acquire when
//! lowest, else watch the predecessor), [`Serving::renewed`] (confirm the lease), and
//! [`Serving::wait`] for whatever happens next.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, error, info, warn};
use zookeeper_client as zk;

use super::Fencing;
use super::{Desired, MIN_CONFIRM_EVERY, ZkEvent, parse_seq, session_tag};
use crate::config::ZkConfig;
use crate::lease::{Lease, now_ns};
use crate::lock::{LockError, OwnerRecord};
use crate::metrics::{LOCK_BACKEND_ERRORS, LOCK_BACKEND_UP};

type Watch = Pin<Box<dyn Future<Output = zk::WatchedEvent> + Send>>;
type Confirming = Pin<Box<dyn Future<Output = (u64, Result<zk::Stat, zk::Error>)> + Send>>;

/// The session task's state and channels.
pub(super) struct Session {
    pub(super) cfg: ZkConfig,
    pub(super) name: String,
    pub(super) path: String,
    pub(super) check_period: Duration,
    pub(super) desired: watch::Receiver<Desired>,
    pub(super) events: mpsc::UnboundedSender<ZkEvent>,
    /// The last generation whose node is gone (deleted, or never created).
    pub(super) deleted: watch::Sender<u64>,
    pub(super) lease: Lease,
    /// The last generation a failure was reported for: one report per contention, so failures
    /// do not pile up while the coordinator holds off.
    pub(super) failed: Option<u64>,
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

enum Position {
    Lowest,
    Behind(Watch),
    Gone,
}

/// What the serving loop does after a step.
enum Then {
    /// Wait for the next thing to happen.
    Wait,
    /// Go round again at once (our node vanished before we held: contend again).
    Again,
    /// The session is over (or the coordinator gone): the caller starts a new one.
    End,
}

impl Session {
    pub(super) async fn run(mut self) {
        let up = metrics::gauge!(LOCK_BACKEND_UP, "lock" => self.name.clone());
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
                    Serving::new(&mut self, &client).run().await;
                    up.set(0.0);
                }
                Err(e) => {
                    let (lock, reason) = (self.name.clone(), "unreachable");
                    metrics::counter!(LOCK_BACKEND_ERRORS, "lock" => lock, "reason" => reason)
                        .increment(1);
                    let text = e.to_string();
                    if text != last_error {
                        warn!(
                            connect_string = %self.cfg.connect_string,
                            error = %text,
                            "cannot reach ZooKeeper; open routes keep serving, retrying"
                        );
                        last_error = text;
                    }
                    let desired = self.desired.borrow().clone();
                    if desired.want {
                        self.fail(desired.generation, LockError::Unreachable(e.to_string()));
                    }
                    self.deleted.send_replace(desired.generation);
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
            session_ms = f.session.as_millis() as u64,
            connection_ms = f.connection.as_millis() as u64,
            fence_after_ms = f.fence_after.as_millis() as u64,
            margin_ms = f.margin.as_millis() as u64,
            "ZooKeeper session established"
        );
        if !f.is_safe() {
            error!(
                "the negotiated session timeout leaves no safe fencing margin; fencing at once on \
                 any disconnection"
            );
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
            debug!(error = %error, "contending still fails");
            return;
        }
        self.failed = Some(generation);
        let _ = self.events.send(ZkEvent::Failed { generation, error });
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
        info!(node = %path, "contending for the lock");
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
                            info!(node = %c, "deleted an orphaned contender node of this session");
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
                debug!(predecessor = %pred, "waiting for the predecessor");
                return Ok(Position::Behind(Box::pin(watcher.changed())));
            }
        }
    }

    async fn watch_own(&self, client: &zk::Client, path: &str) -> Option<Watch> {
        match client.check_and_watch_stat(path).await {
            Ok((Some(_), w)) => Some(Box::pin(w.changed())),
            Ok((None, _)) => None,
            Err(e) => {
                debug!(error = %e, "cannot watch our own node");
                None
            }
        }
    }
}

/// One established session being served: our node in it and what we know of it.
struct Serving<'a> {
    session: &'a mut Session,
    client: &'a zk::Client,
    fence_after: Duration,
    state: zk::StateWatcher,
    node: Option<Node>,
    holding: bool,
    connected: bool,
    disconnected_at: Option<Instant>,
    /// A generation we lost the lock in: never re-acquired until the coordinator contends
    /// anew.
    fenced: Option<u64>,
    /// Our nodes that could not be deleted yet (disconnected): deleted when connected, so we
    /// never queue behind ourselves.
    stale: Vec<String>,
    predecessor: Option<Watch>,
    own: Option<Watch>,
    /// The renewal in flight, and when the next one is due.
    renewal: Option<Confirming>,
    renew_tick: Interval,
}

impl<'a> Serving<'a> {
    fn new(session: &'a mut Session, client: &'a zk::Client) -> Serving<'a> {
        let fence_after = session.fencing(client).fence_after;
        let mut renew_tick = tokio::time::interval((fence_after / 4).max(MIN_CONFIRM_EVERY));
        renew_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Serving {
            session,
            client,
            fence_after,
            state: client.state_watcher(),
            node: None,
            holding: false,
            connected: true,
            disconnected_at: None,
            fenced: None,
            stale: Vec::new(),
            predecessor: None,
            own: None,
            renewal: None,
            renew_tick,
        }
    }

    /// Serves the session until it ends (expired, closed, auth failed) or the coordinator is
    /// gone.
    async fn run(mut self) {
        loop {
            let desired = self.session.desired.borrow_and_update().clone();
            if self.connected {
                self.delete_stale().await;
            }
            let then = match self.align(&desired).await {
                Then::Wait => self.wait().await,
                then => then,
            };
            match then {
                Then::Wait | Then::Again => {}
                Then::End => return,
            }
        }
    }

    /// Deletes our nodes that could not be deleted while disconnected.
    async fn delete_stale(&mut self) {
        let mut left = Vec::new();
        for path in self.stale.drain(..) {
            match self.client.delete(&path, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {
                    info!(node = %path, "stale contender node deleted");
                }
                Err(_) => left.push(path),
            }
        }
        self.stale = left;
    }

    /// Aligns with what the coordinator wants: our node gone when nothing is wanted, else a
    /// node of this generation and our turn taken.
    async fn align(&mut self, desired: &Desired) -> Then {
        if !desired.want {
            self.delete_node(desired.generation).await;
            return Then::Wait;
        }
        if !self.connected {
            return Then::Wait;
        }
        if let Some(n) = self
            .node
            .as_mut()
            .filter(|n| n.generation != desired.generation)
        {
            // Contending anew: keep our place in the queue.
            n.generation = desired.generation;
            self.holding = false;
            self.predecessor = None;
        }
        if self.node.is_none() {
            match self.session.create_node(self.client, desired).await {
                Ok(n) => self.node = Some(n),
                Err(e) => {
                    if session_over(self.client) {
                        return Then::End;
                    }
                    let error = LockError::ZooKeeper(e.to_string());
                    self.session.fail(desired.generation, error);
                }
            }
        }
        if self.holding || self.predecessor.is_some() || self.fenced == Some(desired.generation) {
            return Then::Wait;
        }
        self.take_turn(desired).await
    }

    /// Not wanted: fence, delete our node, and say so once it is gone.
    async fn delete_node(&mut self, generation: u64) {
        let Some(n) = self.node.take() else {
            self.session.deleted.send_replace(generation);
            return;
        };
        self.session.lease.revoke();
        self.holding = false;
        self.own = None;
        self.predecessor = None;
        self.renewal = None;
        match self.client.delete(&n.path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {
                info!(node = %n.path, "contender node deleted");
                self.session.deleted.send_replace(generation);
            }
            Err(e) => {
                // Not released yet: the release waits (bounded) and says so.
                warn!(
                    node = %n.path,
                    error = %e,
                    "cannot delete our contender node now; retrying when connected"
                );
                self.stale.push(n.path);
            }
        }
    }

    /// Where our node stands: lowest, it takes the lock; behind, it watches its predecessor.
    async fn take_turn(&mut self, desired: &Desired) -> Then {
        let Some(n) = self.node.as_ref() else {
            return Then::Wait;
        };
        let sent = now_ns();
        match self.session.position(self.client, n).await {
            Ok(Position::Lowest) => self.acquire(desired, sent).await,
            Ok(Position::Behind(watch)) => self.predecessor = Some(watch),
            Ok(Position::Gone) => {
                // Our node vanished before we held: contend again at once.
                self.node = None;
                return Then::Again;
            }
            Err(e) => {
                if session_over(self.client) {
                    return Then::End;
                }
                debug!(error = %e, "cannot read the contenders; retrying when reconnected");
            }
        }
        Then::Wait
    }

    /// Lowest: writes the owner record, and holds from the moment the write was `sent`.
    async fn acquire(&mut self, desired: &Desired, sent: u64) {
        let Some(n) = self.node.as_mut() else {
            return;
        };
        let term = desired.last_term.max(n.seq.max(0) as u64) + 1;
        let record = OwnerRecord::new(&desired.node_id, term).to_text();
        // A write, committed by the quorum: our session is alive and our node exists as of no
        // earlier than `sent`.
        match self.client.set_data(&n.path, record.as_bytes(), None).await {
            Ok(stat) => {
                n.data = record.into_bytes();
                n.version = stat.version;
                self.session.lease.set_for(sent, self.fence_after);
                self.holding = true;
                self.own = self.session.watch_own(self.client, &n.path).await;
                let generation = n.generation;
                let _ = self
                    .session
                    .events
                    .send(ZkEvent::Acquired { generation, term });
            }
            Err(e) => {
                debug!(error = %e, "cannot write the owner record; retrying")
            }
        }
    }

    /// Waits for the next thing to happen and handles it.
    async fn wait(&mut self) -> Then {
        let fence_at = self.disconnected_at.map(|t| t + self.fence_after);
        tokio::select! {
            r = self.session.desired.changed() => {
                if r.is_err() {
                    return Then::End; // the coordinator is gone
                }
            }
            s = self.state.changed() => return self.session_state(s),
            e = fired(&mut self.predecessor), if self.predecessor.is_some() => {
                debug!(event = ?e.event_type, "predecessor changed");
                self.predecessor = None;
            }
            e = fired(&mut self.own), if self.own.is_some() => self.own_node_changed(e).await,
            _ = self.renew_tick.tick(),
                if self.holding && self.connected && self.renewal.is_none() => self.renew(),
            r = fired(&mut self.renewal), if self.renewal.is_some() => self.renewed(r).await,
            _ = sleep_until_opt(fence_at), if self.holding && fence_at.is_some() => {
                self.lose(LockError::LeaseExpired);
                self.disconnected_at = None;
            }
        }
        Then::Wait
    }

    /// The session's connection went, came back, or the session ended.
    fn session_state(&mut self, state: zk::SessionState) -> Then {
        match state {
            zk::SessionState::Disconnected => {
                self.connected = false;
                let now = Instant::now();
                self.disconnected_at = Some(now);
                if self.holding {
                    // Fence no later than F from now, even if the last confirmation was
                    // recent.
                    self.session.lease.cap(now_ns(), self.fence_after);
                    let fence_after_ms = self.fence_after.as_millis() as u64;
                    warn!(
                        fence_after_ms,
                        "disconnected from ZooKeeper while holding the lock; fencing unless it \
                         comes back in time"
                    );
                } else {
                    warn!("disconnected from ZooKeeper");
                }
            }
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                self.connected = true;
                self.disconnected_at = None;
                info!("reconnected to ZooKeeper");
                if self.holding {
                    // Confirm our node before trusting the lock again.
                    self.renew();
                }
                self.predecessor = None;
            }
            terminal => {
                warn!(state = ?terminal, "ZooKeeper session ended; starting a new one");
                self.session.lease.revoke();
                if let Some(n) = self.node.as_ref().filter(|_| self.holding) {
                    let _ = self.session.events.send(ZkEvent::Lost {
                        generation: n.generation,
                        error: LockError::SessionEnded(format!("{terminal:?}")),
                    });
                }
                return Then::End;
            }
        }
        Then::Wait
    }

    /// Our own node's watch fired: deleted while we hold is a loss; anything else, watch
    /// again.
    async fn own_node_changed(&mut self, e: zk::WatchedEvent) {
        self.own = None;
        if self.holding && e.event_type == zk::EventType::NodeDeleted {
            self.lose(LockError::NodeDeleted(e.path.clone()));
            self.node = None;
        } else if self.holding {
            self.own = self.session.watch_own(self.client, &e.path).await;
        }
    }

    /// Starts one renewal: a versioned rewrite of our node ([`super::CONFIRM`]); the lease
    /// will run from when it was sent.
    fn renew(&mut self) {
        let client = self.client.clone();
        let (path, data, version) = self
            .node
            .as_ref()
            .map(|n| (n.path.clone(), n.data.clone(), n.version))
            .unwrap_or_default();
        self.renewal = Some(Box::pin(async move {
            let sent = now_ns();
            (sent, client.set_data(&path, &data, Some(version)).await)
        }));
    }

    /// A renewal's answer: a committed write confirms the lease from when it was sent.
    async fn renewed(&mut self, (sent, result): (u64, Result<zk::Stat, zk::Error>)) {
        self.renewal = None;
        match result {
            Ok(stat) if self.holding => {
                if let Some(n) = self.node.as_mut() {
                    n.version = stat.version;
                }
                self.session.lease.set_for(sent, self.fence_after);
            }
            Err(zk::Error::NoNode) if self.holding => {
                let path = self.node.as_ref().map(|n| n.path.clone());
                self.lose(LockError::NodeDeleted(path.unwrap_or_default()));
                self.node = None;
            }
            Err(zk::Error::BadVersion) if self.holding => {
                // A renewal whose answer was lost went through: learn the version (a read, so
                // it does not extend the lease) and renew next time.
                if let Some(n) = self.node.as_mut()
                    && let Ok(Some(stat)) = self.client.check_stat(&n.path).await
                {
                    n.version = stat.version;
                }
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "ZooKeeper renewal failed; the lease keeps running down")
            }
        }
    }

    /// Reports a loss and revokes the lease. Our node is kept (it may still exist) until the
    /// coordinator withdraws; no acquiring again in this generation.
    fn lose(&mut self, error: LockError) {
        self.session.lease.revoke();
        self.holding = false;
        self.fenced = self.node.as_ref().map(|n| n.generation);
        let Some(n) = self.node.as_ref() else {
            return;
        };
        warn!(node = %n.path, error = %error, "ZooKeeper lock lost");
        let _ = self.session.events.send(ZkEvent::Lost {
            generation: n.generation,
            error,
        });
    }
}

fn session_over(client: &zk::Client) -> bool {
    matches!(
        client.state(),
        zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
    )
}

/// Resolves when the future in `slot` does; pends while there is none.
async fn fired<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
