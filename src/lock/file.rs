//! The embedded lock: an exclusive `flock` (through fs2) on `<locks-folder>/<lock-id>`.
//!
//! A standby waits for the lock in a blocking `flock` (then `fcntl`) on a thread of its own, so
//! the kernel hands it the lock the instant the holder's process dies or releases it;
//! `check-period` is not the takeover latency. At most one such thread exists per lock:
//! withdrawing (health fell, hold-off, shutdown) leaves a blocked thread in place to be reused,
//! and a lock that arrives while nobody wants it is released at once.
//!
//! A blocked `flock` cannot be interrupted without a signal handler (unsafe code, which this
//! crate forbids), so a `FileLock` that is stopped or dropped while its waiter is blocked
//! (a reload re-creating a standby's coordinator, a shutdown) does not leave that thread and
//! its descriptor behind for good: it withdraws, and parks the waiter in a process-wide table
//! keyed by the lock file's path. The next `FileLock` on that path adopts it instead of
//! starting another, so however many reloads re-create a coordinator, one waiter per path
//! exists; a parked waiter that nobody adopts (the path left the config) ends the moment the
//! lock frees, releasing it at once as unwanted.
//!
//! Unlike Artemis, loss is detected: each check confirms that the path still names the file
//! we locked (same dev+inode) and that I/O on it completes within a deadline, on a blocking
//! thread, so a hung shared mount fences instead of hanging the coordinator.
//!
//! Besides the `flock`, the holder takes an open-file-description `fcntl` write lock
//! (`F_OFD_SETLK[W]`, Linux) on the whole file, on the same open file description: Java's
//! `FileChannel.lock` (Artemis's own file lock) is a POSIX `fcntl` lock, which conflicts with an
//! OFD lock but not with a `flock`, so with both a lockgate node and a native broker exclude
//! each other. One description for both matters on NFS, where Linux emulates `flock` with
//! `fcntl` locks: there two descriptions of one process would block each other.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::{LockError, Observed, OwnerRecord};

/// A file lock, held or not.
pub struct FileLock {
    path: PathBuf,
    /// Deadline of each blocking operation on the file.
    io_timeout: Duration,
    held: Option<Held>,
    /// Shared with the waiter thread, if any.
    handoff: Arc<Handoff>,
}

/// Hand-off between the waiter thread and the coordinator. Every decision "deliver or
/// release" is taken under the mutex, so a lock can never arrive unnoticed.
#[derive(Default)]
struct Handoff {
    state: Mutex<WaitState>,
    /// Signalled when the waiter thread ends, with or without a delivery.
    arrived: Notify,
}

#[derive(Default)]
struct WaitState {
    /// The coordinator wants the lock now.
    wanted: bool,
    /// A waiter thread exists (there is never more than one).
    waiting: bool,
    /// What the waiter delivered and the coordinator has not taken yet.
    delivered: Option<Result<Held, LockError>>,
    /// For the owner record.
    node_id: String,
    last_term: u64,
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, WaitState> {
        // A panic while holding this mutex leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FileLock {
    /// Stops wanting the lock (one that already arrived is released now, one that arrives later
    /// by the waiter itself), closes a held lock's file (which frees the flock), and parks a
    /// still-blocked waiter for the next `FileLock` on this path.
    fn drop(&mut self) {
        self.withdraw();
        self.held = None;
        if self.handoff.lock().waiting {
            parked().push((self.path.clone(), self.handoff.clone()));
        }
    }
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

/// Waiters of dropped `FileLock`s still blocked on their lock, by path, waiting to be adopted.
static PARKED: Mutex<Vec<(PathBuf, Arc<Handoff>)>> = Mutex::new(Vec::new());

fn parked() -> MutexGuard<'static, Vec<(PathBuf, Arc<Handoff>)>> {
    PARKED.lock().unwrap_or_else(|e| e.into_inner())
}

impl FileLock {
    pub fn new(folder: &Path, lock_id: &str, io_timeout: Duration) -> FileLock {
        let path = folder.join(lock_id);
        let handoff = {
            let mut table = parked();
            // Waiters that ended since they were parked are gone for good.
            table.retain(|(_, h)| h.lock().waiting);
            match table.iter().position(|(p, _)| *p == path) {
                Some(i) => table.swap_remove(i).1,
                None => Arc::default(),
            }
        };
        FileLock {
            path,
            io_timeout,
            held: None,
            handoff,
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

    /// Starts (or keeps) waiting for the lock; returns at once. The lock arrives through
    /// [`FileLock::acquired`].
    pub fn contend(&mut self, node_id: &str, last_term: u64) {
        if self.held.is_some() {
            return;
        }
        let mut st = self.handoff.lock();
        st.wanted = true;
        st.node_id = node_id.to_owned();
        st.last_term = last_term;
        if st.waiting || st.delivered.is_some() {
            return;
        }
        st.waiting = true;
        drop(st);
        let (path, handoff) = (self.path.clone(), self.handoff.clone());
        // The waiter logs in its coordinator's span.
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("lockgate-flock".to_owned())
            .spawn(move || span.in_scope(|| wait_for_lock(&path, &handoff)));
        if let Err(e) = spawned {
            let mut st = self.handoff.lock();
            st.waiting = false;
            st.delivered = Some(Err(LockError::Io {
                path: self.display(),
                source: e,
            }));
            drop(st);
            self.handoff.arrived.notify_one();
        }
    }

    /// Resolves when the lock has been taken (with the new term) or waiting for it failed.
    /// Pends forever unless [`FileLock::contend`] was called. Cancel-safe.
    pub async fn acquired(&mut self) -> Result<u64, LockError> {
        loop {
            let delivered = {
                let mut st = self.handoff.lock();
                let d = st.delivered.take();
                if d.is_some() {
                    st.wanted = false;
                }
                d
            };
            if let Some(result) = delivered {
                let held = result?;
                let term = held.term;
                self.held = Some(held);
                return Ok(term);
            }
            self.handoff.arrived.notified().await;
        }
    }

    /// Stops wanting the lock. A lock that already arrived is released now; one that arrives
    /// later is released by the waiter thread itself.
    pub fn withdraw(&mut self) {
        let arrived = {
            let mut st = self.handoff.lock();
            st.wanted = false;
            st.delivered.take()
        };
        // Dropping a delivered lock closes its file, which frees the flock.
        drop(arrived);
    }

    /// Whether a waiter thread exists (for tests of thread hygiene).
    pub fn waiting(&self) -> bool {
        self.handoff.lock().waiting
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

    /// Unlocks; only with the gate closed.
    pub async fn release(&mut self, _gate: &crate::gate::Closed) {
        let Some(held) = self.held.take() else {
            return;
        };
        let path = self.path.clone();
        // Unlock explicitly (a hung check may still hold a reference to the descriptor).
        let file = held.file;
        let unlock = self
            .blocking("release", move || {
                release_fcntl_lock(&file, &path)?;
                fs2::FileExt::unlock(&*file).map_err(io_err(&path))
            })
            .await;
        let path = self.display();
        if let Err(e) = unlock {
            tracing::warn!(
                file = %path,
                error = %e,
                "could not unlock the lock file; it is freed when the file closes"
            );
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

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))
}

/// The waiter thread: blocks in `flock` until the lock is ours, then delivers it if it is
/// still wanted, else releases it at once.
fn wait_for_lock(path: &Path, handoff: &Handoff) {
    let outcome = block_until_locked(path, handoff);
    let mut st = handoff.lock();
    st.waiting = false;
    match outcome {
        Ok(Some(held)) if st.wanted => st.delivered = Some(Ok(held)),
        // Not wanted any more: dropping it closes the file and frees the lock.
        Ok(Some(held)) => drop(held),
        Ok(None) => {}
        Err(e) if st.wanted => st.delivered = Some(Err(e)),
        Err(_) => {}
    }
    drop(st);
    handoff.arrived.notify_one();
}

/// Locks the file that the path names, waiting as long as it takes, and writes our owner
/// record. `Ok(None)`: the lock arrived when nobody wanted it (and was released).
fn block_until_locked(path: &Path, handoff: &Handoff) -> Result<Option<Held>, LockError> {
    let err = io_err(path);
    let mut said_standby = false;
    loop {
        let file = open(path)?;
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => {}
            Err(e) if is_contended(&e) => {
                if !said_standby {
                    tracing::info!(
                        file = %path.display(),
                        "lock is held elsewhere: standing by, waiting on the lock"
                    );
                    said_standby = true;
                }
                fs2::FileExt::lock_exclusive(&file).map_err(&err)?;
            }
            Err(e) => return Err(err(e)),
        }
        take_fcntl_lock(&file, path, &mut said_standby)?;
        let meta = file.metadata().map_err(&err)?;
        // The path may have been replaced while we waited: then we locked an orphan, which
        // excludes nobody. Drop it and wait on the file the path names now.
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
            _ => continue,
        }
        let (node_id, last_term, wanted) = {
            let st = handoff.lock();
            (st.node_id.clone(), st.last_term, st.wanted)
        };
        if !wanted {
            return Ok(None);
        }
        let previous = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| OwnerRecord::from_text(&t))
            .map_or(0, |r| r.term);
        let term = last_term.max(previous) + 1;
        let record = OwnerRecord::new(&node_id, term).to_text();
        file.set_len(0).map_err(&err)?;
        file.write_all_at(record.as_bytes(), 0).map_err(&err)?;
        file.sync_data().map_err(&err)?;
        return Ok(Some(Held {
            file: Arc::new(file),
            dev: meta.dev(),
            ino: meta.ino(),
            term,
        }));
    }
}

/// Takes the OFD `fcntl` write lock on the whole file, on the descriptor that holds the
/// flock, waiting as long as a foreign `fcntl` lock (a JVM's `FileChannel.lock`) holds it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn take_fcntl_lock(file: &File, path: &Path, said_standby: &mut bool) -> Result<(), LockError> {
    use nix::fcntl::FcntlArg;
    let whole = whole_file(libc::F_WRLCK);
    let err = io_err(path);
    match nix::fcntl::fcntl(file, FcntlArg::F_OFD_SETLK(&whole)) {
        Ok(_) => return Ok(()),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {}
        Err(e) => return Err(err(e.into())),
    }
    if !*said_standby {
        tracing::info!(
            file = %path.display(),
            "lock file is locked with fcntl by another process (a broker's own file lock?): \
             standing by, waiting on the lock"
        );
        *said_standby = true;
    }
    loop {
        match nix::fcntl::fcntl(file, FcntlArg::F_OFD_SETLKW(&whole)) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err(e.into())),
        }
    }
}

/// Gives back the OFD `fcntl` lock (closing the descriptor would too).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn release_fcntl_lock(file: &File, path: &Path) -> Result<(), LockError> {
    let unlock = whole_file(libc::F_UNLCK);
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&unlock))
        .map(drop)
        .map_err(|e| io_err(path)(e.into()))
}

/// A `struct flock` of type `l_type` over the whole file (`l_len` 0: to the end, as it grows).
/// OFD locks require `l_pid` 0.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn whole_file(l_type: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn take_fcntl_lock(_: &File, _: &Path, _: &mut bool) -> Result<(), LockError> {
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn release_fcntl_lock(_: &File, _: &Path) -> Result<(), LockError> {
    Ok(())
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

    async fn take(l: &mut FileLock, node: &str) -> u64 {
        l.contend(node, 0);
        arrives(l).await
    }

    /// The term of the lock once it arrives to a contending `l`.
    async fn arrives(l: &mut FileLock) -> u64 {
        tokio::time::timeout(Duration::from_secs(10), l.acquired())
            .await
            .unwrap()
            .unwrap()
    }

    fn closed() -> crate::gate::Closed {
        crate::gate::Closed::initially()
    }

    #[tokio::test]
    async fn the_standby_gets_the_lock_when_the_holder_releases() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(5);
        let [mut a, mut b] = [0, 1].map(|_| FileLock::new(dir.path(), "l", t));
        assert_eq!(take(&mut a, "a").await, 1);
        b.contend("b", 0);
        // b waits while a holds.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.acquired())
                .await
                .is_err()
        );
        a.check().await.unwrap();
        match observe(&dir.path().join("l")).unwrap() {
            Observed::Held(Some(r)) => assert_eq!((r.term, r.node_id.as_str()), (1, "a")),
            other => panic!("unexpected {other:?}"),
        }
        a.release(&closed()).await;
        // Terms grow across holders: b's follows a's record.
        assert_eq!(arrives(&mut b).await, 2);
    }

    #[tokio::test]
    async fn a_lock_arriving_after_withdraw_is_released_and_the_thread_reused() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(5);
        let [mut a, mut b] = [0, 1].map(|_| FileLock::new(dir.path(), "l", t));
        take(&mut a, "a").await;
        for _ in 0..20 {
            b.contend("b", 0);
            b.withdraw();
        }
        assert!(b.waiting(), "one waiter stays blocked");
        a.release(&closed()).await;
        // b's waiter gets the lock, finds nobody wants it, releases it and ends; then a can
        // take it again.
        assert_eq!(take(&mut a, "a").await, 2);
        a.release(&closed()).await;
        let mut c = FileLock::new(dir.path(), "l", t);
        assert_eq!(take(&mut c, "c").await, 3);
    }

    /// A standby's `FileLock` re-created many times (as a reload does) reuses one waiter
    /// thread; the lock still arrives to the last one, and a dropped one never takes it.
    #[tokio::test]
    async fn a_dropped_standby_hands_its_waiter_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(5);
        let mut a = FileLock::new(dir.path(), "l", t);
        take(&mut a, "a").await;
        let first = {
            let mut b = FileLock::new(dir.path(), "l", t);
            b.contend("b", 0);
            Arc::as_ptr(&b.handoff)
        };
        for _ in 0..50 {
            let mut b = FileLock::new(dir.path(), "l", t);
            assert_eq!(
                Arc::as_ptr(&b.handoff),
                first,
                "a second waiter was started"
            );
            b.contend("b", 0);
        }
        let mut b = FileLock::new(dir.path(), "l", t);
        b.contend("b", 0);
        a.release(&closed()).await;
        assert_eq!(arrives(&mut b).await, 2);
        // Dropping the holder frees the lock.
        drop(b);
        let mut c = FileLock::new(dir.path(), "l", t);
        assert_eq!(take(&mut c, "c").await, 3);
    }

    #[tokio::test]
    async fn replaced_or_removed_file_is_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FileLock::new(dir.path(), "l", Duration::from_secs(5));
        take(&mut a, "a").await;
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
        a.contend("a", 0);
        let r = tokio::time::timeout(Duration::from_secs(10), a.acquired())
            .await
            .unwrap();
        assert!(matches!(r, Err(LockError::FolderMissing(_))), "{r:?}");
        assert!(!a.waiting());
    }
}
