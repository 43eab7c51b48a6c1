//! The data path: moves bytes both ways between a downstream and an upstream socket.
//!
//! Contract (both paths keep it):
//! - every byte read from one side is written to the other before anything else happens;
//! - end of stream on one side becomes a write-shutdown (FIN) on the other, and the other
//!   direction keeps flowing, so a client that shuts its write side still gets the whole reply
//!   (when both have ended, the second FIN is the caller's close of both sockets);
//! - once one direction has ended, the other may run for at most `half_close_timeout`;
//! - an error names the side that failed; the caller then resets both legs;
//! - an idle direction holds no buffer and no pipe: they are taken when bytes arrive and given
//!   back when the source has nothing more to read.
//!
//! Two paths move the bytes of one direction, chosen by [`forward`]:
//! - [`splice`] (Linux, the default): bulk by splice(2) from the source socket into a pipe,
//!   then from the pipe into the destination socket, so the bytes never enter user space;
//!   small bursts are copied through a 16 KiB buffer, which costs less for them.
//! - [`copy`] (portable): read into a buffer, write it out. Used off Linux, when a route sets
//!   `zero-copy = false`, and when splice reports `EINVAL` before any byte moved (a socket
//!   type or kernel without splice support), or no pipe can be made.
//!
//! `forward` knows nothing of locks: cancellation is the caller's `select!`.

pub mod copy;
pub mod proxy_protocol;
#[cfg(target_os = "linux")]
pub mod splice;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::net::TcpStream;

use crate::lease::Lease;
#[cfg(target_os = "linux")]
use tokio_util::either::Either;

/// Which leg failed. Also the `side` word in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{side} failed: {source}")]
    Io {
        side: Side,
        #[source]
        source: io::Error,
    },
    #[error("connection stayed half-closed for longer than {0:?}")]
    HalfCloseTimeout(Duration),
    #[error("the lease to forward ran out (lock not confirmed in time)")]
    LeaseExpired,
}

impl ForwardError {
    fn io(side: Side) -> impl FnOnce(io::Error) -> ForwardError {
        move |source| ForwardError::Io { side, source }
    }
}

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub to_upstream: u64,
    pub to_downstream: u64,
    /// Of those, the bytes moved by splice (both directions).
    pub spliced: u64,
}

/// Pre-built metric handles of one route, so the hot path does no label lookups.
#[derive(Clone)]
pub struct Counters {
    pub to_upstream: Counter,
    pub to_downstream: Counter,
}

/// How one connection is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long one direction may still flow after the other ended.
    pub half_close_timeout: Duration,
    /// Use splice(2) where the platform has it; `false` forces the copy path.
    pub zero_copy: bool,
}

/// How a direction ended on the path that started it.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
enum Outcome {
    /// The source ended and the destination's write side is shut.
    Done(Moved),
    /// Splice cannot serve these sockets; the copy path takes over from here. `pending` are
    /// bytes already taken from the source and not yet written.
    Unsupported { moved: Moved, pending: Vec<u8> },
}

/// One direction's end: bytes moved, and how many of them by splice.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    total: u64,
    spliced: u64,
}

/// The two ends of one direction.
struct Direction<'a> {
    from: &'a TcpStream,
    from_side: Side,
    to: &'a TcpStream,
    to_side: Side,
    counter: &'a Counter,
    /// Bytes go out only while this is valid: a holder frozen past its lease forwards
    /// nothing when it wakes.
    lease: &'a Lease,
    /// Set by whichever direction ends first.
    one_ended: &'a AtomicBool,
}

impl Direction<'_> {
    /// The source ended: shut the destination's write side (a FIN), unless the other
    /// direction has ended too. Then the caller closes both sockets at once, which sends
    /// that FIN anyway (both receive queues are drained), and the system call is saved.
    fn end(&self) -> Result<(), ForwardError> {
        if self.one_ended.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        shutdown_write(self.to).map_err(ForwardError::io(self.to_side))
    }
}

/// Forwards until both directions have ended. See the module doc for the contract.
pub async fn forward(
    downstream: &TcpStream,
    upstream: &TcpStream,
    settings: Settings,
    counters: &Counters,
    lease: &Lease,
) -> Result<Totals, ForwardError> {
    let one_ended = AtomicBool::new(false);
    let up = Direction {
        from: downstream,
        from_side: Side::Downstream,
        to: upstream,
        to_side: Side::Upstream,
        counter: &counters.to_upstream,
        lease,
        one_ended: &one_ended,
    };
    let down = Direction {
        from: upstream,
        from_side: Side::Upstream,
        to: downstream,
        to_side: Side::Downstream,
        counter: &counters.to_downstream,
        lease,
        one_ended: &one_ended,
    };
    let up = pump(&up, settings.zero_copy);
    let down = pump(&down, settings.zero_copy);
    tokio::pin!(up, down);
    let timeout = settings.half_close_timeout;
    // The timer exists only once a direction has ended (boxed: an open connection does not
    // carry its size).
    let late = || async move {
        Box::pin(tokio::time::sleep(timeout)).await;
        ForwardError::HalfCloseTimeout(timeout)
    };
    let (to_upstream, to_downstream) = tokio::select! {
        r = &mut up => {
            let u = r?;
            tokio::select! {
                d = &mut down => (u, d?),
                e = late() => return Err(e),
            }
        }
        r = &mut down => {
            let d = r?;
            tokio::select! {
                u = &mut up => (u?, d),
                e = late() => return Err(e),
            }
        }
    };
    Ok(Totals {
        to_upstream: to_upstream.total,
        to_downstream: to_downstream.total,
        spliced: to_upstream.spliced + to_downstream.spliced,
    })
}

/// Moves one direction to its end, then shuts the destination's write side: by splice when
/// asked and possible, else (or from where splice gave up) by copy.
async fn pump(d: &Direction<'_>, zero_copy: bool) -> Result<Moved, ForwardError> {
    // One of the two futures lives in the connection's future, never both (an `Either`
    // overlaps them); the copy that takes over from splice is boxed, as it is rare.
    #[cfg(target_os = "linux")]
    let path = if zero_copy {
        Either::Left(splice::pump(d))
    } else {
        Either::Right(async move { copy::pump(d, Vec::new()).await.map(Outcome::Done) })
    };
    #[cfg(not(target_os = "linux"))]
    let path = {
        let _ = zero_copy;
        async move { copy::pump(d, Vec::new()).await.map(Outcome::Done) }
    };
    match path.await? {
        Outcome::Done(moved) => Ok(moved),
        Outcome::Unsupported { moved, pending } => {
            let rest = Box::pin(copy::pump(d, pending)).await?;
            Ok(Moved {
                total: moved.total + rest.total,
                spliced: moved.spliced,
            })
        }
    }
}

/// Waits until `s` is readable. Each socket has one reader and one writer (the two directions
/// of one connection), so the stream's own waker slots serve: no waiter node lives in the
/// connection's future, which keeps an idle connection small.
async fn readable(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_read_ready(cx)).await
}

/// Waits until `s` is writable; see [`readable`].
async fn writable(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_write_ready(cx)).await
}

/// Shuts the write side of `to` (a FIN): the end of one direction.
fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
        // The peer is already gone: the other direction will report it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn counters() -> Counters {
        Counters {
            to_upstream: Counter::noop(),
            to_downstream: Counter::noop(),
        }
    }

    /// client <-> (proxy_down | forward | proxy_up) <-> server, both ways with half-close.
    async fn both_ways(zero_copy: bool) -> Totals {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, mut server) = pair().await;
        let settings = Settings {
            half_close_timeout: Duration::from_secs(30),
            zero_copy,
        };
        let fwd = tokio::spawn(async move {
            let c = counters();
            forward(&proxy_down, &proxy_up, settings, &c, &Lease::unlimited()).await
        });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (u2, d2) = (up.clone(), down.clone());
        let c = tokio::spawn(async move {
            client.write_all(&u2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let s = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            // The reply goes out after the client's FIN arrived: half-close.
            server.write_all(&d2).await.unwrap();
            server.shutdown().await.unwrap();
            got
        });
        assert!(s.await.unwrap() == up);
        assert!(c.await.unwrap() == down);
        let t = fwd.await.unwrap().unwrap();
        assert_eq!((t.to_upstream, t.to_downstream), (300_000, 200_000));
        t
    }

    #[tokio::test]
    async fn copy_path_both_ways() {
        assert_eq!(both_ways(false).await.spliced, 0);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn splice_path_both_ways() {
        // Bulk goes by splice (the first 16 KiB of a burst may be copied).
        let spliced = both_ways(true).await.spliced;
        assert!(spliced >= 250_000, "{spliced}");
    }

    /// A direction blocked mid-write (the destination does not read) whose lease runs out
    /// writes nothing more when room appears: the lease is checked before every write call,
    /// not once per buffer or pipe.
    async fn nothing_written_after_the_lease_ends(zero_copy: bool) {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, mut server) = pair().await;
        // Small buffers toward the server: the forwarder blocks a few KiB into its first bulk
        // cycle (a pipe of up to 1 MiB on the splice path, a 64 KiB buffer on the copy path).
        socket2::SockRef::from(&proxy_up)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        socket2::SockRef::from(&server)
            .set_recv_buffer_size(16 * 1024)
            .unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let c = Counters {
            to_upstream: Counter::from_arc(written.clone()),
            to_downstream: Counter::noop(),
        };
        let settings = Settings {
            half_close_timeout: Duration::from_secs(30),
            zero_copy,
        };
        let lease = Lease::revoked();
        lease.set_for(crate::lease::now_ns(), Duration::from_secs(3600));
        let l2 = lease.clone();
        let fwd =
            tokio::spawn(async move { forward(&proxy_down, &proxy_up, settings, &c, &l2).await });
        // The client offers far more than the socket buffers hold; the server reads nothing.
        let sender = tokio::spawn(async move {
            let chunk = vec![7u8; 1 << 20];
            for _ in 0..64 {
                if client.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        // Wait until the forwarder is stuck waiting for room (its count stops moving while
        // the client still has bytes to give). One thread: nothing runs between our checks.
        let mut last = 0;
        let mut still = 0;
        for _ in 0..1_000_000 {
            tokio::task::yield_now().await;
            let now = written.load(Ordering::Relaxed);
            if now > 0 && now == last {
                still += 1;
                if still >= 500 {
                    break;
                }
            } else {
                still = 0;
            }
            last = now;
        }
        assert!(still >= 500 && last > 0, "the forwarder never blocked");
        lease.revoke();
        let at_revoke = written.load(Ordering::Relaxed);
        // Room appears: the server reads everything it will ever get.
        let mut got = Vec::new();
        let _ = server.read_to_end(&mut got).await;
        let r = fwd.await.unwrap();
        sender.abort();
        assert!(matches!(r, Err(ForwardError::LeaseExpired)), "{r:?}");
        let after = written.load(Ordering::Relaxed);
        assert_eq!(after, at_revoke, "bytes written after the lease ended");
        assert_eq!(got.len() as u64, at_revoke);
    }

    #[tokio::test]
    async fn copy_path_writes_nothing_after_the_lease_ends() {
        nothing_written_after_the_lease_ends(false).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn splice_path_writes_nothing_after_the_lease_ends() {
        nothing_written_after_the_lease_ends(true).await;
    }

    #[tokio::test]
    async fn half_close_is_bounded() {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, _server) = pair().await;
        let settings = Settings {
            half_close_timeout: Duration::from_millis(50),
            zero_copy: true,
        };
        client.shutdown().await.unwrap();
        // The server never closes its side: the connection must not linger.
        let c = counters();
        let r = forward(&proxy_down, &proxy_up, settings, &c, &Lease::unlimited()).await;
        assert!(matches!(r, Err(ForwardError::HalfCloseTimeout(_))), "{r:?}");
    }
}
