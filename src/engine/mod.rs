//! The managed CrowdSec engine: its hub presets.

pub mod hub;
