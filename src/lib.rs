//! authgate: an edge authentication gateway on pingora.
//!
//! Layout (DESIGN.md): `config/` is the file schema and loader, `runtime`
//! the compiled config, `router` picks a route, `auth/` verifies
//! credentials, `identity` owns header hygiene, `denial` maps reasons to
//! responses, `gateway` is the pingora lifecycle, `admin` the admin
//! listener, `metrics` the contract's metrics, `server` wires it all up.

pub mod admin;
pub mod admin_client;
pub mod assertion;
pub mod auth;
pub mod config;
pub mod denial;
pub mod direct;
pub mod echo;
pub mod gateway;
pub mod head_guard;
pub mod identity;
pub mod log_format;
pub mod metrics;
pub mod ratelimit;
pub mod reload;
pub mod revocation;
pub mod router;
pub mod runtime;
pub mod server;
pub mod state;
pub mod store;
pub mod token;
pub mod watch;
