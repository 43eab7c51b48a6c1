//! The config file as serde reads it: one `Raw*` struct per TOML table, every value kept with
//! its span so that validation can point at it. Required keys are `Option` here too: a missing
//! one is reported by validation, in its own words and at the table that lacks it.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    pub node_id: Option<Spanned<String>>,
    pub shutdown_grace_ms: Option<Spanned<u64>>,
    pub admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub lock_coordinator: Vec<Spanned<RawCoordinator>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
}

/// One flat table for every backend, so that a key of another backend gets a precise message
/// ("`locks-folder` belongs to type \"file\"") instead of serde's generic one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawCoordinator {
    pub name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub lock_id: Option<Spanned<String>>,
    pub check_period: Option<Spanned<u64>>,
    pub locks_folder: Option<Spanned<String>>,
    pub connect_string: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    pub session_ms: Option<Spanned<u64>>,
    pub session_percent: Option<Spanned<u32>>,
    pub connection_ms: Option<Spanned<u64>>,
    pub retries: Option<Spanned<u32>>,
    pub retries_ms: Option<Spanned<u64>>,
    pub health_check: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawHealth {
    pub address: Option<Spanned<String>>,
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    pub observe_connects: Option<bool>,
    pub fast_interval_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub forward_to: Option<Spanned<String>>,
    pub lock_coordinator: Option<Spanned<String>>,
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub half_close_timeout_ms: Option<Spanned<u64>>,
    pub client_timeout_ms: Option<Spanned<u64>>,
    pub server_timeout_ms: Option<Spanned<u64>>,
    pub tunnel_timeout_ms: Option<Spanned<u64>>,
    pub tcp_user_timeout_ms: Option<Spanned<u64>>,
    pub zero_copy: Option<Spanned<bool>>,
    pub proxy_protocol: Option<Spanned<String>>,
}
