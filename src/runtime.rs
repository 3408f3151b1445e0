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
pub use crate::auth::Require;
use crate::ratelimit::Limit;
use crate::router::Router;
use crate::upstream::Upstream;
use http::HeaderName;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, EncodingKey};
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
    /// HTTP/2 offered by ALPN on the TLS listener.
    pub http2: bool,
    /// HTTP/2 with prior knowledge accepted on the plain listener.
    pub h2c: bool,
}

/// The limits a head is read under.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// From the first byte of a head to its end.
    pub timeout: Duration,
    /// Request line and headers, with their line ends.
    pub max_bytes: usize,
}

impl ServerSettings {
    /// Whether `peer` is in `trusted_proxies` (its forwarding fields and
    /// `X-Forwarded-For` are believed).
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
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
    /// End this route's HTTP/2 streams and upgraded connections when
    /// their credential is revoked or expires (`streams.rs`).
    pub revalidate_streams: bool,
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

impl OnError {
    /// The config value (`deny`, `allow`), as logs show it.
    pub const fn as_str(self) -> &'static str {
        match self {
            OnError::Deny => "deny",
            OnError::Allow => "allow",
        }
    }
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
    /// Some upstream speaks HTTP/2 (`protocol = "h2"` or `"h2c"`), which
    /// only the general transport does.
    pub h2_upstreams: bool,
}

impl Runtime {
    /// Whether plain bodyless HTTP/1.1 requests take the direct transport:
    /// the operator's switch, and no upstream that needs HTTP/2 (the direct
    /// transport speaks HTTP/1.1 upstream only; the choice is made before
    /// the request is routed).
    pub fn direct_transport(&self) -> bool {
        self.server.direct_path && !self.h2_upstreams
    }
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
