//! The managed CrowdSec engine (agent + LAPI) that cerberus can run itself: its process
//! ([`supervisor`]) and its hub presets ([`hub`]).

pub mod hub;
pub mod managed;
pub mod pidfile;
pub mod supervisor;
