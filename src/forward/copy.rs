//! The portable path: read into a buffer, write it out.
//!
//! The buffer is allocated when the source becomes readable and freed as soon as the source
//! has nothing more to read, so an idle connection holds no buffer at all; it is not zeroed
//! (`try_read_buf` reads into spare capacity).

use std::io;

use tokio::net::TcpStream;

use super::{Direction, ForwardError, Moved, Side, readable, writable};
use crate::lease::Lease;

/// Size of the buffer of a direction while it is moving bytes.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// Copies one direction to its end, then shuts the destination's write side. `pending`
/// bytes (taken over from another path) are written first.
pub(super) async fn pump(d: &Direction<'_>, pending: Vec<u8>) -> Result<Moved, ForwardError> {
    let mut total = 0u64;
    // `buf` holds `buf.len()` bytes not yet written, or is empty; `None` while idle.
    let mut buf: Option<Vec<u8>> = (!pending.is_empty()).then_some(pending);
    loop {
        let b = match &mut buf {
            Some(b) if !b.is_empty() => b,
            _ => {
                readable(d.from)
                    .await
                    .map_err(ForwardError::io(d.from_side))?;
                let b = buf.get_or_insert_with(|| Vec::with_capacity(BUFFER_BYTES));
                b.clear();
                match d.from.try_read_buf(b) {
                    Ok(0) => {
                        d.end()?;
                        return Ok(Moved { total, spliced: 0 });
                    }
                    Ok(_) => {
                        d.read_some();
                        b
                    }
                    // Nothing more to read for now: give the buffer back while idle.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        buf = None;
                        continue;
                    }
                    Err(e) => return Err(ForwardError::io(d.from_side)(e)),
                }
            }
        };
        // Write all of it before reading again.
        write_out(d, b).await?;
        total += b.len() as u64;
        b.clear();
    }
}

/// Writes all of `bytes` to the direction's destination and counts them. The lease is checked
/// right before every write call, after each wait for room too: a holder frozen while its
/// destination was full writes nothing more when it wakes past its lease.
pub(super) async fn write_out(d: &Direction<'_>, bytes: &[u8]) -> Result<(), ForwardError> {
    let mut at = 0;
    while at < bytes.len() {
        if !d.lease.is_valid() {
            return Err(ForwardError::LeaseExpired);
        }
        match d.to.try_write(&bytes[at..]) {
            Ok(0) => {
                return Err(ForwardError::io(d.to_side)(io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => {
                at += n;
                d.counter.increment(n as u64);
                d.wrote_some();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                d.waiting_for_room(true);
                let room = writable(d.to).await;
                d.waiting_for_room(false);
                room.map_err(ForwardError::io(d.to_side))?
            }
            Err(e) => return Err(ForwardError::io(d.to_side)(e)),
        }
    }
    Ok(())
}

/// Writes every byte of `bytes`, waiting for room as needed, each write only while `lease`
/// is valid.
pub async fn write_all(
    to: &TcpStream,
    mut bytes: &[u8],
    lease: &Lease,
) -> Result<(), ForwardError> {
    while !bytes.is_empty() {
        if !lease.is_valid() {
            return Err(ForwardError::LeaseExpired);
        }
        match to.try_write(bytes) {
            Ok(0) => {
                return Err(ForwardError::io(Side::Upstream)(
                    io::ErrorKind::WriteZero.into(),
                ));
            }
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(to)
                .await
                .map_err(ForwardError::io(Side::Upstream))?,
            Err(e) => return Err(ForwardError::io(Side::Upstream)(e)),
        }
    }
    Ok(())
}
