//! smtp-sidecar: a TLS sidecar for legacy mail servers.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the YAML schema of SPEC §3: raw serde structs, validation into [`config::Config`] |
//! | [`tls`] | certificate store, rustls server configuration |
//! | [`listener`] | accept loop, connection limits, one task per session |
//! | [`inbound`] | the terminate-mode driver: sockets in, `smtp_core::inbound::Session` actions out |
//! | [`backend`] | connecting to the legacy server(s), in order |
//! | [`metrics`], [`admin`] | Prometheus metrics and the `/metrics` `/healthz` `/readyz` endpoint |
//! | [`runtime`] | building and running everything from a validated configuration |
//! | [`demo`] | the self-contained trial of `smtp-sidecar demo` and its printing sink |
#![forbid(unsafe_code)]

pub mod config;
pub mod tls;
