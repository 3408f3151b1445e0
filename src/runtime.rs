//! The compiled config the proxy runs on: snapshot types only. They are
//! built from the file schema by one conversion (`config::compile`) that
//! holds every default and every check, then shared immutably (and swapped
//! whole on reload), so a request sees one consistent config from start to
//! end. Nothing here knows the file schema: `config::compile` imports this
//! module, never the reverse.

use crate::assertion::AssertionSettings;
use crate::auth::jwks::KeySource;
use crate::auth::keys::AlgSet;
use crate::auth::session::SessionSettings;
use crate::ratelimit::Limit;
use crate::router::Router;
use http::HeaderName;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, EncodingKey};
use pingora::utils::tls::WrappedX509;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Process-level settings, bound at start-up.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: String,
    pub admin_listen: String,
    pub threads: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub grace_period: Duration,
    /// Request heads: deadline from the first byte and size cap.
    pub head: HeadLimits,
    /// TLS termination on `listen`: (certificate chain, private key) files.
    pub tls: Option<(String, String)>,
    /// Plain bodyless HTTP/1.1 GET/HEAD requests take the direct path
    /// (`direct.rs`); false sends everything through pingora-proxy (an
    /// operator's switch, applied on reload).
    pub direct_path: bool,
}

/// The limits a head is read under.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// From the first byte of a head to its end.
    pub timeout: Duration,
    /// Request line and headers, with their line ends.
    pub max_bytes: usize,
}

/// How a route authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    None,
    Jwt,
    Session,
    JwtOrSession,
}

impl AuthMode {
    /// The metrics `method` label for routes of this mode before a method is known.
    pub const fn label(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt | AuthMode::JwtOrSession => "jwt",
            AuthMode::Session => "session",
        }
    }
}

/// A route's `require`.
#[derive(Debug, Clone, Default)]
pub struct Require {
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub upstream: usize,
    pub auth: AuthMode,
    /// Indexes into [`Runtime::issuers`].
    pub issuers: Vec<usize>,
    /// The union of the route's issuers' algorithms (a fast first filter).
    pub algs: AlgSet,
    pub require: Require,
    pub login_redirect: Option<String>,
    /// Extra claim -> header mappings.
    pub headers: Vec<(HeaderName, String)>,
    /// Add `X-Auth-Assertion`.
    pub assertion: bool,
    /// Rate limits; all must pass.
    pub limits: Vec<Limit>,
    /// Some limit is keyed on a body field.
    pub limits_need_body: bool,
    /// Metric handles, resolved on first use.
    pub metrics: std::sync::OnceLock<crate::metrics::RouteMetrics>,
}

impl Route {
    /// This route's metric handles.
    pub fn metrics(&self, m: &crate::metrics::Metrics) -> &crate::metrics::RouteMetrics {
        self.metrics.get_or_init(|| m.for_route(&self.name))
    }
}

/// An upstream pool: addresses resolved at load time (never DNS on the
/// request path), a round-robin cursor and each address's passive health.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub tls: bool,
    pub sni: String,
    /// Trust anchors for the upstream's certificate (default: system roots).
    pub ca: Option<Arc<[WrappedX509]>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Consecutive connect failures that take an address out of rotation.
    pub max_fails: u32,
    /// How long an address stays out before it is tried again.
    pub fail_timeout: Duration,
    /// Idle keep-alive connections of the direct path (this config's
    /// generation only: a reload starts with none).
    pub pool: crate::direct::IdlePool,
    /// Per address (same index as `addrs`).
    health: Vec<AddrHealth>,
    /// The clock `AddrHealth::down_until_ms` counts from.
    born: std::time::Instant,
    next: AtomicUsize,
}

/// Most addresses one upstream may have ([`Tried`] is a bit per address).
pub const MAX_UPSTREAM_ADDRS: usize = 64;

/// One address's passive health: consecutive connect failures, and when
/// its backoff ends (ms since `Upstream::born`).
#[derive(Debug, Default)]
struct AddrHealth {
    fails: std::sync::atomic::AtomicU32,
    down_until_ms: AtomicU64,
}

/// The addresses one request has tried, so a retry after a failed
/// connect never goes to the same address twice.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried {
    mask: u64,
    /// Where this request's round-robin walk starts.
    start: Option<usize>,
    /// The address of the latest attempt.
    last: usize,
}

impl Tried {
    /// Connect attempts so far.
    pub fn count(&self) -> usize {
        self.mask.count_ones() as usize
    }
}

impl Upstream {
    /// The address for this request's next connect attempt: the next one in
    /// round-robin order that it has not tried and that is not backing off;
    /// when every untried address is backing off, the first of those (a
    /// request is never refused for health alone). `None` once every
    /// address was tried.
    pub fn pick(&self, tried: &mut Tried) -> Option<SocketAddr> {
        let n = self.addrs.len().min(MAX_UPSTREAM_ADDRS);
        if n == 0 || tried.count() >= n {
            return None;
        }
        let start = *tried
            .start
            .get_or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed) % n);
        let untried = |i: usize| tried.mask & (1u64 << i) == 0;
        let mut now = None;
        let order = (0..n).map(|k| (start + k) % n);
        let chosen = order
            .clone()
            .find(|&i| untried(i) && self.is_up(i, &mut now))
            .or_else(|| order.clone().find(|&i| untried(i)))?;
        tried.mask |= 1u64 << chosen;
        tried.last = chosen;
        self.addrs.get(chosen).copied()
    }

    /// The address of the latest attempt of `tried`, if any.
    pub fn last_tried(&self, tried: &Tried) -> Option<SocketAddr> {
        (tried.count() > 0)
            .then(|| self.addrs.get(tried.last).copied())
            .flatten()
    }

    /// Whether address `i` is in rotation (`now`: the clock, read once and
    /// only for an address with failures).
    fn is_up(&self, i: usize, now: &mut Option<u64>) -> bool {
        let Some(h) = self.health.get(i) else {
            return true;
        };
        if h.fails.load(Ordering::Relaxed) < self.max_fails {
            return true;
        }
        let now = *now.get_or_insert_with(|| self.clock_ms());
        now >= h.down_until_ms.load(Ordering::Relaxed)
    }

    fn clock_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The latest attempt of `tried` connected: its address is back in
    /// rotation (a store only when it had failures).
    pub fn connected(&self, tried: &Tried) {
        if let Some(h) = self.health.get(tried.last) {
            if h.fails.load(Ordering::Relaxed) != 0 {
                h.fails.store(0, Ordering::Relaxed);
                h.down_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The latest attempt of `tried` failed to connect: one more failure
    /// for its address (out for `fail_timeout` from the `max_fails`-th on).
    /// Whether an address is left that this request has not tried.
    pub fn connect_failed(&self, tried: &Tried) -> bool {
        if let Some(h) = self.health.get(tried.last) {
            let fails = h.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if fails >= self.max_fails {
                let until = self.clock_ms() + self.fail_timeout.as_millis() as u64;
                h.down_until_ms.store(until, Ordering::Relaxed);
            }
        }
        tried.count() < self.addrs.len().min(MAX_UPSTREAM_ADDRS)
    }

    /// Each address with whether it is in rotation (for the metrics): out
    /// from its `max_fails`-th consecutive failure until a connect to it
    /// succeeds.
    pub fn health(&self) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
        self.addrs.iter().enumerate().map(|(i, a)| {
            let up = self
                .health
                .get(i)
                .is_none_or(|h| h.fails.load(Ordering::Relaxed) < self.max_fails);
            (*a, up)
        })
    }
}

/// One JWT issuer.
pub struct Issuer {
    pub name: Arc<str>,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algs: AlgSet,
    /// Algorithms in the order configured (the first signs `authgate token`).
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub leeway: i64,
    pub signing_key: Option<EncodingKey>,
    /// The `kid` to put in minted tokens: the only kid of the key set, if one.
    pub signing_kid: Option<String>,
}

/// Where shared state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis {
        url: String,
    },
    /// Redis Cluster, by seed nodes.
    Cluster {
        urls: Vec<String>,
    },
    /// The master Sentinel names, followed across failovers.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// What a store failure means for checks that restrict (rate limits):
/// `Deny` fails closed (503), `Allow` lets the request through. Sessions
/// that cannot be read are always 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Deny,
    Allow,
}

/// The compiled `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub kind: StoreKind,
    pub on_error: OnError,
    /// Credentials and TLS roots for the data nodes.
    pub access: crate::store::redis::Access,
}

/// Everything the proxy needs, compiled.
pub struct Runtime {
    pub server: ServerSettings,
    pub admin_token: Option<Vec<u8>>,
    pub store: StoreSettings,
    pub sessions: Option<SessionSettings>,
    pub routes: Vec<Route>,
    pub router: Router,
    pub upstreams: Vec<Upstream>,
    pub issuers: Vec<Issuer>,
    /// Every header named in any route's `headers` map (lower-case):
    /// stripped from every client request.
    pub mapped_headers: Vec<HeaderName>,
    /// The token claims a verified identity keeps (everything else is
    /// dropped once the identity is built): each route-mapped claim name
    /// and the first segment of a dotted one, and `iss` when assertions are
    /// signed (`original_iss`).
    pub kept_claims: Vec<String>,
    /// Distinct per build: cached verifications name the runtime they
    /// were made under.
    pub generation: u64,
    pub token_cache: TokenCacheSettings,
    pub assertion: Option<Arc<AssertionSettings>>,
}

/// The compiled `[token_cache]` (sizing is bound at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCacheSettings {
    pub size: usize,
    pub max_ttl: Duration,
}

impl Runtime {
    /// The issuer by config name (for `authgate token`).
    pub fn issuer(&self, name: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|i| &*i.name == name)
    }

    /// A one-line summary for `check` and start-up logs.
    pub fn summary(&self) -> String {
        format!(
            "config ok: {} routes, {} upstreams, {} issuers, listen {}, admin {}",
            self.routes.len(),
            self.upstreams.len(),
            self.issuers.len(),
            self.server.listen,
            self.server.admin_listen
        )
    }
}

// Kept apart from the `Upstream` items above (which move to their own
// module) so that move merges cleanly; this constructor goes with them.
impl Upstream {
    /// A pool over `addrs` with every address in rotation and the
    /// round-robin cursor at the first (what `config::compile` builds).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        addrs: Vec<SocketAddr>,
        tls: bool,
        sni: String,
        ca: Option<Arc<[WrappedX509]>>,
        connect_timeout: Duration,
        read_timeout: Duration,
        max_fails: u32,
        fail_timeout: Duration,
    ) -> Upstream {
        let n_addrs = addrs.len();
        Upstream {
            name,
            addrs,
            tls,
            ca,
            sni,
            connect_timeout,
            read_timeout,
            max_fails,
            fail_timeout,
            pool: Default::default(),
            health: (0..n_addrs).map(|_| AddrHealth::default()).collect(),
            born: std::time::Instant::now(),
            next: AtomicUsize::new(0),
        }
    }
}
