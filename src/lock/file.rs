//! The embedded lock: an exclusive `flock` (through fs2) on `<locks-folder>/<lock-id>`.
//!
//! Unlike Artemis, loss is detected: each check confirms that the path still names the file
//! we locked (same dev+inode) and that I/O on it completes within a deadline, on a blocking
//! thread, so a hung shared mount fences instead of hanging the coordinator.
//!
//! `flock` is not `fcntl`: lockgate and a broker's own file lock must never share a file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{LockError, Observed, OwnerRecord};

/// A file lock, held or not.
pub struct FileLock {
    path: PathBuf,
    /// Deadline of each blocking operation on the file.
    io_timeout: Duration,
    held: Option<Held>,
}

/// The open, locked file and the identity it had when locked.
struct Held {
    /// Shared with at most one blocking check at a time; the flock goes when the last
    /// reference closes the descriptor.
    file: Arc<File>,
    dev: u64,
    ino: u64,
    term: u64,
}

impl FileLock {
    pub fn new(folder: &Path, lock_id: &str, io_timeout: Duration) -> FileLock {
        FileLock {
            path: folder.join(lock_id),
            io_timeout,
            held: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn display(&self) -> String {
        self.path.display().to_string()
    }

    /// Runs `op` on a blocking thread with this lock's deadline. An operation that overruns
    /// keeps running on its thread; whatever it returns is dropped there (closing any file it
    /// opened, which frees any flock it took).
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Result<T, LockError> + Send + 'static,
    ) -> Result<T, LockError> {
        match tokio::time::timeout(self.io_timeout, tokio::task::spawn_blocking(f)).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(LockError::Io {
                path: self.display(),
                source: io::Error::other(join.to_string()),
            }),
            Err(_) => Err(LockError::Timeout {
                path: self.display(),
                op,
                ms: self.io_timeout.as_millis(),
            }),
        }
    }

    pub async fn try_acquire(
        &mut self,
        node_id: &str,
        last_term: u64,
    ) -> Result<Option<u64>, LockError> {
        if let Some(held) = &self.held {
            return Ok(Some(held.term));
        }
        let path = self.path.clone();
        let node_id = node_id.to_owned();
        let held = self
            .blocking("acquire", move || acquire(&path, &node_id, last_term))
            .await?;
        let term = held.as_ref().map(|h| h.term);
        self.held = held;
        Ok(term)
    }

    pub async fn check(&mut self) -> Result<(), LockError> {
        let Some(held) = &self.held else {
            return Err(LockError::Removed(self.display()));
        };
        let (file, dev, ino) = (held.file.clone(), held.dev, held.ino);
        let path = self.path.clone();
        self.blocking("liveness check", move || verify(&path, &file, dev, ino))
            .await
    }

    pub async fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let path = self.path.clone();
        // Unlock explicitly (a hung check may still hold a reference to the descriptor).
        let file = held.file;
        let unlock = self
            .blocking("release", move || {
                fs2::FileExt::unlock(&*file).map_err(io_err(&path))
            })
            .await;
        let path = self.display();
        if let Err(e) = unlock {
            tracing::warn!(file = %path, error = %e, "could not unlock the lock file; it is freed when the file closes");
        }
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> LockError + '_ {
    move |source| {
        if source.kind() == io::ErrorKind::NotFound && path.parent().is_some_and(|p| !p.is_dir()) {
            LockError::FolderMissing(
                path.parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            )
        } else {
            LockError::Io {
                path: path.display().to_string(),
                source,
            }
        }
    }
}

fn is_contended(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

/// Opens and try-locks the file; on success writes our owner record with a term above both
/// `last_term` and the previous holder's. `Ok(None)`: held elsewhere.
fn acquire(path: &Path, node_id: &str, last_term: u64) -> Result<Option<Held>, LockError> {
    let err = io_err(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(&err)?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => {}
        Err(e) if is_contended(&e) => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    let meta = file.metadata().map_err(&err)?;
    // The path may have been replaced between our open and our lock: then we locked an
    // orphan, which excludes nobody.
    match std::fs::metadata(path) {
        Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
        _ => return Ok(None),
    }
    let previous = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| OwnerRecord::from_text(&t))
        .map_or(0, |r| r.term);
    let term = last_term.max(previous) + 1;
    let record = OwnerRecord::new(node_id, term).to_text();
    file.set_len(0).map_err(&err)?;
    file.write_all_at(record.as_bytes(), 0).map_err(&err)?;
    file.sync_data().map_err(&err)?;
    Ok(Some(Held {
        file: Arc::new(file),
        dev: meta.dev(),
        ino: meta.ino(),
        term,
    }))
}

/// The path still names our file, and a read of it completes.
fn verify(path: &Path, file: &File, dev: u64, ino: u64) -> Result<(), LockError> {
    let display = || path.display().to_string();
    match std::fs::metadata(path) {
        Ok(m) if m.dev() == dev && m.ino() == ino => {}
        Ok(_) => return Err(LockError::Replaced(display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LockError::Removed(display())),
        Err(e) => return Err(io_err(path)(e)),
    }
    let mut buf = [0u8; 512];
    file.read_at(&mut buf, 0).map_err(io_err(path))?;
    file.metadata().map_err(io_err(path))?;
    Ok(())
}

/// For `lockgate status`: a shared try-lock tells whether anyone holds the exclusive one.
pub fn observe(path: &Path) -> Result<Observed, LockError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound && path.parent().is_some_and(Path::is_dir) =>
        {
            return Ok(Observed::Absent);
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let record = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| OwnerRecord::from_text(&t));
    match fs2::FileExt::try_lock_shared(&file) {
        Ok(()) => {
            let _ = fs2::FileExt::unlock(&file);
            Ok(Observed::Free(record))
        }
        Err(e) if is_contended(&e) => Ok(Observed::Held(record)),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_between_two_handles_and_freed_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(5);
        let mut a = FileLock::new(dir.path(), "l", t);
        let mut b = FileLock::new(dir.path(), "l", t);
        assert_eq!(a.try_acquire("a", 0).await.unwrap(), Some(1));
        assert_eq!(b.try_acquire("b", 0).await.unwrap(), None);
        a.check().await.unwrap();
        match observe(&dir.path().join("l")).unwrap() {
            Observed::Held(Some(r)) => assert_eq!(r.term, 1),
            other => panic!("unexpected {other:?}"),
        }
        a.release().await;
        // Terms grow across holders: b's follows a's record.
        assert_eq!(b.try_acquire("b", 0).await.unwrap(), Some(2));
    }

    #[tokio::test]
    async fn replaced_or_removed_file_is_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FileLock::new(dir.path(), "l", Duration::from_secs(5));
        assert_eq!(a.try_acquire("a", 0).await.unwrap(), Some(1));
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, b"").unwrap();
        std::fs::rename(&tmp, dir.path().join("l")).unwrap();
        assert!(matches!(a.check().await, Err(LockError::Replaced(_))));
        std::fs::remove_file(dir.path().join("l")).unwrap();
        assert!(matches!(a.check().await, Err(LockError::Removed(_))));
    }

    #[tokio::test]
    async fn missing_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let mut a = FileLock::new(&gone, "l", Duration::from_secs(5));
        assert!(matches!(
            a.try_acquire("a", 0).await,
            Err(LockError::FolderMissing(_))
        ));
    }
}
