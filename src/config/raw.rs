//! Serde structs exactly as SPEC §3 (to be written).
