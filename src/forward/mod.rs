//! The data path: moves bytes both ways between a downstream and an upstream socket.
//!
//! Contract (both paths keep it):
//! - every byte read from one side is written to the other before anything else happens;
//! - end of stream on one side becomes a write-shutdown (FIN) on the other, and the other
//!   direction keeps flowing, so a client that shuts its write side still gets the whole reply
//!   (when both have ended, the second FIN is the caller's close of both sockets);
//! - once one direction has ended, the other may run for at most `half_close_timeout`;
//! - a leg on which nothing moved (no byte read from it, none written to it) for its
//!   inactivity timeout ends the connection (HAProxy's `timeout client` and `timeout server`);
//!   with a tunnel timeout, only a connection on which nothing moved either way for that long
//!   (`timeout tunnel`);
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
//! The inactivity timeouts are in `idle.rs`.
//!
//! `forward` knows nothing of locks: cancellation is the caller's `select!`.

pub mod copy;
mod idle;
pub mod proxy_protocol;
#[cfg(target_os = "linux")]
pub mod splice;

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::Counter;
use tokio::net::TcpStream;

use crate::lease::Lease;
pub use idle::{Idle, Inactivity};
use idle::{Shared, inactive};
#[cfg(target_os = "linux")]
use tokio_util::either::Either;

/// Which leg failed. Also the `side` word in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

impl Side {
    /// The `side` label of `lockgate_forward_errors_total`: "client" or "upstream".
    pub fn label(self) -> &'static str {
        match self {
            Side::Downstream => "client",
            Side::Upstream => "upstream",
        }
    }
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
    #[error("nothing moved on the {which} for {after:?}")]
    Inactive { which: Inactivity, after: Duration },
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
    /// When an idle connection is closed.
    pub idle: Idle,
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
    /// `one_ended` is set by whichever direction ends first; the activity stamps after
    /// every read and write.
    shared: &'a Shared,
}

impl Direction<'_> {
    /// Bytes came from the source.
    fn read_some(&self) {
        self.shared.mark(self.from_side);
    }

    /// Bytes went to the destination.
    fn wrote_some(&self) {
        self.shared.mark(self.to_side);
    }

    /// The direction starts or stops waiting for room on its destination. Meanwhile its source
    /// leg is excused from its inactivity timeout (it is not expected to move), and it counts
    /// as moving when the wait ends. (Not an async fn around the wait: that would grow every
    /// connection's future.)
    fn waiting_for_room(&self, waiting: bool) {
        let flag = match self.to_side {
            Side::Upstream => &self.shared.waiting_on_server,
            Side::Downstream => &self.shared.waiting_on_client,
        };
        flag.store(waiting, Ordering::Relaxed);
        if !waiting {
            self.shared.mark(self.from_side);
        }
    }

    /// The source ended: shut the destination's write side (a FIN), unless the other
    /// direction has ended too. Then the caller closes both sockets at once, which sends
    /// that FIN anyway (both receive queues are drained), and the system call is saved.
    fn end(&self) -> Result<(), ForwardError> {
        if self.shared.one_ended.swap(true, Ordering::AcqRel) {
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
    let shared = Shared::new();
    let up = Direction {
        from: downstream,
        from_side: Side::Downstream,
        to: upstream,
        to_side: Side::Upstream,
        counter: &counters.to_upstream,
        lease,
        shared: &shared,
    };
    let down = Direction {
        from: upstream,
        from_side: Side::Upstream,
        to: downstream,
        to_side: Side::Downstream,
        counter: &counters.to_downstream,
        lease,
        shared: &shared,
    };
    let up = pump(&up, settings.zero_copy);
    let down = pump(&down, settings.zero_copy);
    let mut idle = Box::pin(inactive(&shared, settings.idle));
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
                e = &mut idle => return Err(e),
            }
        }
        r = &mut down => {
            let d = r?;
            tokio::select! {
                u = &mut up => (u?, d),
                e = late() => return Err(e),
                e = &mut idle => return Err(e),
            }
        }
        e = &mut idle => return Err(e),
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

    const LONG_IDLE: Idle = Idle::Legs {
        client_ms: 3_600_000,
        server_ms: 3_600_000,
    };

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
            idle: LONG_IDLE,
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
            idle: LONG_IDLE,
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

    /// A leg on which nothing moves ends the connection after its own timeout; traffic on a
    /// leg (a heartbeat) keeps it; a tunnel timeout counts both legs together.
    #[tokio::test]
    async fn idle_legs_end_the_connection_and_heartbeats_keep_it() {
        for zero_copy in [false, true] {
            // The client pings every 20 ms and the server reads them: both legs move (the
            // client's is read, the server's written), so neither times out until silence.
            let (mut client, proxy_down) = pair().await;
            let (proxy_up, mut server) = pair().await;
            let settings = Settings {
                half_close_timeout: Duration::from_secs(30),
                zero_copy,
                idle: Idle::Legs {
                    client_ms: 150,
                    server_ms: 150,
                },
            };
            let c = counters();
            let started = std::time::Instant::now();
            let lease = Lease::unlimited();
            let fwd = forward(&proxy_down, &proxy_up, settings, &c, &lease);
            let pings = async {
                let mut buf = [0u8; 64];
                for _ in 0..25 {
                    client.write_all(b"ping").await.unwrap();
                    let _ = server.read(&mut buf).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Then silence: the connection must end within the timeout.
                std::future::pending::<()>().await;
            };
            let r = tokio::select! {
                r = fwd => r,
                _ = pings => unreachable!(),
            };
            let took = started.elapsed();
            assert!(
                matches!(
                    r,
                    Err(ForwardError::Inactive {
                        which: Inactivity::Client,
                        ..
                    })
                ),
                "{r:?}"
            );
            // 25 pings of 20 ms kept it (500 ms > the 150 ms timeout), silence ended it.
            assert!(took >= Duration::from_millis(500), "{took:?}");
            assert!(took < Duration::from_millis(1500), "{took:?}");
        }
        // The same pings under a tunnel timeout: any movement counts.
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, _server) = pair().await;
        let settings = Settings {
            half_close_timeout: Duration::from_secs(30),
            zero_copy: false,
            idle: Idle::Tunnel { ms: 100 },
        };
        let c = counters();
        client.write_all(b"x").await.unwrap();
        let r = forward(&proxy_down, &proxy_up, settings, &c, &Lease::unlimited()).await;
        assert!(
            matches!(
                r,
                Err(ForwardError::Inactive {
                    which: Inactivity::Tunnel,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    /// A server that stops reading is blamed, not the client whose bytes wait for it.
    #[tokio::test]
    async fn a_server_that_does_not_read_is_blamed() {
        for zero_copy in [false, true] {
            let (mut client, proxy_down) = pair().await;
            let (proxy_up, _server) = pair().await;
            socket2::SockRef::from(&proxy_up)
                .set_send_buffer_size(16 * 1024)
                .unwrap();
            let settings = Settings {
                half_close_timeout: Duration::from_secs(30),
                zero_copy,
                idle: Idle::Legs {
                    client_ms: 100,
                    server_ms: 300,
                },
            };
            let c = counters();
            let lease = Lease::unlimited();
            let fwd = forward(&proxy_down, &proxy_up, settings, &c, &lease);
            let flood = async {
                let chunk = vec![1u8; 1 << 16];
                loop {
                    if client.write_all(&chunk).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            let r = tokio::select! {
                r = fwd => r,
                _ = flood => unreachable!(),
            };
            // The client's timeout is the shorter one, yet the server is blamed.
            assert!(
                matches!(
                    r,
                    Err(ForwardError::Inactive {
                        which: Inactivity::Server,
                        ..
                    })
                ),
                "{r:?}"
            );
        }
    }

    #[tokio::test]
    async fn half_close_is_bounded() {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, _server) = pair().await;
        let settings = Settings {
            half_close_timeout: Duration::from_millis(50),
            zero_copy: true,
            idle: LONG_IDLE,
        };
        client.shutdown().await.unwrap();
        // The server never closes its side: the connection must not linger.
        let c = counters();
        let r = forward(&proxy_down, &proxy_up, settings, &c, &Lease::unlimited()).await;
        assert!(matches!(r, Err(ForwardError::HalfCloseTimeout(_))), "{r:?}");
    }
}
