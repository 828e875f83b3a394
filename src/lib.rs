//! cerberus: a CrowdSec remediation component (bouncer) for Caddy.
//!
//! # Layout
//! - [`config`]: the YAML config, `CERBERUS_<KEY>` overrides and `cerberus check`
//!   (`config/reader.rs` typed values, `config/build.rs` the keys and their checks).
//! - [`decision`]: LAPI decisions parsed and normalised; remediation order.
//! - [`store`]: the snapshot that lookups read (no I/O), its writer, and the decider.
//! - [`lapi`]: the LAPI client (streaming parse) and the sync loop.
//! - [`persist`]: SQLite in `data_dir`: decisions, settings, local overrides.
//! - [`serve`]: the doors Caddy asks: the Unix socket (binary protocol of `bouncer-api`),
//!   the HTTP endpoint for Caddy's `forward_auth`, and the snapshot segments the Caddy
//!   module maps (`serve::segments`, layout in `bouncer-api/SNAPSHOT.md`).
//! - [`control`]: unban, delete, local bans and "pull now", sent to the writer's owner.
//! - [`usage`]: the doors' usage counters (requests processed, and dropped by origin and
//!   remediation), a leaf held by the store's decider; `lapi::usage` pushes them to LAPI.
//! - [`ready`]: readiness, a leaf flag the sync loop sets on its first pull and the doors
//!   read. Data flows one way, LAPI -> store -> snapshot -> doors: [`store`] and
//!   [`serve`] import nothing from [`lapi`] (checked by `tests/layers.rs`).
//! - [`admin`]: the admin HTTP API; [`cli`]: the commands that call it.
//! - [`web`]: the web console on the admin listener at `/`; its pages call [`admin`]'s
//!   handlers.
//! - [`engine`]: the managed CrowdSec engine: its config file, its process (run, watch,
//!   restart, stop; credentials) and hub presets (browse, install, remove). It reads
//!   [`config`]; [`config`] imports nothing from it ([`app::load_config`] adds its checks).
//! - [`console`]: CrowdSec console enrollment (through the engine's cscli) and the
//!   heartbeat poller; [`outbound`]: why a call to the central API failed, with its fix
//!   (used by [`console`], [`admin`] and [`engine`]; [`cli`] shows what [`admin`] found).
//! - [`app`]: wires the parts together under one shutdown signal; [`notify`]: its
//!   sd_notify messages to systemd (ready, status, watchdog, stopping).
//! - [`geoip`]: countries of decisions from a MaxMind-format database.
//! - [`duration`], [`clock`], [`metrics`], [`escape`]: small shared pieces;
//!   [`secure_file`]: files written without following symlinks.

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
pub mod escape;
pub mod geoip;
pub mod lapi;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod persist;
pub mod ready;
pub mod secure_file;
pub mod serve;
pub mod store;
pub mod usage;
pub mod web;
