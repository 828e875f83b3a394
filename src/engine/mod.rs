//! The managed CrowdSec engine (agent + LAPI) that cerberus can run itself.

pub mod supervisor;
