//! Where the process stands on its way out (DESIGN.md rule 6): one value on a watch channel
//! that every accept loop, session and health check follows.

/// Where shutdown stands; every session watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// Stop accepting; sessions finish their transaction, then get `421 4.3.2`.
    Draining,
    /// `shutdown_grace` is over: `421 4.3.2` to whatever is left.
    GraceOver,
}
