//! Validation of one `[[lock-coordinator]]`: its name, `lock-id` and `check-period`, the keys
//! of its backend (a key of the other backend is refused by name; the file backend's folder
//! must exist) and its health check.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::super::error::{KeyError, key_error};
use super::super::raw::RawCoordinator;
use super::super::{BackendConfig, CoordinatorConfig, DEFAULT_CHECK_PERIOD_MS, MAX_PERIOD_MS};
use super::{bounded_ms, health, non_empty, required, unique_name, zookeeper};

const TABLE: &str = "[[lock-coordinator]]";

pub(super) fn validate_coordinator(
    raw: Spanned<RawCoordinator>,
    earlier: &[CoordinatorConfig],
    base: &Path,
) -> Result<CoordinatorConfig, KeyError> {
    let table_span = raw.span();
    let c = raw.into_inner();
    let name = unique_name(
        c.name.clone(),
        &table_span,
        TABLE,
        "a lock-coordinator",
        |n| earlier.iter().any(|o| o.name == n),
    )?;
    let lock_id = required(c.lock_id.clone(), &table_span, TABLE, "lock-id")?;
    let lock_id_span = lock_id.span();
    let lock_id = non_empty(lock_id, "lock-id")?;
    if lock_id.contains('/') || lock_id == "." || lock_id == ".." || lock_id.contains('\0') {
        return Err(key_error(
            lock_id_span,
            "lock-id",
            "must be a plain name (it names a file or znode): no '/', not '.' or '..'",
        ));
    }
    let check_period = bounded_ms(
        c.check_period.clone(),
        "check-period",
        DEFAULT_CHECK_PERIOD_MS,
        MAX_PERIOD_MS,
    )?;
    let kind = required(c.kind.clone(), &table_span, TABLE, "type")?;
    let backend = validate_backend(&c, kind.get_ref(), kind.span(), base)?;
    let health = match c.health_check {
        Some(h) => Some(health::validate_health(h).map_err(|e| e.in_table("health-check"))?),
        None => None,
    };
    Ok(CoordinatorConfig {
        name,
        lock_id,
        check_period,
        backend,
        health,
    })
}

/// The backend `kind` names, from its own keys; a key of the other backend is refused.
fn validate_backend(
    c: &RawCoordinator,
    kind: &str,
    kind_span: Range<usize>,
    base: &Path,
) -> Result<BackendConfig, KeyError> {
    let zk_keys = [
        (
            "connect-string",
            c.connect_string.as_ref().map(Spanned::span),
        ),
        ("namespace", c.namespace.as_ref().map(Spanned::span)),
        ("session-ms", c.session_ms.as_ref().map(Spanned::span)),
        (
            "session-percent",
            c.session_percent.as_ref().map(Spanned::span),
        ),
        ("connection-ms", c.connection_ms.as_ref().map(Spanned::span)),
        ("retries", c.retries.as_ref().map(Spanned::span)),
        ("retries-ms", c.retries_ms.as_ref().map(Spanned::span)),
    ];
    let file_keys = [("locks-folder", c.locks_folder.as_ref().map(Spanned::span))];
    let foreign = match kind {
        "file" => &zk_keys[..],
        "zookeeper" => &file_keys[..],
        _ => &[][..],
    };
    if let Some((key, Some(span))) = foreign.iter().find(|(_, s)| s.is_some()) {
        let owner = if kind == "file" { "zookeeper" } else { "file" };
        return Err(key_error(
            span.clone(),
            key,
            format!("`{key}` belongs to lock-coordinators of type \"{owner}\", not \"{kind}\""),
        ));
    }
    match kind {
        "file" => {
            let folder = c.locks_folder.clone().ok_or_else(|| {
                key_error(
                    kind_span.clone(),
                    "locks-folder",
                    "a lock-coordinator of type \"file\" needs `locks-folder`",
                )
            })?;
            let span = folder.span();
            let folder = base.join(folder.into_inner());
            if !folder.is_dir() {
                return Err(key_error(
                    span,
                    "locks-folder",
                    format!(
                        "the locks folder {} does not exist or is not a folder (create it; \
                         lockgate does not)",
                        folder.display()
                    ),
                ));
            }
            Ok(BackendConfig::File {
                locks_folder: folder,
            })
        }
        "zookeeper" => Ok(BackendConfig::ZooKeeper(zookeeper::validate_zk(
            c, kind_span,
        )?)),
        other => Err(key_error(
            kind_span,
            "type",
            format!("unknown lock type \"{other}\"; expected \"file\" or \"zookeeper\""),
        )),
    }
}
