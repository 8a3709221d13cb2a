//! smtp-sidecar: a TLS sidecar for legacy mail servers.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the YAML schema of SPEC §3: raw serde structs, validation into [`config::Config`] |
//! | [`tls`] | certificate store, rustls server configuration |
//! | [`listener`] | accept loop, connection limits, PROXY header, one task per session |
//! | [`proxy`] | the PROXY protocol header: read exactly, parsed, the client's address |
//! | [`driver`] | the one driver loop: sockets of both legs in, a session's actions out; TLS handshakes and what is recorded of them; events into metrics and logs |
//! | [`inbound`] | the terminate-mode entry: implicit TLS, then an `smtp_core::inbound::Session` on the driver (under a handshake flood, one whose backend waits for TLS) |
//! | [`outbound`] | the originate-mode entry: an `smtp_core::outbound::Session` on the driver |
//! | [`io`] | socket reads into a per-thread scratch buffer, a leg's stream before/after TLS |
//! | [`backend`] | connecting to the legacy server(s), in order; their health checks, and each one's last EHLO reply |
//! | [`mx`] | originate mode's MX look-ups: next hops in preference order, null MX, DNS failures |
//! | [`log`] | the log on standard error, written by a thread of its own from a bounded queue: a reader that stalls costs lines (counted, and said), never the sessions |
//! | [`metrics`], [`admin`] | Prometheus metrics and the `/metrics` `/healthz` `/readyz` endpoint |
//! | [`status`] | the admin endpoint's status page (`/`, `/status.json`) from one registry snapshot |
//! | [`runtime`] | **build** (configuration, certificates, trust → one [`snapshot::Snapshot`] or every problem; used by `run`, `check` and reload) and **run** (bound sockets, metrics registry, health checks, reload, drain) |
//! | [`snapshot`] | the immutable values a build yields: per listener, what its sessions read once; its handshake slots, and whether it is under handshake pressure or a flood |
//! | [`shutdown`] | the drain stages every accept loop, session and health check follows |
//! | [`clock`] | the wall clock as Unix seconds |
//! | [`sink`] | a minimal SMTP server standing in for the legacy backend (`demo`, tests) |
//! | [`cli`] | the `run`, `check` and `demo` commands |
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod cli;
pub mod clock;
pub mod config;
pub mod driver;
pub mod inbound;
pub mod io;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod mx;
pub mod outbound;
pub mod proxy;
pub mod runtime;
pub mod shutdown;
pub mod sink;
pub mod snapshot;
pub mod status;
pub mod tls;
