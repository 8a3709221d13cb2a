//! The terminate-mode session state machine (to be written).
