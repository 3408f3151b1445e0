//! Wiring: the pingora server with the proxy service and the admin
//! listener, built from a loaded runtime.

use crate::admin::AdminApp;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::proxy::direct::Direct;
use crate::proxy::general::General;
use crate::proxy::listener::HeadGuard;
use crate::runtime::Runtime;
use crate::state::State;
use crate::watch::{
    JwksRefresher, RevocationWatcher, SessionWatcher, SighupReloader, StreamSweeper,
};
use pingora::apps::HttpServerOptions;
use pingora::connectors::TransportConnector;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr} ({which}): {error}")]
    Listen {
        addr: String,
        which: &'static str,
        error: std::io::Error,
    },
}

/// Fails when a listen address cannot be bound (taken by another process,
/// not a local address, no permission). pingora would log the error and
/// keep retrying the bind while the other process answers on the port; an
/// operator expects the start to fail, as nginx and Envoy do.
fn check_listen(addr: &str, which: &'static str) -> Result<(), StartError> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|error| StartError::Listen {
            addr: addr.to_string(),
            which,
            error,
        })
}

/// How long an HTTP/2 connection may sit with no open stream before it is
/// closed (as the HTTP/1 keep-alive idle time).
const H2_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Most concurrent streams a client may open on one HTTP/2 connection
/// (pingora's and h2o's default; nginx has 128): enough for a browser or a
/// gRPC channel, small enough that one connection cannot take the
/// gateway's whole capacity.
const H2_MAX_STREAMS: u32 = 100;

/// The HTTP/2 server settings: the header block capped at
/// `max_header_bytes` (the HTTP/1 head limit, decoded), at most
/// [`H2_MAX_STREAMS`] open streams, and h2's guards against rapid reset
/// (CVE-2023-44487: at most 20 streams reset before the gateway accepted
/// them, then the connection is closed with ENHANCE_YOUR_CALM).
fn h2_options(settings: &crate::runtime::ServerSettings) -> H2Options {
    let mut o = default_h2_options();
    o.max_header_list_size(u32::try_from(settings.head.max_bytes).unwrap_or(u32::MAX));
    o.max_concurrent_streams(H2_MAX_STREAMS);
    o.max_pending_accept_reset_streams(20);
    o.max_local_error_reset_streams(Some(1024));
    o
}

/// Runs the gateway until a signal stops it (SIGTERM drains in-flight
/// requests for the grace period; SIGINT stops at once).
pub fn run(runtime: Runtime, config_path: String) -> Result<(), StartError> {
    let settings = runtime.server.clone();
    check_listen(&settings.listen, "server.listen")?;
    check_listen(&settings.admin_listen, "server.admin_listen")?;
    let metrics = Metrics::new()?;
    tracing::info!(summary = runtime.summary(), "starting");
    let state = Arc::new(State::new(runtime, metrics, config_path)?);

    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(settings.grace_period.as_secs().max(1)),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let mut gateway = pingora::proxy::http_proxy(
        &server.configuration,
        General {
            pipeline: Pipeline {
                state: state.clone(),
            },
        },
    );
    let mut options = HttpServerOptions::default();
    options.h2c = settings.h2c;
    options.h2_idle_timeout = Some(H2_IDLE);
    gateway.server_options = Some(options);
    gateway.h2_options = Some(h2_options(&settings));
    let mut proxy = Service::new(
        "authgate proxy".to_string(),
        HeadGuard::new(
            gateway,
            Direct {
                pipeline: Pipeline {
                    state: state.clone(),
                },
                connector: TransportConnector::new(None),
            },
            settings.head,
            state.clone(),
        ),
    );
    match &settings.tls {
        Some((cert, key)) => {
            let mut tls =
                TlsSettings::intermediate(cert, key).map_err(|e| StartError::Tls(e.to_string()))?;
            if settings.http2 {
                tls.enable_h2();
            }
            proxy.add_tls_with_settings(&settings.listen, None, tls);
        }
        None => proxy.add_tcp(&settings.listen),
    }

    let mut admin = Service::new(
        "authgate admin".to_string(),
        AdminApp {
            state: state.clone(),
        },
    );
    admin.add_tcp(&settings.admin_listen);
    admin.threads = Some(1);

    if state.sessions.is_some() && state.redis.is_some() {
        server.add_service(background_service(
            "session invalidations",
            SessionWatcher {
                state: state.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "revocations",
        RevocationWatcher {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "jwks",
        JwksRefresher {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "streams",
        StreamSweeper {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "sighup",
        SighupReloader {
            state: state.clone(),
        },
    ));
    server.add_service(admin);
    server.add_service(proxy);
    // `run`, not `run_forever`: the latter ends with `process::exit`, which
    // skips the log writer's flush, so the last lines (requests finished in
    // the grace period, the shutdown itself) could be lost.
    server.run(pingora::server::RunArgs::default());
    tracing::info!("stopped");
    Ok(())
}
