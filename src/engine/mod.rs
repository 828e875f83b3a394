//! The managed CrowdSec engine (agent + LAPI) that cerberus can run itself: its config
//! file ([`config`]), its process ([`supervisor`]) and its hub presets ([`hub`]).

pub mod appsec;
pub mod config;
pub mod hub;
pub mod managed;
pub mod pidfile;
pub mod supervisor;
