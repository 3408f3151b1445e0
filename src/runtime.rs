//! The compiled config the proxy runs on. Built from the file schema by one
//! conversion ([`Runtime::build`]) that holds every default and every check,
//! then shared immutably (and swapped whole on reload), so a request sees one
//! consistent config from start to end.

use crate::assertion::{AssertionSettings, SigningKey};
use crate::auth::jwks::{JwksTiming, KeySource, RemoteKeys};
use crate::auth::keys::{self, parse_alg, AlgSet, KeySet};
use crate::auth::session::{normalize_allowed, SessionSettings};
pub use crate::auth::Require;
use crate::config::file::{FileConfig, IssuerFile, RouteFile, UpstreamFile};
use crate::config::Issues;
use crate::ratelimit::{Count, KeySpec, Limit};
use crate::router::{Matcher, Router};
use crate::upstream::{Upstream, MAX_UPSTREAM_ADDRS};
use http::HeaderName;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, EncodingKey};
use pingora::utils::tls::WrappedX509;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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

static GENERATION: AtomicU64 = AtomicU64::new(1);

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Why a PEM certificate file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid X.509 certificate")]
    Invalid,
}

/// The DER certificates of a PEM file, each checked to parse as X.509 (so
/// nothing downstream can trip over a malformed one).
pub fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, CertError> {
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for c in rustls_pemfile::certs(&mut r) {
        let der = c?.to_vec();
        if x509_parser::parse_x509_certificate(&der).is_err() {
            return Err(CertError::Invalid);
        }
        out.push(der);
    }
    Ok(out)
}

/// Reads a secret from a file: one trailing newline is dropped.
pub fn read_secret_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = std::fs::read(path)?;
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    Ok(v)
}

/// The longest duration any key accepts. Longer values are configuration
/// mistakes, and past about 292 billion years one no longer fits a monotonic
/// clock (`Instant + d` would panic on a request path): refusing them at
/// `check` keeps every timer computation in range.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a humantime duration of at most [`MAX_DURATION`].
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration `{s}` ({e}); use forms like \"30s\", \"15m\", \"24h\"")
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration `{s}` is longer than 10 years, the longest accepted"
        ));
    }
    Ok(d)
}

fn secret(
    env: Option<&str>,
    file: Option<&str>,
    base: &Path,
    path: &str,
    issues: &mut Issues,
) -> Option<Vec<u8>> {
    match (env, file) {
        (Some(_), Some(_)) => {
            issues.at(path, "give either the `_env` or the `_file` form, not both");
            None
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v.into_bytes()),
            Ok(_) => {
                issues.at(
                    format!("{path}_env"),
                    format!("environment variable `{var}` is empty"),
                );
                None
            }
            Err(_) => {
                issues.at(
                    format!("{path}_env"),
                    format!("environment variable `{var}` is not set"),
                );
                None
            }
        },
        (None, Some(f)) => match read_secret_file(&resolve(base, f)) {
            Ok(v) if !v.is_empty() => Some(v),
            Ok(_) => {
                issues.at(
                    format!("{path}_file"),
                    format!("secret file `{f}` is empty"),
                );
                None
            }
            Err(e) => {
                issues.at(
                    format!("{path}_file"),
                    format!("cannot read secret file `{f}`: {e}"),
                );
                None
            }
        },
        (None, None) => None,
    }
}

impl Runtime {
    /// Compiles a parsed file; every problem goes to `issues` (all are
    /// collected) and the result is `None` if there was any.
    pub fn build(cfg: FileConfig, base: &Path, issues: &mut Issues) -> Option<Runtime> {
        let before = issues.0.len();
        let server = build_server(&cfg, base, issues);

        let admin_token = cfg.admin.as_ref().and_then(|a| {
            secret(
                a.token_env.as_deref(),
                a.token_file.as_deref(),
                base,
                "admin.token",
                issues,
            )
        });

        let store = build_store(&cfg, base, issues);
        let assertion = build_assertion(&cfg, base, issues);
        let token_cache = {
            let tc = cfg.token_cache.as_ref();
            let max_ttl = match tc.and_then(|t| t.max_ttl.as_deref()).map(duration) {
                None => Duration::from_secs(300),
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    issues.at("token_cache.max_ttl", e);
                    Duration::ZERO
                }
            };
            TokenCacheSettings {
                size: tc.and_then(|t| t.size).unwrap_or(100_000),
                max_ttl,
            }
        };
        let sessions = build_sessions(&cfg, base, &store, issues);

        let mut upstream_names = Vec::new();
        let mut upstreams = Vec::new();
        for (name, u) in &cfg.upstreams {
            if let Some(up) = build_upstream(name, u, base, issues) {
                upstream_names.push(name.clone());
                upstreams.push(up);
            }
        }

        let mut issuer_names = Vec::new();
        let mut issuers = Vec::new();
        for (name, i) in &cfg.issuers {
            if let Some(iss) = build_issuer(name, i, base, issues) {
                issuer_names.push(name.clone());
                issuers.push(iss);
            }
        }

        let mut routes = Vec::new();
        let mut matchers = Vec::new();
        let mut mapped_headers: Vec<HeaderName> = Vec::new();
        if cfg.routes.is_empty() {
            issues.at("", "no [[routes]] defined: every request would be 404");
        }
        let mut names = std::collections::HashSet::new();
        for (idx, r) in cfg.routes.iter().enumerate() {
            if let Some(n) = &r.name {
                if !names.insert(n.as_str()) {
                    issues.at(
                        format!("routes.{idx}.name"),
                        format!("duplicate route name `{n}` (names label metrics and logs)"),
                    );
                }
            }
            let at = |k: &str| format!("routes.{idx}.{k}");
            let built = Built {
                cfg: &cfg,
                upstream_names: &upstream_names,
                issuer_names: &issuer_names,
                issuers: &issuers,
                have_sessions: sessions.is_some(),
            };
            if let Some((route, m)) = build_route(idx, r, &built, issues) {
                for (h, _) in &route.headers {
                    if !mapped_headers.contains(h) {
                        mapped_headers.push(h.clone());
                    }
                }
                routes.push(route);
                matchers.push(m);
            } else if r.upstream.is_none() {
                issues.at(at("upstream"), "missing `upstream`");
            }
        }

        if issues.0.len() > before {
            return None;
        }
        let mut kept_claims: Vec<String> = Vec::new();
        let mapped = routes
            .iter()
            .flat_map(|r| r.headers.iter().map(|(_, c)| c.as_str()));
        let firsts = mapped.clone().filter_map(|c| c.split('.').next());
        let iss = assertion.as_ref().map(|_| "iss");
        for c in mapped.chain(firsts).chain(iss) {
            if !kept_claims.iter().any(|k| k == c) {
                kept_claims.push(c.to_string());
            }
        }
        Some(Runtime {
            server: server?,
            admin_token,
            store,
            sessions,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            assertion,
            token_cache,
            router: Router::new(matchers),
            routes,
            upstreams,
            issuers,
            mapped_headers,
            kept_claims,
        })
    }

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

fn build_assertion(
    cfg: &FileConfig,
    base: &Path,
    issues: &mut Issues,
) -> Option<Arc<AssertionSettings>> {
    let a = cfg.assertion.as_ref()?;
    let before = issues.0.len();
    let algorithm = match a.algorithm.as_deref() {
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        Some(other) => {
            issues.at(
                "assertion.algorithm",
                format!("unsupported algorithm `{other}` (expected \"ES256\" or \"EdDSA\")"),
            );
            Algorithm::ES256
        }
        None => {
            issues.at("assertion", "missing `algorithm` (\"ES256\" or \"EdDSA\")");
            Algorithm::ES256
        }
    };
    let load = |issues: &mut Issues, path: &str, file: &str| -> Option<SigningKey> {
        match std::fs::read(resolve(base, file)) {
            Ok(pem) => match SigningKey::from_pem(&pem, algorithm) {
                Ok(k) => Some(k),
                Err(e) => {
                    issues.at(path, format!("`{file}`: {e}"));
                    None
                }
            },
            Err(e) => {
                issues.at(path, format!("cannot read `{file}`: {e}"));
                None
            }
        }
    };
    let current = match &a.key_file {
        Some(f) => load(issues, "assertion.key_file", f),
        None => {
            issues.at(
                "assertion",
                "missing `key_file` (the gateway's private key, PEM)",
            );
            None
        }
    };
    let previous: Vec<SigningKey> = a
        .previous_key_files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| load(issues, &format!("assertion.previous_key_files.{i}"), f))
        .collect();
    let issuer = a.issuer.clone().unwrap_or_default();
    if issuer.is_empty() {
        issues.at("assertion", "missing `issuer` (the assertion's iss)");
    }
    let audience = a.audience.clone().unwrap_or_default();
    if audience.is_empty() {
        issues.at("assertion", "missing `audience` (the assertion's aud)");
    }
    let ttl = match a.ttl.as_deref().map(duration) {
        None => Duration::from_secs(60),
        Some(Ok(d)) if d >= Duration::from_secs(1) => d,
        Some(Ok(_)) => {
            issues.at("assertion.ttl", "ttl must be at least 1s");
            Duration::from_secs(60)
        }
        Some(Err(e)) => {
            issues.at("assertion.ttl", e);
            Duration::from_secs(60)
        }
    };
    let jwks_path = a
        .jwks_path
        .clone()
        .unwrap_or_else(|| "/.well-known/authgate/jwks.json".into());
    if !jwks_path.starts_with('/') {
        issues.at("assertion.jwks_path", "paths start with `/`");
    }
    let current = current?;
    if issues.0.len() > before {
        return None;
    }
    let jwks = AssertionSettings::render_jwks(&current, &previous);
    Some(Arc::new(AssertionSettings {
        algorithm,
        current,
        previous,
        issuer,
        audience,
        ttl_secs: ttl.as_secs() as i64,
        jwks_path,
        jwks,
    }))
}

fn build_store(cfg: &FileConfig, base: &Path, issues: &mut Issues) -> StoreSettings {
    let mut out = StoreSettings {
        kind: StoreKind::Memory,
        on_error: OnError::Deny,
        access: Default::default(),
    };
    let Some(store) = &cfg.store else { return out };
    match store.on_error.as_deref() {
        None | Some("deny") => {}
        Some("allow") => out.on_error = OnError::Allow,
        Some(other) => issues.at(
            "store.on_error",
            format!("unknown on_error `{other}` (expected \"deny\" or \"allow\")"),
        ),
    }
    match store.kind.as_deref().unwrap_or("memory") {
        "memory" => {}
        "redis" => match &store.url {
            Some(url) => match redis::Client::open(url.as_str()) {
                Ok(_) => out.kind = StoreKind::Redis { url: url.clone() },
                Err(e) => issues.at("store.url", format!("invalid Redis URL: {e}")),
            },
            None => issues.at("store", "store.kind = \"redis\" needs `url` (e.g. \"redis://127.0.0.1:6379/0\")"),
        },
        "redis_cluster" => match &store.urls {
            Some(urls) if !urls.is_empty() => {
                let mut ok = true;
                for (i, u) in urls.iter().enumerate() {
                    if let Err(e) = redis::Client::open(u.as_str()) {
                        issues.at(format!("store.urls.{i}"), format!("invalid Redis URL: {e}"));
                        ok = false;
                    }
                }
                if ok {
                    out.kind = StoreKind::Cluster { urls: urls.clone() };
                }
            }
            _ => issues.at("store", "kind = \"redis_cluster\" needs `urls` (seed nodes, e.g. [\"redis://10.0.0.1:7000\"])"),
        },
        "redis_sentinel" => match (&store.sentinels, &store.master) {
            (Some(s), Some(m)) if !s.is_empty() && !m.is_empty() => {
                let mut ok = true;
                for (i, u) in s.iter().enumerate() {
                    if let Err(e) = redis::Client::open(u.as_str()) {
                        issues.at(format!("store.sentinels.{i}"), format!("invalid sentinel URL: {e}"));
                        ok = false;
                    }
                }
                if ok {
                    out.kind = StoreKind::Sentinel {
                        sentinels: s.clone(),
                        master: m.clone(),
                    };
                }
            }
            _ => issues.at("store", "kind = \"redis_sentinel\" needs `sentinels` (e.g. [\"redis://10.0.0.1:26379\"]) and `master` (the monitored master's name)"),
        },
        other => issues.at(
            "store.kind",
            format!("unknown store kind `{other}` (expected \"memory\", \"redis\", \"redis_cluster\" or \"redis_sentinel\")"),
        ),
    }
    let kind = store.kind.as_deref().unwrap_or("memory");
    for (key, given, for_kind) in [
        ("urls", store.urls.is_some(), "redis_cluster"),
        ("sentinels", store.sentinels.is_some(), "redis_sentinel"),
        ("master", store.master.is_some(), "redis_sentinel"),
    ] {
        if given && kind != for_kind {
            issues.at(
                format!("store.{key}"),
                format!("`{key}` belongs to kind = \"{for_kind}\""),
            );
        }
    }
    if store.url.is_some() && kind != "redis" {
        issues.at(
            "store.url",
            "`url` belongs to kind = \"redis\" (use `urls` for a cluster, `sentinels` + `master` for Sentinel)",
        );
    }
    let urls: Vec<&String> = store
        .url
        .iter()
        .chain(store.urls.iter().flatten())
        .chain(store.sentinels.iter().flatten())
        .collect();
    if let Some(f) = &store.ca_file {
        if !urls.iter().any(|u| crate::store::redis::is_tls(u)) {
            issues.at(
                "store.ca_file",
                "ca_file verifies rediss:// servers, and no URL here is rediss://",
            );
        }
        match std::fs::read(resolve(base, f)) {
            Ok(pem) => {
                let certs = rustls_pemfile::certs(&mut pem.as_slice())
                    .filter(|c| c.is_ok())
                    .count();
                if certs == 0 {
                    issues.at("store.ca_file", format!("`{f}` holds no PEM certificate"));
                } else {
                    out.access.ca_pem = Some(pem);
                }
            }
            Err(e) => issues.at("store.ca_file", format!("`{f}`: cannot read: {e}")),
        }
    }
    if store.password_env.is_some() || store.password_file.is_some() {
        if kind == "memory" {
            issues.at(
                "store",
                "password_env / password_file belong to a Redis store kind",
            );
        }
        if let Some(p) = secret(
            store.password_env.as_deref(),
            store.password_file.as_deref(),
            base,
            "store.password",
            issues,
        ) {
            match String::from_utf8(p) {
                Ok(p) => out.access.password = Some(p),
                Err(_) => issues.at("store.password", "the Redis password is not UTF-8"),
            }
        }
        out.access.username = store.username.clone().filter(|u| !u.is_empty());
    } else if store.username.is_some() {
        issues.at(
            "store.username",
            "username needs password_env or password_file (or put user:password@ in the URL)",
        );
    }
    out
}

fn build_sessions(
    cfg: &FileConfig,
    base: &Path,
    store: &StoreSettings,
    issues: &mut Issues,
) -> Option<SessionSettings> {
    let s = cfg.sessions.as_ref()?;
    let before = issues.0.len();
    if store.kind == StoreKind::Memory
        && cfg.store.as_ref().is_none_or(|st| {
            !matches!(
                st.kind.as_deref(),
                Some("redis" | "redis_cluster" | "redis_sentinel")
            )
        })
    {
        issues.at(
            "sessions",
            "[sessions] needs store.kind = \"redis\": sessions live in the login service's Redis (express-session + connect-redis), which the memory store cannot read",
        );
    }
    let mut secrets = Vec::new();
    for (i, var) in s.secrets_env.iter().flatten().enumerate() {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => secrets.push(v.into_bytes()),
            Ok(_) => issues.at(
                format!("sessions.secrets_env.{i}"),
                format!("environment variable `{var}` is empty"),
            ),
            Err(_) => issues.at(
                format!("sessions.secrets_env.{i}"),
                format!("environment variable `{var}` is not set"),
            ),
        }
    }
    for (i, f) in s.secrets_files.iter().flatten().enumerate() {
        match read_secret_file(&resolve(base, f)) {
            Ok(v) if !v.is_empty() => secrets.push(v),
            Ok(_) => issues.at(
                format!("sessions.secrets_files.{i}"),
                format!("secret file `{f}` is empty"),
            ),
            Err(e) => issues.at(
                format!("sessions.secrets_files.{i}"),
                format!("cannot read secret file `{f}`: {e}"),
            ),
        }
    }
    if s.secrets_env.iter().flatten().count() + s.secrets_files.iter().flatten().count() == 0 {
        issues.at("sessions", "[sessions] needs the cookie-signing secrets: secrets_env = [...] or secrets_files = [...]");
    }
    let subject = match s.identity.as_ref().and_then(|i| i.subject.clone()) {
        Some(p) if !p.is_empty() => p,
        _ => {
            issues.at("sessions", "[sessions] needs identity = { subject = \"<path of the user id in the session>\" }");
            String::new()
        }
    };
    let mut allowed_origins = Vec::new();
    for (i, o) in s.allowed_origins.iter().enumerate() {
        match normalize_allowed(o) {
            Some(n) => allowed_origins.push(n),
            None => issues.at(
                format!("sessions.allowed_origins.{i}"),
                format!("`{o}` is not an origin like \"https://app.example.com\""),
            ),
        }
    }
    let mut dur = |key: &str, v: &Option<String>, default: u64| match v.as_deref().map(duration) {
        None => Duration::from_secs(default),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            issues.at(format!("sessions.{key}"), e);
            Duration::ZERO
        }
    };
    let touch_interval = dur("touch_interval", &s.touch_interval, 60);
    let cache_ttl = dur("cache_ttl", &s.cache_ttl, 300);
    if issues.0.len() > before {
        return None;
    }
    Some(SessionSettings {
        cookie: s.cookie.clone().unwrap_or_else(|| "connect.sid".into()),
        secrets: secrets.into(),
        key_prefix: s.key_prefix.clone().unwrap_or_else(|| "sess:".into()),
        rolling: s.rolling,
        touch_interval,
        subject,
        email: s.identity.as_ref().and_then(|i| i.email.clone()),
        roles: s.identity.as_ref().and_then(|i| i.roles.clone()),
        allowed_origins,
        cache_ttl,
        cache_size: s.cache_size.unwrap_or(100_000),
    })
}

fn build_server(cfg: &FileConfig, base: &Path, issues: &mut Issues) -> Option<ServerSettings> {
    let s = &cfg.server;
    let listen = s.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into());
    let admin_listen = s
        .admin_listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let mut ok = true;
    if listen.parse::<SocketAddr>().is_err() {
        issues.at(
            "server.listen",
            format!("`{listen}` is not an address like \"127.0.0.1:8080\""),
        );
        ok = false;
    }
    if admin_listen.parse::<SocketAddr>().is_err() {
        issues.at(
            "server.admin_listen",
            format!("`{admin_listen}` is not an address like \"127.0.0.1:9090\""),
        );
        ok = false;
    }
    let tls = match &s.tls {
        None => None,
        Some(t) => {
            let cert = resolve(base, &t.cert_file);
            let key = resolve(base, &t.key_file);
            match read_certs(&cert) {
                Ok(c) if c.is_empty() => {
                    issues.at(
                        "server.tls.cert_file",
                        format!("`{}` holds no PEM certificate", t.cert_file),
                    );
                    ok = false;
                }
                Ok(_) => {}
                Err(e) => {
                    issues.at("server.tls.cert_file", format!("`{}`: {e}", t.cert_file));
                    ok = false;
                }
            }
            match std::fs::File::open(&key)
                .map(std::io::BufReader::new)
                .map(|mut r| rustls_pemfile::private_key(&mut r))
            {
                Ok(Ok(Some(k))) => {
                    // The listener would fail to start (in a thread that
                    // cannot stop the process): prove the pair works here.
                    if let Ok(chain) = read_certs(&cert) {
                        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
                            chain.into_iter().map(Into::into).collect();
                        let built = rustls::ServerConfig::builder_with_provider(Arc::new(
                            rustls::crypto::ring::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            b.with_no_client_auth()
                                .with_single_cert(chain, k)
                                .map_err(|e| e.to_string())
                        });
                        if let Err(e) = built {
                            issues.at(
                                "server.tls.key_file",
                                format!(
                                    "`{}` does not fit the certificate in `{}`: {e}",
                                    t.key_file, t.cert_file
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                Ok(_) => {
                    issues.at(
                        "server.tls.key_file",
                        format!("`{}` holds no PEM private key", t.key_file),
                    );
                    ok = false;
                }
                Err(e) => {
                    issues.at(
                        "server.tls.key_file",
                        format!("cannot read `{}`: {e}", t.key_file),
                    );
                    ok = false;
                }
            }
            Some((
                cert.to_string_lossy().into_owned(),
                key.to_string_lossy().into_owned(),
            ))
        }
    };
    let threads = s.threads.unwrap_or(2);
    if threads == 0 || threads > 1024 {
        issues.at("server.threads", "threads must be between 1 and 1024");
        ok = false;
    }
    let mut trusted = Vec::new();
    for (i, t) in s.trusted_proxies.iter().enumerate() {
        let parsed = t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted.push(n),
            Err(_) => {
                issues.at(
                    format!("server.trusted_proxies.{i}"),
                    format!("`{t}` is not an IP or CIDR"),
                );
                ok = false;
            }
        }
    }
    let grace_period = match s.grace_period.as_deref().map(duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            issues.at("server.grace_period", e);
            ok = false;
            Duration::ZERO
        }
    };
    let head_timeout = match s.request_header_timeout.as_deref().map(duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) if d >= Duration::from_millis(100) && d <= Duration::from_secs(600) => d,
        Some(Ok(_)) => {
            issues.at(
                "server.request_header_timeout",
                "request_header_timeout must be between 100ms and 10m",
            );
            ok = false;
            Duration::ZERO
        }
        Some(Err(e)) => {
            issues.at("server.request_header_timeout", e);
            ok = false;
            Duration::ZERO
        }
    };
    let max_header_bytes = s.max_header_bytes.unwrap_or(64 * 1024);
    if !(1024..=1024 * 1024).contains(&max_header_bytes) {
        issues.at(
            "server.max_header_bytes",
            "max_header_bytes must be between 1024 and 1048576",
        );
        ok = false;
    }
    ok.then_some(ServerSettings {
        listen,
        admin_listen,
        threads,
        trusted_proxies: trusted,
        grace_period,
        head: HeadLimits {
            timeout: head_timeout,
            max_bytes: max_header_bytes,
        },
        tls,
        direct_path: s.direct_path.unwrap_or(true),
    })
}

fn build_upstream(
    name: &str,
    u: &UpstreamFile,
    base: &Path,
    issues: &mut Issues,
) -> Option<Upstream> {
    let at = |k: &str| format!("upstreams.{name}.{k}");
    let mut addrs = Vec::new();
    let mut ok = true;
    if u.addrs.is_empty() {
        issues.at(at("addrs"), "an upstream needs at least one address");
        ok = false;
    }
    for (i, a) in u.addrs.iter().enumerate() {
        match a.to_socket_addrs() {
            Ok(list) => {
                let before = addrs.len();
                addrs.extend(list);
                if addrs.len() == before {
                    issues.at(
                        format!("upstreams.{name}.addrs.{i}"),
                        format!("`{a}` resolves to no address"),
                    );
                    ok = false;
                }
            }
            Err(e) => {
                issues.at(
                    format!("upstreams.{name}.addrs.{i}"),
                    format!("`{a}` is not a host:port that resolves: {e}"),
                );
                ok = false;
            }
        }
    }
    let ca = match &u.ca_file {
        None => None,
        Some(f) => match read_certs(&resolve(base, f)) {
            Ok(certs) if !certs.is_empty() => {
                let wrapped: Vec<WrappedX509> = certs
                    .into_iter()
                    .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
                    .collect();
                Some(Arc::from(wrapped))
            }
            Ok(_) => {
                issues.at(at("ca_file"), format!("`{f}` holds no PEM certificate"));
                ok = false;
                None
            }
            Err(e) => {
                issues.at(at("ca_file"), format!("`{f}`: {e}"));
                ok = false;
                None
            }
        },
    };
    if u.ca_file.is_some() && !u.tls {
        issues.at(at("ca_file"), "ca_file needs tls = true");
        ok = false;
    }
    let mut timeout = |k: &str, v: &Option<String>, d: u64| match v.as_deref().map(duration) {
        None => Duration::from_secs(d),
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            issues.at(at(k), e);
            ok = false;
            Duration::ZERO
        }
    };
    let connect_timeout = timeout("connect_timeout", &u.connect_timeout, 2);
    let read_timeout = timeout("read_timeout", &u.read_timeout, 60);
    let fail_timeout = timeout("fail_timeout", &u.fail_timeout, 10);
    if u.fail_timeout.is_some() && fail_timeout.is_zero() && ok {
        issues.at(at("fail_timeout"), "fail_timeout must be more than 0s");
        ok = false;
    }
    let max_fails = match u.max_fails {
        None => 1,
        Some(n) if (1..=1000).contains(&n) => n as u32,
        Some(n) => {
            issues.at(
                at("max_fails"),
                format!("max_fails must be 1 to 1000 (got {n})"),
            );
            ok = false;
            1
        }
    };
    if addrs.len() > MAX_UPSTREAM_ADDRS {
        issues.at(
            at("addrs"),
            format!(
                "an upstream may have at most {MAX_UPSTREAM_ADDRS} addresses (these resolve to {})",
                addrs.len()
            ),
        );
        ok = false;
    }
    let sni = u.sni.clone().unwrap_or_else(|| {
        u.addrs
            .first()
            .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
            .unwrap_or_default()
    });
    ok.then(|| {
        let mut up = Upstream::new(name.to_string(), addrs);
        up.tls = u.tls;
        up.ca = ca;
        up.sni = sni;
        up.connect_timeout = connect_timeout;
        up.read_timeout = read_timeout;
        up.max_fails = max_fails;
        up.fail_timeout = fail_timeout;
        up
    })
}

fn build_issuer(name: &str, i: &IssuerFile, base: &Path, issues: &mut Issues) -> Option<Issuer> {
    let at = |k: &str| format!("issuers.{name}.{k}");
    let before = issues.0.len();
    let issuer = match &i.issuer {
        Some(s) if !s.is_empty() => s.clone(),
        _ => {
            issues.at(
                format!("issuers.{name}"),
                "missing `issuer` (the value tokens' `iss` must equal)",
            );
            String::new()
        }
    };
    let mut algs = AlgSet::default();
    let mut algorithms = Vec::new();
    if i.algorithms.is_empty() {
        issues.at(
            format!("issuers.{name}"),
            "missing `algorithms` (pin the algorithms this issuer signs with, e.g. [\"RS256\"])",
        );
    }
    for (n, a) in i.algorithms.iter().enumerate() {
        match parse_alg(a) {
            Some(alg) => {
                algs.insert(alg);
                algorithms.push(alg);
            }
            None => issues.at(
                format!("issuers.{name}.algorithms.{n}"),
                format!("unsupported algorithm `{a}` (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"),
            ),
        }
    }
    let sources = [
        i.jwks_url.is_some(),
        i.jwks_file.is_some(),
        i.public_key_file.is_some(),
        i.secret_env.is_some(),
        i.secret_file.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        issues.at(
            format!("issuers.{name}"),
            "exactly one key source is needed: jwks_url, jwks_file, public_key_file, secret_env or secret_file",
        );
    }
    let mut keys = KeySet::default();
    let mut secret_bytes = None;
    let mut key_path = String::new();
    let mut remote = None;
    if let Some(url) = &i.jwks_url {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://"))
            || reqwest::Url::parse(url).is_err()
        {
            issues.at(at("jwks_url"), format!("`{url}` is not an http(s) URL"));
        }
        let mut dur = |k: &str, v: &Option<String>, d: u64| match v.as_deref().map(duration) {
            None => Duration::from_secs(d),
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                issues.at(at(k), e);
                Duration::from_secs(d)
            }
        };
        let timing = JwksTiming {
            min_refresh: dur("jwks_min_refresh", &i.jwks_min_refresh, 30)
                .max(Duration::from_secs(1)),
            max_refresh: dur("jwks_max_refresh", &i.jwks_max_refresh, 600),
            cooldown: dur("jwks_cooldown", &i.jwks_cooldown, 10),
        };
        if timing.max_refresh < timing.min_refresh {
            issues.at(
                at("jwks_max_refresh"),
                "jwks_max_refresh is shorter than jwks_min_refresh",
            );
        }
        remote = Some(Arc::new(RemoteKeys::new(name, url, timing)));
    } else if let Some(f) = &i.jwks_file {
        key_path = at("jwks_file");
        match std::fs::read(resolve(base, f)) {
            Ok(bytes) => match keys::keys_from_jwks(&bytes) {
                Ok(k) => keys = k,
                Err(e) => issues.at(at("jwks_file"), format!("`{f}`: {e}")),
            },
            Err(e) => issues.at(at("jwks_file"), format!("cannot read `{f}`: {e}")),
        }
    } else if let Some(f) = &i.public_key_file {
        key_path = at("public_key_file");
        match std::fs::read(resolve(base, f)) {
            Ok(bytes) => match keys::public_key_from_pem(&bytes) {
                Ok(k) => keys.keys.push(k),
                Err(e) => issues.at(at("public_key_file"), format!("`{f}`: {e}")),
            },
            Err(e) => issues.at(at("public_key_file"), format!("cannot read `{f}`: {e}")),
        }
    } else if i.secret_env.is_some() || i.secret_file.is_some() {
        key_path = if i.secret_env.is_some() {
            at("secret_env")
        } else {
            at("secret_file")
        };
        if let Some(s) = secret(
            i.secret_env.as_deref(),
            i.secret_file.as_deref(),
            base,
            &at("secret"),
            issues,
        ) {
            keys.keys.push(keys::secret_key(&s));
            secret_bytes = Some(s);
        }
    }
    if !keys.keys.is_empty() {
        let servable = keys.algs();
        for alg in algs.iter() {
            if !servable.contains(alg) {
                issues.at(
                    key_path.clone(),
                    format!("algorithm {alg:?} cannot be served by this key source (its keys serve {:?})", servable.iter().collect::<Vec<_>>()),
                );
            }
        }
    }
    let leeway = match i.leeway.as_deref().map(duration) {
        None => 60,
        Some(Ok(d)) => d.as_secs() as i64,
        Some(Err(e)) => {
            issues.at(at("leeway"), e);
            0
        }
    };
    if let Some(a) = &i.audiences {
        if a.is_empty() {
            issues.at(
                at("audiences"),
                "an empty list would accept no token; omit `audiences` to skip the aud check",
            );
        }
    }
    let first = algorithms.first().copied();
    let signing_key = match (&i.private_key_file, &secret_bytes, first) {
        (Some(f), _, Some(alg)) => match std::fs::read(resolve(base, f)) {
            Ok(pem) => match keys::signing_key_from_pem(&pem, alg) {
                Ok(k) => Some(k),
                Err(e) => {
                    issues.at(at("private_key_file"), format!("`{f}`: {e}"));
                    None
                }
            },
            Err(e) => {
                issues.at(at("private_key_file"), format!("cannot read `{f}`: {e}"));
                None
            }
        },
        (None, Some(s), Some(_)) => Some(EncodingKey::from_secret(s)),
        _ => None,
    };
    let signing_kid = {
        let kids: Vec<&String> = keys.keys.iter().filter_map(|k| k.kid.as_ref()).collect();
        if kids.len() == 1 {
            Some(kids[0].clone())
        } else {
            None
        }
    };
    if issues.0.len() > before {
        return None;
    }
    let keys = match remote {
        Some(r) => KeySource::Remote(r),
        None => KeySource::Static(Arc::new(keys)),
    };
    Some(Issuer {
        name: Arc::from(name),
        issuer,
        audiences: i.audiences.clone().unwrap_or_default(),
        algs,
        algorithms,
        keys,
        leeway,
        signing_key,
        signing_kid,
    })
}

/// What routes refer to, built before them.
struct Built<'a> {
    cfg: &'a FileConfig,
    upstream_names: &'a [String],
    issuer_names: &'a [String],
    issuers: &'a [Issuer],
    have_sessions: bool,
}

fn build_route(
    idx: usize,
    r: &RouteFile,
    b: &Built,
    issues: &mut Issues,
) -> Option<(Route, Matcher)> {
    let Built {
        cfg,
        upstream_names,
        issuer_names,
        issuers,
        have_sessions,
    } = *b;
    let at = |k: &str| format!("routes.{idx}.{k}");
    let here = format!("routes.{idx}");
    let before = issues.0.len();
    let upstream_name = r.upstream.as_deref()?;
    let upstream = match upstream_names.iter().position(|n| n == upstream_name) {
        Some(u) => u,
        None => {
            if !cfg.upstreams.contains_key(upstream_name) {
                issues.at(at("upstream"), format!("unknown upstream `{upstream_name}` (define it as [upstreams.{upstream_name}])"));
            }
            usize::MAX
        }
    };
    match (&r.path, &r.path_prefix) {
        (None, None) => issues.at(here.clone(), "a route needs `path` or `path_prefix`"),
        (Some(_), Some(_)) => issues.at(here.clone(), "give `path` or `path_prefix`, not both"),
        (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => {
            let k = if r.path.is_some() {
                "path"
            } else {
                "path_prefix"
            };
            issues.at(at(k), "paths start with `/`");
        }
        _ => {}
    }
    let auth = match r.auth.as_deref().unwrap_or("jwt") {
        "jwt" => AuthMode::Jwt,
        "none" => AuthMode::None,
        "session" => AuthMode::Session,
        "jwt_or_session" => AuthMode::JwtOrSession,
        other => {
            issues.at(at("auth"), format!("unknown auth `{other}` (expected \"jwt\", \"session\", \"jwt_or_session\" or \"none\")"));
            AuthMode::None
        }
    };
    let mut route_issuers = Vec::new();
    if r.issuers.as_ref().is_some_and(Vec::is_empty) {
        issues.at(
            at("issuers"),
            "an empty issuers list accepts no token; omit it to accept every issuer",
        );
    }
    if r.require.is_some() && auth == AuthMode::None {
        issues.at(
            at("require"),
            "require has no identity to check on an auth = \"none\" route",
        );
    }
    match &r.issuers {
        Some(list) => {
            for (n, name) in list.iter().enumerate() {
                match issuer_names.iter().position(|x| x == name) {
                    Some(i) => route_issuers.push(i),
                    None if !cfg.issuers.contains_key(name) => issues.at(
                        format!("routes.{idx}.issuers.{n}"),
                        format!("unknown issuer `{name}` (define it as [issuers.{name}])"),
                    ),
                    None => {}
                }
            }
        }
        None => route_issuers.extend(0..issuers.len()),
    }
    if matches!(auth, AuthMode::Session | AuthMode::JwtOrSession) && !have_sessions {
        issues.at(at("auth"), "session routes need a valid [sessions] section");
    }
    if r.login_redirect.is_some() && !matches!(auth, AuthMode::Session | AuthMode::JwtOrSession) {
        issues.at(
            at("login_redirect"),
            "login_redirect applies to session routes (auth = \"session\" or \"jwt_or_session\")",
        );
    }
    if matches!(auth, AuthMode::Jwt | AuthMode::JwtOrSession)
        && route_issuers.is_empty()
        && cfg.issuers.is_empty()
    {
        issues.at(at("auth"), "a jwt route needs at least one [issuers.*]");
    }
    let mut algs = AlgSet::default();
    for i in &route_issuers {
        if let Some(iss) = issuers.get(*i) {
            for a in iss.algs.iter() {
                algs.insert(a);
            }
        }
    }
    let mut headers = Vec::new();
    for (h, claim) in &r.headers {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) if name.as_str().starts_with("x-auth-") => issues.at(
                format!("routes.{idx}.headers.{h}"),
                "X-Auth-* headers are the gateway's own; map claims to another name",
            ),
            Ok(name) if crate::identity::has_rule(name.as_str(), crate::identity::PROTECTED) => {
                issues.at(
                    format!("routes.{idx}.headers.{h}"),
                    format!("`{h}` cannot carry a claim"),
                )
            }
            Ok(name) => headers.push((name, claim.clone())),
            Err(_) => issues.at(
                format!("routes.{idx}.headers.{h}"),
                format!("`{h}` is not a valid header name"),
            ),
        }
    }
    if r.assertion && cfg.assertion.is_none() {
        issues.at(
            at("assertion"),
            "assertion = true needs an [assertion] section (the gateway's signing key)",
        );
    }
    if r.assertion && auth == AuthMode::None {
        issues.at(
            at("assertion"),
            "an auth = \"none\" route has no identity to assert",
        );
    }
    let mut limits = Vec::new();
    for (n, l) in r.rate_limits.iter().enumerate() {
        let lat = |k: &str| format!("routes.{idx}.rate_limits.{n}.{k}");
        let key = match l.key.as_deref().map(KeySpec::parse) {
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                issues.at(lat("key"), e);
                None
            }
            None => {
                issues.at(
                    format!("routes.{idx}.rate_limits.{n}"),
                    "missing `key` (\"ip\", \"header:NAME\", \"form:FIELD\" or \"json:FIELD\")",
                );
                None
            }
        };
        let limit = match l.limit {
            Some(x) if x > 0 && x <= 1_000_000_000 => Some(x),
            Some(_) => {
                issues.at(lat("limit"), "limit must be between 1 and 1000000000");
                None
            }
            None => {
                issues.at(format!("routes.{idx}.rate_limits.{n}"), "missing `limit`");
                None
            }
        };
        let window = match l.window.as_deref().map(duration) {
            Some(Ok(d)) if d >= Duration::from_secs(1) && d <= Duration::from_secs(366 * 86400) => {
                Some(d)
            }
            Some(Ok(_)) => {
                issues.at(lat("window"), "window must be between 1s and 366 days");
                None
            }
            Some(Err(e)) => {
                issues.at(lat("window"), e);
                None
            }
            None => {
                issues.at(
                    format!("routes.{idx}.rate_limits.{n}"),
                    "missing `window` (e.g. \"1m\")",
                );
                None
            }
        };
        let count = match l.count.as_deref() {
            None | Some("all") => Count::All,
            Some("failures") => Count::Failures,
            Some(other) => {
                issues.at(
                    lat("count"),
                    format!("unknown count `{other}` (expected \"all\" or \"failures\")"),
                );
                Count::All
            }
        };
        if let (Some(key), Some(limit), Some(window)) = (key, limit, window) {
            limits.push(Limit::new(key, limit, window.as_micros() as u64, count));
        }
    }
    let limits_need_body = limits.iter().any(|l| l.key.needs_body());
    let methods = r
        .methods
        .as_ref()
        .map(|m| m.iter().map(|s| s.to_ascii_uppercase()).collect())
        .unwrap_or_default();
    let name = r
        .name
        .clone()
        .or_else(|| r.path.clone())
        .or_else(|| r.path_prefix.clone())
        .unwrap_or_else(|| format!("route{idx}"));
    if issues.0.len() > before {
        return None;
    }
    let require = r
        .require
        .as_ref()
        .map(|q| Require {
            roles: q.roles.clone(),
            scopes: q.scopes.clone(),
        })
        .unwrap_or_default();
    Some((
        Route {
            name,
            upstream,
            auth,
            issuers: route_issuers,
            algs,
            require,
            login_redirect: r.login_redirect.clone(),
            headers,
            limits,
            limits_need_body,
            metrics: std::sync::OnceLock::new(),
            assertion: r.assertion,
        },
        Matcher {
            path: r.path.clone(),
            path_prefix: r.path_prefix.clone(),
            // one trailing dot, as a request's host loses it
            host: r.host.as_ref().map(|h| {
                let h = h.to_ascii_lowercase();
                h.strip_suffix('.').map(str::to_string).unwrap_or(h)
            }),
            methods,
        },
    ))
}
