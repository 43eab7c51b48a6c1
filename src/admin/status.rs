//! `GET /status`: the document, each lock as its coordinator sees it and each route; with
//! `?fresh=1` also each lock's holder read from its backend, at most once per
//! [`FRESH_EVERY`] and one read at a time per lock, within [`FRESH_BOUND`].

use std::sync::Arc;
use std::time::Duration;

use super::State;
use crate::config::CoordinatorConfig;
use crate::lock;
use crate::status::Holder;

/// The last fresh read of one lock's holder, and whether one is running.
#[derive(Default)]
pub(super) struct Fresh {
    at: Option<std::time::Instant>,
    value: serde_json::Value,
    /// Set while a read is outstanding; cleared by the read itself, even one that outlived its
    /// deadline on a blocking thread (a hung mount), so no second one piles up behind it.
    in_flight: Arc<std::sync::atomic::AtomicBool>,
}

/// How often a lock's holder may be read from its backend.
const FRESH_EVERY: Duration = Duration::from_secs(1);
/// The bound on one fresh read.
const FRESH_BOUND: Duration = Duration::from_secs(2);

/// The coordinator's own view of each lock; with `fresh`, also the holder read from the
/// backend (rate-limited, bounded, one at a time per lock).
pub(super) async fn document(state: &State, fresh: bool) -> serde_json::Value {
    let node_id = state.node_id.read().map(|n| n.clone()).unwrap_or_default();
    let mut locks = serde_json::Map::new();
    for (name, l) in state.locks() {
        let s = l.state.borrow().clone();
        // While this node holds the lock, it is the holder: no read needed to say so.
        let holder = if s.held {
            serde_json::json!({
                "node_id": node_id,
                "host": crate::config::hostname().unwrap_or_default(),
                "pid": std::process::id(),
                "term": s.term,
                "since_unix_ms": s.since_unix_ms,
            })
        } else {
            serde_json::Value::Null
        };
        let mut v = serde_json::to_value(&s).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), l.cfg.backend.type_name().into());
            o.insert("holder".into(), holder);
            if fresh {
                o.insert("observed".into(), observe_fresh(state, &name, &l.cfg).await);
            }
        }
        locks.insert(name, v);
    }
    let routes: Vec<serde_json::Value> = state
        .routes
        .read()
        .map(|r| {
            r.values()
                .map(|r| serde_json::to_value(r.view()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "node_id": node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "locks": locks,
        "routes": routes,
    })
}

/// Owner records in the key style of all of lockgate's JSON (snake_case).
fn holders(queue: &[lock::OwnerRecord]) -> Vec<Holder> {
    queue.iter().map(Holder::from).collect()
}

/// The holder of one lock per its backend: the last result if it is under a second old or a
/// read is still running, else a new read within [`FRESH_BOUND`].
async fn observe_fresh(state: &State, name: &str, cfg: &CoordinatorConfig) -> serde_json::Value {
    use std::sync::atomic::Ordering;
    let flag = {
        let mut all = state.fresh.lock().unwrap_or_else(|e| e.into_inner());
        let slot = all.entry(name.to_owned()).or_default();
        let recent = slot.at.is_some_and(|t| t.elapsed() < FRESH_EVERY);
        if recent || slot.in_flight.swap(true, Ordering::AcqRel) {
            let mut v = slot.value.clone();
            if let (Some(o), Some(at)) = (v.as_object_mut(), slot.at) {
                o.insert("age_ms".into(), (at.elapsed().as_millis() as u64).into());
            }
            if slot.in_flight.load(Ordering::Acquire) && !recent {
                return serde_json::json!({ "error": "a read of the lock service is still \
                    running (storage not answering?)", "last": v });
            }
            return v;
        }
        slot.in_flight.clone()
    };
    let value = match tokio::time::timeout(FRESH_BOUND, read_holder(cfg, flag.clone())).await {
        Ok(Ok((lock::Observed::Held(Some(r)), queue))) => {
            serde_json::json!({
                "held": true,
                "holder": Holder::from(&r),
                "queue": holders(&queue),
            })
        }
        Ok(Ok((lock::Observed::Held(None), queue))) => {
            serde_json::json!({ "held": true, "holder": null, "queue": holders(&queue) })
        }
        Ok(Ok((lock::Observed::Free(r), _))) => {
            serde_json::json!({ "held": false, "last": r.as_ref().map(Holder::from) })
        }
        Ok(Ok((lock::Observed::Absent, _))) => serde_json::json!({ "held": false, "last": null }),
        Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
        Err(_) => serde_json::json!({
            "error": format!("storage not answering within {} ms", FRESH_BOUND.as_millis())
        }),
    };
    let mut all = state.fresh.lock().unwrap_or_else(|e| e.into_inner());
    let slot = all.entry(name.to_owned()).or_default();
    slot.at = Some(std::time::Instant::now());
    slot.value = value.clone();
    // A ZooKeeper read was cancelled with the timeout; a file read may still be stuck on its
    // blocking thread, and clears the flag itself when it returns.
    if !matches!(cfg.backend, crate::config::BackendConfig::File { .. }) {
        flag.store(false, Ordering::Release);
    }
    value
}

/// Reads a lock's holder. A file read runs on a blocking thread that clears `in_flight` when it
/// returns, however late.
async fn read_holder(
    cfg: &CoordinatorConfig,
    in_flight: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(lock::Observed, Vec<lock::OwnerRecord>), lock::LockError> {
    use std::sync::atomic::Ordering;
    match &cfg.backend {
        crate::config::BackendConfig::File { locks_folder } => {
            let path = locks_folder.join(&cfg.lock_id);
            let observed = tokio::task::spawn_blocking(move || {
                let r = lock::file::observe(&path);
                in_flight.store(false, Ordering::Release);
                r
            })
            .await
            .map_err(|e| lock::LockError::Io {
                path: cfg.lock_id.clone(),
                source: std::io::Error::other(format!("the read of the lock file failed: {e}")),
            })??;
            Ok((observed, Vec::new()))
        }
        crate::config::BackendConfig::ZooKeeper(_) => lock::observe(cfg).await,
    }
}
