//! The data path: moves bytes both ways between a downstream and an upstream socket.
//!
//! Contract (the zero-copy path must keep it too):
//! - every byte read from one side is written to the other before anything else happens;
//! - end of stream on one side becomes a write-shutdown (FIN) on the other, and the other
//!   direction keeps flowing, so a client that shuts its write side still gets the whole reply;
//! - once one direction has ended, the other may run for at most `half_close_timeout`;
//! - an error names the side that failed; the caller then resets both legs.
//!
//! `forward` knows nothing of locks: cancellation is the caller's `select!`.

use std::io;
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::lease::Lease;

/// Size of the buffer of each direction.
const BUFFER_BYTES: usize = 16 * 1024;

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

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub to_upstream: u64,
    pub to_downstream: u64,
}

/// Pre-built metric handles of one route, so the hot path does no label lookups.
#[derive(Clone)]
pub struct Counters {
    pub to_upstream: Counter,
    pub to_downstream: Counter,
}

/// Forwards until both directions have ended. See the module doc for the contract.
pub async fn forward(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    half_close_timeout: Duration,
    counters: &Counters,
    lease: &Lease,
) -> Result<Totals, ForwardError> {
    let (mut dr, mut dw) = downstream.split();
    let (mut ur, mut uw) = upstream.split();
    let up = pump(
        &mut dr,
        Side::Downstream,
        &mut uw,
        Side::Upstream,
        &counters.to_upstream,
        lease,
    );
    let down = pump(
        &mut ur,
        Side::Upstream,
        &mut dw,
        Side::Downstream,
        &counters.to_downstream,
        lease,
    );
    tokio::pin!(up, down);
    let mut totals = Totals::default();
    tokio::select! {
        r = &mut up => {
            totals.to_upstream = r?;
            totals.to_downstream = tokio::time::timeout(half_close_timeout, &mut down)
                .await
                .map_err(|_| ForwardError::HalfCloseTimeout(half_close_timeout))??;
        }
        r = &mut down => {
            totals.to_downstream = r?;
            totals.to_upstream = tokio::time::timeout(half_close_timeout, &mut up)
                .await
                .map_err(|_| ForwardError::HalfCloseTimeout(half_close_timeout))??;
        }
    }
    Ok(totals)
}

/// Copies one direction to its end, then shuts the writer's write side.
async fn pump<R, W>(
    reader: &mut R,
    from: Side,
    writer: &mut W,
    to: Side,
    counter: &Counter,
    lease: &Lease,
) -> Result<u64, ForwardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|source| ForwardError::Io { side: from, source })?;
        if n == 0 {
            writer
                .shutdown()
                .await
                .map_err(|source| ForwardError::Io { side: to, source })?;
            return Ok(total);
        }
        // A holder frozen past its lease forwards nothing when it wakes.
        if !lease.is_valid() {
            return Err(ForwardError::LeaseExpired);
        }
        writer
            .write_all(&buf[..n])
            .await
            .map_err(|source| ForwardError::Io { side: to, source })?;
        total += n as u64;
        counter.increment(n as u64);
    }
}
