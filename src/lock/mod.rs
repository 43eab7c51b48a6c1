//! Lock backends behind one enum, chosen once by a match on the configured type.
//!
//! A backend serves its coordinator: wait for the lock ([`Lock::contend`], then
//! [`Lock::acquired`] resolves the moment it is ours — no polling), stop waiting
//! ([`Lock::withdraw`], which never gives back a lock already held), do I still hold it
//! ([`Lock::check`] on each tick, [`Lock::lost`] between ticks), and give it back
//! ([`Lock::release`], which takes the proof that the gate is closed). None of them may hang:
//! each bounds its own I/O, and ZooKeeper's session lives in a task of its own.

pub mod file;
pub mod zookeeper;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{BackendConfig, CoordinatorConfig};
use crate::gate::Closed;
use crate::lease::Lease;

/// Who holds a lock, written by the holder right after acquiring, read by `lockgate status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OwnerRecord {
    pub node_id: String,
    pub host: String,
    pub pid: u32,
    pub term: u64,
    /// Milliseconds since the Unix epoch.
    pub acquired_at_unix_ms: u64,
}

impl OwnerRecord {
    pub fn new(node_id: &str, term: u64) -> OwnerRecord {
        OwnerRecord {
            node_id: node_id.to_owned(),
            host: crate::config::hostname().unwrap_or_default(),
            pid: std::process::id(),
            term,
            acquired_at_unix_ms: unix_ms_now(),
        }
    }

    pub fn to_text(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    pub fn from_text(text: &str) -> Option<OwnerRecord> {
        toml::from_str(text).ok()
    }
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What went wrong with a lock. `reason()` is the metric label and the log's short word.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the locks folder {0} is missing")]
    FolderMissing(String),
    #[error("lock file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lock file {path}: {op} did not finish within {ms} ms (storage hung?)")]
    Timeout {
        path: String,
        op: &'static str,
        ms: u128,
    },
    #[error("lock file {0} was replaced by another file (inode changed)")]
    Replaced(String),
    #[error("lock file {0} was removed")]
    Removed(String),
    #[error("ZooKeeper unreachable: {0}")]
    Unreachable(String),
    #[error("ZooKeeper: {0}")]
    ZooKeeper(String),
    #[error("ZooKeeper session ended ({0})")]
    SessionEnded(String),
    #[error("our lock node {0} was deleted")]
    NodeDeleted(String),
    #[error("no confirmed contact with the lock service within the fencing limit")]
    LeaseExpired,
}

impl LockError {
    pub fn reason(&self) -> &'static str {
        match self {
            LockError::FolderMissing(_) => "folder_missing",
            LockError::Io { .. } => "io_error",
            LockError::Timeout { .. } => "io_timeout",
            LockError::Replaced(_) => "inode_changed",
            LockError::Removed(_) => "removed",
            LockError::Unreachable(_) => "unreachable",
            LockError::ZooKeeper(_) => "zookeeper_error",
            LockError::SessionEnded(_) => "session_ended",
            LockError::NodeDeleted(_) => "node_deleted",
            LockError::LeaseExpired => "lease_expired",
        }
    }
}

/// What a backend reports between the coordinator's own calls.
#[derive(Debug)]
pub enum LockEvent {
    Acquired(Result<u64, LockError>),
    Lost(LockError),
}

/// The configured backend.
pub enum Lock {
    File(file::FileLock),
    ZooKeeper(zookeeper::ZkLock),
}

impl Lock {
    pub fn new(cfg: &CoordinatorConfig) -> Lock {
        match &cfg.backend {
            BackendConfig::File { locks_folder } => Lock::File(file::FileLock::new(
                locks_folder,
                &cfg.lock_id,
                cfg.io_timeout(),
            )),
            BackendConfig::ZooKeeper(z) => Lock::ZooKeeper(zookeeper::ZkLock::new(
                z,
                &cfg.name,
                &cfg.lock_id,
                cfg.check_period,
            )),
        }
    }

    /// Starts (or keeps) contending for the lock; returns at once. Idempotent.
    pub fn contend(&mut self, node_id: &str, last_term: u64) {
        match self {
            Lock::File(l) => l.contend(node_id, last_term),
            Lock::ZooKeeper(l) => l.contend(node_id, last_term),
        }
    }

    /// Resolves when the lock is ours, with a term above `last_term` and above the previous
    /// holder's; or when contending failed. Pends while not contending. Cancel-safe.
    pub async fn acquired(&mut self) -> Result<u64, LockError> {
        match self {
            Lock::File(l) => l.acquired().await,
            Lock::ZooKeeper(l) => l.acquired().await,
        }
    }

    /// Stops contending; a lock that arrives anyway is released at once. A lock already held
    /// stays held: only [`Lock::release`] gives it back.
    pub fn withdraw(&mut self) {
        match self {
            Lock::File(l) => l.withdraw(),
            Lock::ZooKeeper(l) => l.withdraw(),
        }
    }

    /// While held: `Ok` if the lock is still ours, else why it is not.
    pub async fn check(&mut self) -> Result<(), LockError> {
        match self {
            Lock::File(l) => l.check().await,
            Lock::ZooKeeper(l) => l.check(),
        }
    }

    /// Gives the lock back (no-op if not held); only with the gate closed.
    pub async fn release(&mut self, gate: &Closed) {
        match self {
            Lock::File(l) => l.release(gate).await,
            Lock::ZooKeeper(l) => l.release(gate).await,
        }
    }

    /// At the end: waits (bounded) until a withdrawn contention has left the lock service, so
    /// the peer does not queue behind a node that is gone.
    pub async fn settle(&mut self) {
        match self {
            Lock::File(_) => {}
            Lock::ZooKeeper(l) => l.settle().await,
        }
    }

    /// Where the lock lives, for logs.
    pub fn describe(&self) -> String {
        match self {
            Lock::File(l) => l.path().display().to_string(),
            Lock::ZooKeeper(l) => l.describe(),
        }
    }

    /// The next event: while `held`, a loss; otherwise the lock arriving (or failing to).
    pub async fn event(&mut self, held: bool) -> LockEvent {
        if held {
            LockEvent::Lost(self.lost().await)
        } else {
            LockEvent::Acquired(self.acquired().await)
        }
    }

    /// Resolves when a held lock is lost between checks. The file lock is checked on ticks
    /// only, so it never resolves here.
    pub async fn lost(&mut self) -> LockError {
        match self {
            Lock::File(_) => std::future::pending().await,
            Lock::ZooKeeper(l) => l.lost().await,
        }
    }

    /// The lease the data path checks before forwarding.
    pub fn lease(&self) -> Lease {
        match self {
            Lock::File(_) => Lease::unlimited(),
            Lock::ZooKeeper(l) => l.lease(),
        }
    }
}

/// What `lockgate status` found for one lock.
#[derive(Debug)]
pub enum Observed {
    /// Held now; the record if readable.
    Held(Option<OwnerRecord>),
    /// Nobody holds it; the last holder's record if any.
    Free(Option<OwnerRecord>),
    /// Never created.
    Absent,
}

/// Reads the holder of a lock (and for ZooKeeper the queue of standbys) without taking part
/// in the contention.
pub async fn observe(cfg: &CoordinatorConfig) -> Result<(Observed, Vec<OwnerRecord>), LockError> {
    match &cfg.backend {
        BackendConfig::File { locks_folder } => {
            let path = locks_folder.join(&cfg.lock_id);
            let observed = tokio::task::spawn_blocking(move || file::observe(&path))
                .await
                .map_err(|e| LockError::Io {
                    path: cfg.lock_id.clone(),
                    source: std::io::Error::other(format!("the read of the lock file failed: {e}")),
                })??;
            Ok((observed, Vec::new()))
        }
        BackendConfig::ZooKeeper(z) => zookeeper::observe(z, &cfg.lock_id).await,
    }
}
