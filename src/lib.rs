//! cerberus: a CrowdSec remediation component (bouncer) for Caddy.
//!
//! # Layout
//! - [`config`]: the YAML config, `CERBERUS_<KEY>` overrides and `cerberus check`.
//! - [`decision`]: LAPI decisions parsed and normalised; remediation order.
//! - [`store`]: the snapshot that lookups read (no I/O), its writer, and the decider.
//! - [`lapi`]: the LAPI client (streaming parse) and the sync loop.
//! - [`persist`]: SQLite in `data_dir`: decisions, settings, local overrides.
//! - [`serve`]: the doors Caddy asks: the Unix socket (binary protocol of `bouncer-api`)
//!   and the HTTP endpoint for Caddy's `forward_auth`.
//! - [`control`]: unban, delete, local bans and "pull now", sent to the writer's owner.
//! - [`usage`]: usage metrics (requests processed and dropped) pushed to LAPI.
//! - [`admin`]: the admin HTTP API; [`cli`]: the commands that call it.
//! - [`engine`]: the managed CrowdSec engine: its process (run, watch, restart, stop) and
//!   hub presets (browse, install, remove).
//! - [`console`]: CrowdSec console enrollment (through the engine's cscli) and the
//!   heartbeat poller.
//! - [`app`]: wires the parts together under one shutdown signal; [`notify`]: its
//!   sd_notify messages to systemd (ready, status, watchdog, stopping).
//! - [`duration`], [`clock`], [`metrics`]: small shared pieces.

pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod decision;
pub mod duration;
pub mod engine;
pub mod lapi;
pub mod metrics;
pub mod notify;
pub mod persist;
pub mod serve;
pub mod store;
pub mod usage;
