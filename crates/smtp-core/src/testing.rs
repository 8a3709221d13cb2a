//! In-memory harness (to be written).
