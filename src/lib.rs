//! lockgate: a lock-gated L4 proxy that gives any unmodified broker Artemis's lock coordinator.
//!
//! Crate map (dependencies run one way, but for `config` asking the ZooKeeper backend's
//! fencing arithmetic whether a session leaves any margin; only `app` knows everyone):
//! - [`config`]: raw TOML → validated [`config::Config`] (one validator per section), errors
//!   with file, line, key and table, the effective config and failover figures `check` prints.
//! - [`lock`]: lock backends behind one enum ([`lock::file`]: `flock` in a shared folder;
//!   [`lock::zookeeper`]: ephemeral-sequential nodes, fencing before the session can expire).
//! - [`lease`]: until when a holder may forward without confirming its lock again.
//! - [`health`]: the local broker's probe, with rise/fall.
//! - [`coordinator`]: a pure state machine ([`coordinator::Machine::next`]) and the task that
//!   drives it: contends while healthy, opens its gate only while it holds the lock, closes
//!   it before the lock can go elsewhere.
//! - [`gate`]: the [`gate::Gate`] trait and [`gate::Closed`], the proof a lock's `release`
//!   takes, so the lock cannot be given back while the gate is open.
//! - [`route`]: listeners; gated routes implement the `Gate`, open routes are always bound.
//! - [`forward`]: the data path (splice(2) through pooled pipes on Linux, a lazily buffered
//!   copy elsewhere, PROXY v2), half-close both ways; knows nothing of locks beyond checking
//!   the [`lease::Lease`] it is handed before every write.
//! - [`metrics`]: every metric name in one place. [`systemd`]: READY, STATUS, RELOADING,
//!   WATCHDOG, STOPPING.
//! - [`status`]: who holds each lock, for `lockgate status`.
//! - [`admin`]: the HTTP endpoint (metrics, readiness, status, step-down); its doc lists every
//!   endpoint; `admin/status.rs` the `GET /status` document.
//! - [`app`]: wiring, reloads and ordered shutdown.
//!
//! Every task runs in a `tracing` span that names what it serves (`lock`, `health`, `route`,
//! `conn`), so an event carries only its own fields. The binary's commands (`check`, `status`,
//! `step-down`, …) live in `src/cli/`, beside `main.rs`.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod config;
pub mod coordinator;
pub mod forward;
pub mod gate;
pub mod health;
pub mod lease;
pub mod lock;
pub mod metrics;
pub mod route;
pub mod status;
pub mod systemd;

pub use app::{run, run_with_reload};
