//! authgate: an edge authentication gateway on pingora.
//!
//! The layers, top to bottom (docs/architecture.md has the diagram; a
//! module imports only from layers below it, which tests/layers.rs
//! checks): `cli` and `server` wire everything; `admin` and `watch` are
//! the admin listener and background tasks; `proxy/` holds the transports
//! (listener, direct, general, respond); `pipeline/` is the request
//! lifecycle (read `pipeline/mod.rs` first); `reload` and `state` are the
//! live config and shared services; `config/` turns the file into the
//! `runtime` snapshot; `upstream` is balancing, health and pools; `auth/`
//! and `store/` are credential checks and shared state; the rest are
//! leaves (identity and header rules, routing, denials, rate-limit maths,
//! metrics, logs).
//!
//! Every module is crate-private; `cli` is what the binary runs and
//! `testing` what the tests, benches and fuzz targets use.

pub(crate) mod admin;
pub(crate) mod admin_client;
pub(crate) mod assertion;
pub(crate) mod auth;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod denial;
pub(crate) mod echo;
pub(crate) mod identity;
pub(crate) mod log_format;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub(crate) mod proxy;
pub(crate) mod ratelimit;
pub(crate) mod reload;
pub(crate) mod revocation;
pub(crate) mod router;
pub(crate) mod runtime;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod store;
pub(crate) mod streams;
pub mod testing;
pub(crate) mod token;
pub(crate) mod upstream;
pub(crate) mod watch;
