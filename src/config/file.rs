//! The `gateway.toml` schema exactly as operators write it (serde types, no
//! defaults applied, no checks). `compile/` turns it into what the proxy runs
//! on; that conversion is the only place defaults and checks live (River's
//! split). Unknown keys are found by `config::load`, which reports them all
//! with their positions rather than stopping at the first.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    pub admin: Option<AdminFile>,
    pub store: Option<StoreFile>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerFile>,
    pub sessions: Option<SessionsFile>,
    pub token_cache: Option<TokenCacheFile>,
    pub assertion: Option<AssertionFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

/// `[assertion]`: the gateway-signed identity JWT for backends.
#[derive(Debug, Default, Deserialize)]
pub struct AssertionFile {
    pub algorithm: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub previous_key_files: Vec<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub ttl: Option<String>,
    pub jwks_path: Option<String>,
}

/// `[token_cache]`: verified JWTs, by token hash.
#[derive(Debug, Default, Deserialize)]
pub struct TokenCacheFile {
    /// Most tokens held; 0 turns the cache off.
    pub size: Option<usize>,
    /// Longest a token is served from the cache (it never outlives its exp).
    pub max_ttl: Option<String>,
}

/// `[sessions]`: express-session + connect-redis compatible cookies.
#[derive(Debug, Default, Deserialize)]
pub struct SessionsFile {
    pub cookie: Option<String>,
    pub secrets_env: Option<Vec<String>>,
    pub secrets_files: Option<Vec<String>>,
    pub key_prefix: Option<String>,
    #[serde(default)]
    pub rolling: bool,
    /// Least time between two TTL refreshes of one session (rolling).
    pub touch_interval: Option<String>,
    pub identity: Option<SessionIdentityFile>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Longest time a looked-up session is served from the local cache.
    pub cache_ttl: Option<String>,
    /// Most sessions kept in the local cache.
    pub cache_size: Option<usize>,
}

/// `identity = { subject = "userId", email = "email", roles = "role" }`.
#[derive(Debug, Default, Deserialize)]
pub struct SessionIdentityFile {
    pub subject: Option<String>,
    pub email: Option<String>,
    pub roles: Option<String>,
}

/// `[server]`: listeners and process settings (bound at start-up).
#[derive(Debug, Default, Deserialize)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub threads: Option<usize>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub tls: Option<TlsFile>,
    /// Seconds SIGTERM waits for in-flight requests before exit.
    pub grace_period: Option<String>,
    /// Longest time from a request head's first byte to its end (408).
    pub request_header_timeout: Option<String>,
    /// Longest request head in bytes (431).
    pub max_header_bytes: Option<usize>,
    /// The bodyless HTTP/1.1 fast path (default true; false: every request
    /// through pingora-proxy).
    pub direct_path: Option<bool>,
    /// HTTP/2 on the TLS listener, by ALPN (default true).
    pub http2: Option<bool>,
    /// HTTP/2 with prior knowledge on a plain listener (default false).
    pub h2c: Option<bool>,
}

/// TLS termination files.
#[derive(Debug, Deserialize)]
pub struct TlsFile {
    pub cert_file: String,
    pub key_file: String,
}

/// `[admin]`: the admin API's bearer token source.
#[derive(Debug, Default, Deserialize)]
pub struct AdminFile {
    pub token_env: Option<String>,
    pub token_file: Option<String>,
}

/// `[store]`: where shared state lives.
#[derive(Debug, Default, Deserialize)]
pub struct StoreFile {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub ca_file: Option<String>,
    /// AUTH for the data nodes (with `password_env` / `password_file`).
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub urls: Option<Vec<String>>,
    pub sentinels: Option<Vec<String>>,
    pub master: Option<String>,
    pub on_error: Option<String>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Default, Deserialize)]
pub struct UpstreamFile {
    #[serde(default)]
    pub addrs: Vec<String>,
    #[serde(default)]
    pub tls: bool,
    pub sni: Option<String>,
    pub ca_file: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    /// Consecutive connect failures that take an address out (nginx's name).
    pub max_fails: Option<i64>,
    /// How long an address that failed stays out (nginx's name).
    pub fail_timeout: Option<String>,
    /// `http1` (default), `h2` (over TLS) or `h2c` (plaintext HTTP/2).
    pub protocol: Option<String>,
}

/// `[issuers.NAME]`.
#[derive(Debug, Default, Deserialize)]
pub struct IssuerFile {
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<String>,
    pub public_key_file: Option<String>,
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub private_key_file: Option<String>,
    pub leeway: Option<String>,
    /// jwks_url: shortest time between scheduled refreshes.
    pub jwks_min_refresh: Option<String>,
    /// jwks_url: longest time between scheduled refreshes.
    pub jwks_max_refresh: Option<String>,
    /// jwks_url: least time between fetches triggered by an unknown kid.
    pub jwks_cooldown: Option<String>,
}

/// `require = { roles = [...], scopes = [...] }`.
#[derive(Debug, Default, Deserialize)]
pub struct RequireFile {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Default, Deserialize)]
pub struct RouteFile {
    pub name: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    pub issuers: Option<Vec<String>>,
    pub require: Option<RequireFile>,
    pub login_redirect: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub assertion: bool,
    /// End running streams whose credential is revoked or expires (default true).
    pub revalidate_streams: Option<bool>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitFile>,
}

/// One `[[routes.rate_limits]]`.
#[derive(Debug, Default, Deserialize)]
pub struct RateLimitFile {
    pub key: Option<String>,
    pub limit: Option<u64>,
    pub window: Option<String>,
    pub count: Option<String>,
}
