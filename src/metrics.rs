//! The contract's metrics, built once at start-up (fallibly, so no panic
//! hides in a static) and shared by the proxy and the admin listener through
//! their own registry.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

/// Every metric authgate exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub auth_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub rate_limited: IntCounterVec,
    /// gRPC requests by route and the gRPC status they ended with (the
    /// gateway's refusal or the upstream's).
    pub grpc: IntCounterVec,
    /// Running streams ended because their credential was revoked or
    /// expired (`streams.rs`).
    pub streams_ended: IntCounter,
    pub revocations: IntCounterVec,
    pub store_errors: IntCounterVec,
    pub jwks_refresh: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub revocation_mirror: IntGaugeVec,
    /// Revocations the store had lost, written back from this mirror.
    pub revocations_restored: IntCounterVec,
    pub token_cache: IntCounterVec,
    /// `token_cache{result="hit"}` and `{result="miss"}`, resolved once (a
    /// label lookup hashes and locks on every JWT request otherwise).
    pub token_cache_hit: IntCounter,
    pub token_cache_miss: IntCounter,
    /// Request heads refused before routing (`timeout`: 408, `too_large`: 431).
    pub heads_refused: IntCounterVec,
    /// Requests by the path that served them: `direct` (bodyless GET/HEAD,
    /// `direct.rs`) or `general` (pingora-proxy), resolved once.
    pub path_direct: IntCounter,
    pub path_general: IntCounter,
    /// Each upstream address's passive health (1 in rotation, 0 out after
    /// `max_fails` connect failures until a connect succeeds), set from
    /// the running config at each scrape.
    pub upstream_healthy: IntGaugeVec,
}

const AUTH_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25,
];
const UPSTREAM_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A route's hot metric handles, resolved once (label lookups hash and
/// lock; an allowed request should do neither).
#[derive(Debug)]
pub struct RouteMetrics {
    pub allowed: IntCounter,
    /// auth_duration by method: none, jwt, session.
    pub auth: [Histogram; 3],
    pub upstream: Histogram,
}

impl RouteMetrics {
    /// The auth histogram for a `method` label.
    pub fn auth_for(&self, method: &str) -> &Histogram {
        match method {
            "jwt" => &self.auth[1],
            "session" => &self.auth[2],
            _ => &self.auth[0],
        }
    }
}

impl Metrics {
    /// Resolves one route's handles.
    pub fn for_route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            allowed: self.requests.with_label_values(&[route, "allowed", "ok"]),
            auth: [
                self.auth_duration.with_label_values(&[route, "none"]),
                self.auth_duration.with_label_values(&[route, "jwt"]),
                self.auth_duration.with_label_values(&[route, "session"]),
            ],
            upstream: self.upstream_duration.with_label_values(&[route]),
        }
    }

    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let requests = counter(
            "authgate_requests_total",
            "Requests by route, outcome (allowed/denied/error) and reason.",
            &["route", "outcome", "reason"],
        )?;
        let rate_limited = counter(
            "authgate_rate_limited_total",
            "Requests refused by a rate limit.",
            &["route"],
        )?;
        let grpc = counter(
            "authgate_grpc_requests_total",
            "gRPC requests by route and grpc_status (the gateway's refusal or the upstream's status).",
            &["route", "grpc_status"],
        )?;
        let streams_ended = IntCounter::with_opts(Opts::new(
            "authgate_streams_ended_total",
            "Running HTTP/2 streams and upgraded connections ended because their credential was revoked or expired.",
        ))?;
        registry.register(Box::new(streams_ended.clone()))?;
        let revocations = counter(
            "authgate_revocations_total",
            "Revocations accepted, by kind.",
            &["kind"],
        )?;
        let store_errors = counter(
            "authgate_store_errors_total",
            "Store operations that failed, by op.",
            &["op"],
        )?;
        let jwks_refresh = counter(
            "authgate_jwks_refresh_total",
            "JWKS fetches by issuer and result.",
            &["issuer", "result"],
        )?;
        let token_cache = counter(
            "authgate_token_cache_total",
            "Verified-token cache lookups by result (hit/miss).",
            &["result"],
        )?;
        let heads_refused = counter(
            "authgate_request_heads_refused_total",
            "Request heads refused before routing: too slow (408) or too large (431).",
            &["reason"],
        )?;
        let proxy_path = counter(
            "authgate_proxy_path_total",
            "Requests by the proxy path that served them: direct (bodyless GET/HEAD) or general.",
            &["path"],
        )?;
        let config_reloads = counter(
            "authgate_config_reloads_total",
            "Config reloads by result.",
            &["result"],
        )?;
        let auth_duration = HistogramVec::new(
            HistogramOpts::new(
                "authgate_auth_duration_seconds",
                "Time spent authenticating a request (routing to decision).",
            )
            .buckets(AUTH_BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        registry.register(Box::new(auth_duration.clone()))?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "authgate_upstream_duration_seconds",
                "Time from choosing the upstream to the end of its response.",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["route"],
        )?;
        registry.register(Box::new(upstream_duration.clone()))?;
        let revocation_mirror = IntGaugeVec::new(
            Opts::new(
                "authgate_revocation_mirror_entries",
                "Revocations held in this instance's local mirror, by kind (jti, sub).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(revocation_mirror.clone()))?;
        let revocations_restored = IntCounterVec::new(
            Opts::new(
                "authgate_revocations_restored_total",
                "Revocations the store had lost (FLUSHALL, a failover that missed writes) and this instance wrote back from its mirror, by kind (jti, sub).",
            ),
            &["kind"],
        )?;
        // both series from the start: an alert on increase() sees the first
        for kind in ["jti", "sub"] {
            revocations_restored.with_label_values(&[kind]);
        }
        registry.register(Box::new(revocations_restored.clone()))?;
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "authgate_upstream_address_healthy",
                "Upstream addresses in rotation (1) or out after max_fails consecutive connect failures (0), by upstream and address.",
            ),
            &["upstream", "addr"],
        )?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            auth_duration,
            upstream_duration,
            rate_limited,
            grpc,
            streams_ended,
            revocations,
            store_errors,
            jwks_refresh,
            config_reloads,
            revocation_mirror,
            revocations_restored,
            token_cache_hit: token_cache.with_label_values(&["hit"]),
            token_cache_miss: token_cache.with_label_values(&["miss"]),
            token_cache,
            heads_refused,
            path_direct: proxy_path.with_label_values(&["direct"]),
            path_general: proxy_path.with_label_values(&["general"]),
            upstream_healthy,
        })
    }

    /// Counts a refused request head (`timeout` or `too_large`).
    pub fn heads_refused(&self, reason: &str) {
        self.heads_refused.with_label_values(&[reason]).inc();
    }

    /// Sets the upstream health gauge to `addrs` (upstream name, address,
    /// in rotation), the running config's: addresses of an earlier config
    /// are dropped.
    pub fn set_upstream_health<'a>(
        &self,
        addrs: impl Iterator<Item = (&'a str, std::net::SocketAddr, bool)>,
    ) {
        self.upstream_healthy.reset();
        for (upstream, addr, healthy) in addrs {
            self.upstream_healthy
                .with_label_values(&[upstream, &addr.to_string()])
                .set(i64::from(healthy));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            buf.clear();
        }
        buf
    }
}
