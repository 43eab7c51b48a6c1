//! The zero-copy path (Linux): splice(2) from the source socket into a pipe, then from the
//! pipe into the destination socket. The bytes stay in kernel pages; lockgate only moves
//! page references.
//!
//! Splice is for bulk: a burst starts by reading into a 16 KiB buffer and writing it out (small
//! messages cost less copied); a read that fills the buffer, or a splice of at least as much,
//! makes the next cycle a splice; a shorter splice, or the source running dry, goes back to
//! copying. Each cycle ends with everything written, so the two never reorder bytes.
//!
//! One splice cycle: fill the **empty** pipe from the source, then drain the pipe
//! **completely** into the destination, then start again. Because the pipe is empty on every
//! fill and non-empty on every drain, an `EAGAIN` always belongs to the socket (source empty,
//! or destination's send buffer full), never to the pipe, and it goes to tokio's readiness
//! (`try_io` clears it) like any socket `EAGAIN`.
//!
//! Pipes are taken when bytes arrive and given back to a small process-wide pool when the
//! source has nothing more to read (the pipe is empty then), so an idle connection holds no
//! pipe, and a busy one does not pay pipe2/fcntl/close per burst. Each pipe is asked for
//! [`PIPE_BYTES`]; the kernel may give less (an unprivileged user past
//! `fs.pipe-user-pages-soft`, or a size above `fs.pipe-max-size`), so the real size is read
//! back and used; a pipe below [`MIN_PIPE_BYTES`] is not used: that direction copies.
//!
//! A splice into a socket whose peer has gone raises SIGPIPE, as `send` without
//! `MSG_NOSIGNAL` would; Rust programs ignore SIGPIPE from start-up, so it arrives as `EPIPE`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with};
use tokio::io::Interest;

use super::copy::write_out;
use super::{Direction, ForwardError, Moved, Outcome, readable, writable};

/// The capacity asked of each pipe: the largest an unprivileged process may set by default
/// (`fs.pipe-max-size`). The kernel's default is 64 KiB; on a 2-core loopback benchmark 1 MiB
/// moved a single stream about 1.5 times as fast for half the CPU per byte.
pub const PIPE_BYTES: usize = 1024 * 1024;
/// A read of at least this many bytes means bulk: the next cycle splices. Smaller bursts are
/// copied through a buffer of this size, which costs less than splicing them (the kernel
/// would copy a small packet's bytes into a page for the pipe anyway).
pub const BULK_BYTES: usize = 16 * 1024;
/// A pipe smaller than this (the kernel's default size) is not worth splicing through.
pub const MIN_PIPE_BYTES: usize = 64 * 1024;
/// Empty pipes kept for reuse; more are closed when given back.
pub const POOL_PIPES: usize = 64;

const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

/// A pipe of known capacity, empty whenever it is not held by a direction.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Refused past the pipe budget: the pipe keeps the size it was born with.
        let _ = fcntl_setpipe_size(&write, PIPE_BYTES);
        let size = fcntl_getpipe_size(&write)?;
        if size < MIN_PIPE_BYTES {
            // Past `fs.pipe-user-pages-soft` new pipes get two pages: copying is faster.
            return Err(io::Error::other(format!(
                "pipe budget exhausted: the kernel granted a {size} B pipe"
            )));
        }
        Ok(Pipe { read, write, size })
    }

    /// The capacity the kernel granted.
    pub fn size(&self) -> usize {
        self.size
    }
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// An empty pipe: from the pool, or a new one.
pub fn take_pipe() -> io::Result<Pipe> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    match pooled {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

/// Gives back an empty pipe.
fn give_back(pipe: Pipe) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_PIPES {
        pool.push(pipe);
    }
}

/// Moves one direction to its end, or until splice turns out unusable: bulk by splice, small
/// bursts by copy.
pub(super) async fn pump(d: &Direction<'_>) -> Result<Outcome, ForwardError> {
    let mut moved = Moved::default();
    let mut held: Option<Pipe> = None;
    let mut buf: Option<Vec<u8>> = None;
    // Whether the next cycle splices: after a read of at least BULK_BYTES.
    let mut bulk = false;
    loop {
        readable(d.from)
            .await
            .map_err(ForwardError::io(d.from_side))?;
        if !bulk {
            let b = buf.get_or_insert_with(|| Vec::with_capacity(BULK_BYTES));
            b.clear();
            match d.from.try_read_buf(b) {
                Ok(0) => {
                    if let Some(p) = held.take() {
                        give_back(p);
                    }
                    d.end()?;
                    return Ok(Outcome::Done(moved));
                }
                Ok(n) => {
                    d.read_some();
                    bulk = n >= BULK_BYTES;
                    write_out(d, b).await?;
                    moved.total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing more to read for now: buffer and pipe go back while we wait.
                    buf = None;
                    if let Some(p) = held.take() {
                        give_back(p);
                    }
                }
                Err(e) => return Err(ForwardError::io(d.from_side)(e)),
            }
            continue;
        }
        // Fill: the pipe is empty here.
        let pipe = match held.take() {
            Some(p) => p,
            None => match take_pipe() {
                Ok(p) => p,
                // Out of descriptors or of pipe budget: copy instead, from here on.
                Err(_) => {
                    return Ok(Outcome::Unsupported {
                        moved,
                        pending: Vec::new(),
                    });
                }
            },
        };
        let filled = d.from.try_io(Interest::READABLE, || {
            rustix::pipe::splice(d.from, None, &pipe.write, None, pipe.size, FLAGS)
                .map_err(io::Error::from)
        });
        let n = match filled {
            Ok(0) => {
                give_back(pipe);
                d.end()?;
                return Ok(Outcome::Done(moved));
            }
            Ok(n) => {
                d.read_some();
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing more to read for now: the pipe goes back while we wait, and the next
                // burst starts small.
                give_back(pipe);
                buf = None;
                bulk = false;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && moved.spliced == 0 => {
                give_back(pipe);
                return Ok(Outcome::Unsupported {
                    moved,
                    pending: Vec::new(),
                });
            }
            Err(e) => return Err(ForwardError::io(d.from_side)(e)),
        };
        bulk = n >= BULK_BYTES;
        // Drain: the pipe holds `left` bytes; all of them go out before the next fill, each
        // splice only while the lease holds (checked after every wait for room: a holder
        // frozen while its destination was full moves nothing more when it wakes).
        let mut left = n;
        while left > 0 {
            d.waiting_for_room(true);
            let room = writable(d.to).await;
            d.waiting_for_room(false);
            room.map_err(ForwardError::io(d.to_side))?;
            if !d.lease.is_valid() {
                // Not pooled again: it still holds the bytes.
                drop(pipe);
                return Err(ForwardError::LeaseExpired);
            }
            let drained = d.to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&pipe.read, None, d.to, None, left, FLAGS)
                    .map_err(io::Error::from)
            });
            match drained {
                Ok(0) => return Err(ForwardError::io(d.to_side)(io::ErrorKind::WriteZero.into())),
                Ok(m) => {
                    left -= m;
                    moved.total += m as u64;
                    moved.spliced += m as u64;
                    d.counter.increment(m as u64);
                    d.wrote_some();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && moved.spliced == 0 => {
                    // The destination takes no splice: hand the pipe's bytes to the copy path.
                    let pending =
                        empty_into_vec(&pipe, left).map_err(ForwardError::io(d.from_side))?;
                    return Ok(Outcome::Unsupported { moved, pending });
                }
                // A pipe that still holds bytes is dropped, never pooled.
                Err(e) => return Err(ForwardError::io(d.to_side)(e)),
            }
        }
        held = Some(pipe);
    }
}

/// Reads `len` bytes out of a pipe that holds exactly that many.
fn empty_into_vec(pipe: &Pipe, len: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut at = 0;
    while at < len {
        match rustix::io::read(&pipe.read, &mut out[at..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => at += n,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_report_their_real_size_and_are_reused() {
        let p = take_pipe().unwrap();
        assert!(p.size() >= 4096, "{}", p.size());
        let fd = std::os::fd::AsRawFd::as_raw_fd(&p.read);
        give_back(p);
        let again = take_pipe().unwrap();
        // Another test may have taken it in between; when it is ours, it is the same pipe.
        if std::os::fd::AsRawFd::as_raw_fd(&again.read) == fd {
            assert!(again.size() >= 4096);
        }
        give_back(again);
    }
}
