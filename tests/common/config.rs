//! The one builder of the tests' `gateway.toml`: [`GatewayConfig`].
//!
//! It writes `[server]` (`listen = "{proxy}"`, `admin_listen = "{admin}"`,
//! `threads = 1` unless told otherwise, then any [`GatewayConfig::server`]
//! lines), then every other section in the order the calls added them.
//! Sections are typed where the tests write them the same way (a Redis
//! store, an upstream on some addresses, the HS256 issuer, a JWT or an open
//! route) and raw TOML otherwise ([`GatewayConfig::section`],
//! [`GatewayConfig::route`], [`GatewayConfig::extra`]). [`GatewayConfig::toml`]
//! is the text, with `{proxy}`, `{admin}`, `{fixtures}` and `{upstream}` left
//! for [`Gateway::start`] / [`Gateway::with_upstream`] to fill in;
//! [`GatewayConfig::start`] and [`GatewayConfig::with_upstream`] start it.

use super::{Gateway, Upstream};
use std::fmt;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    threads: Option<u32>,
    server: Vec<String>,
    body: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig::new()
    }
}

/// `"a", "b"` for a TOML array of strings.
fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lines(text: &str) -> String {
    let mut s = text.trim_matches('\n').to_string();
    s.push('\n');
    s
}

impl GatewayConfig {
    /// Only `[server]`: `listen = "{proxy}"`, `admin_listen = "{admin}"`, `threads = 1`.
    pub fn new() -> GatewayConfig {
        GatewayConfig {
            threads: Some(1),
            server: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The shape most tests start from: upstream `app` on `{upstream}`, the
    /// HS256 issuer `hs` ([`GatewayConfig::hs_issuer`]) and the JWT route
    /// `api` on `/api/` accepting it.
    pub fn base() -> GatewayConfig {
        GatewayConfig::new()
            .upstream("app", &["{upstream}"])
            .hs_issuer()
            .jwt_route("api", "/api/", &["hs"])
    }

    /// [`GatewayConfig::base`] plus an RS256 issuer from a PEM (`rs`, route
    /// `/rs/`) and one from the JWKS file (`jw`, route `/jwks/`).
    pub fn rs() -> GatewayConfig {
        GatewayConfig::base()
            .issuer(
                "rs",
                "issuer = \"https://rs.test\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n\
                 public_key_file = \"{fixtures}/rsa_pub.pem\"",
            )
            .issuer(
                "jw",
                "issuer = \"https://jw.test\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n\
                 jwks_file = \"{fixtures}/jwks_rs.json\"",
            )
            .jwt_route("rs", "/rs/", &["rs"])
            .jwt_route("jwks", "/jwks/", &["jw"])
    }

    // --- [server]

    /// `threads = n` (1 unless set).
    pub fn threads(mut self, n: u32) -> GatewayConfig {
        self.threads = Some(n);
        self
    }

    /// No `threads` line: the gateway's default.
    pub fn default_threads(mut self) -> GatewayConfig {
        self.threads = None;
        self
    }

    /// Raw `key = value` lines in `[server]` (after listen, admin_listen, threads).
    pub fn server(mut self, text: &str) -> GatewayConfig {
        self.server.push(lines(text));
        self
    }

    /// `direct_path = <on>` in `[server]`.
    pub fn direct_path(self, on: bool) -> GatewayConfig {
        self.server(&format!("direct_path = {on}"))
    }

    /// `trusted_proxies = [...]` in `[server]`.
    pub fn trusted_proxies(self, cidrs: &[&str]) -> GatewayConfig {
        self.server(&format!("trusted_proxies = [{}]", quoted(cidrs)))
    }

    /// [`GatewayConfig::tls`] from file paths.
    pub fn tls_files(self, cert: &std::path::Path, key: &std::path::Path) -> GatewayConfig {
        self.tls(&cert.display().to_string(), &key.display().to_string())
    }

    /// `tls = { cert_file, key_file }` in `[server]` (HTTPS on the proxy listener).
    pub fn tls(self, cert: &str, key: &str) -> GatewayConfig {
        self.server(&format!(
            "tls = {{ cert_file = \"{cert}\", key_file = \"{key}\" }}"
        ))
    }

    // --- other sections

    /// `[<header>]` with `body` (raw `key = value` lines).
    pub fn section(self, header: &str, body: &str) -> GatewayConfig {
        self.extra(&format!("[{header}]\n{}", lines(body)))
    }

    /// Raw TOML appended as is (anything unusual, several tables at once).
    pub fn extra(mut self, toml: &str) -> GatewayConfig {
        if !toml.trim().is_empty() {
            self.body.push(lines(toml));
        }
        self
    }

    /// More raw lines for the table added last (no blank line before them:
    /// e.g. `headers = ...` or `require = ...` for the route just added).
    pub fn more(mut self, text: &str) -> GatewayConfig {
        match self.body.last_mut() {
            Some(last) => last.push_str(&lines(text)),
            None => self.server.push(lines(text)),
        }
        self
    }

    /// `[admin] token_env = <env>`.
    pub fn admin_token_env(self, env: &str) -> GatewayConfig {
        self.section("admin", &format!("token_env = \"{env}\""))
    }

    /// `[store]` with raw lines.
    pub fn store(self, body: &str) -> GatewayConfig {
        self.section("store", body)
    }

    /// `[store] kind = "memory"`.
    pub fn store_memory(self) -> GatewayConfig {
        self.store("kind = \"memory\"")
    }

    /// `[store] kind = "redis"`, `url`, `on_error`.
    pub fn store_redis(self, url: &str, on_error: &str) -> GatewayConfig {
        self.store(&format!(
            "kind = \"redis\"\nurl = \"{url}\"\non_error = \"{on_error}\""
        ))
    }

    /// `[sessions]` with raw lines.
    pub fn sessions(self, body: &str) -> GatewayConfig {
        self.section("sessions", body)
    }

    /// `[upstreams.<name>] addrs = [...]`.
    pub fn upstream(self, name: &str, addrs: &[&str]) -> GatewayConfig {
        self.upstream_with(name, addrs, "")
    }

    /// `[upstreams.<name>] addrs = [...]` plus raw lines (timeouts, pool, ...).
    pub fn upstream_with(self, name: &str, addrs: &[&str], more: &str) -> GatewayConfig {
        self.section(
            &format!("upstreams.{name}"),
            &format!("addrs = [{}]\n{more}", quoted(addrs)),
        )
    }

    /// `[issuers.<name>]` with raw lines.
    pub fn issuer(self, name: &str, body: &str) -> GatewayConfig {
        self.section(&format!("issuers.{name}"), body)
    }

    /// The HS256 issuer `hs`: `https://hs.test`, audience `api`, the secret in
    /// `TEST_HS_SECRET` ([`super::HS_ENV`]), 30 s leeway.
    pub fn hs_issuer(self) -> GatewayConfig {
        self.issuer(
            "hs",
            "issuer = \"https://hs.test\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\n\
             secret_env = \"TEST_HS_SECRET\"\nleeway = \"30s\"",
        )
    }

    /// `[[routes]]` with raw lines (may be followed by its own sub-tables,
    /// e.g. `[[routes.rate_limits]]`).
    pub fn route(self, body: &str) -> GatewayConfig {
        self.extra(&format!("[[routes]]\n{}", lines(body)))
    }

    /// A JWT route on upstream `app`: `name`, `path_prefix`, `issuers`.
    pub fn jwt_route(self, name: &str, prefix: &str, issuers: &[&str]) -> GatewayConfig {
        self.jwt_route_to(name, prefix, "app", issuers, "")
    }

    /// A JWT route on `upstream`, with `more` raw lines (`require = ...`).
    pub fn jwt_route_to(
        self,
        name: &str,
        prefix: &str,
        upstream: &str,
        issuers: &[&str],
        more: &str,
    ) -> GatewayConfig {
        self.route(&format!(
            "name = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\n\
             auth = \"jwt\"\nissuers = [{}]\n{more}",
            quoted(issuers)
        ))
    }

    /// An `auth = "none"` route on upstream `app`.
    pub fn open_route(self, name: &str, prefix: &str) -> GatewayConfig {
        self.route(&format!(
            "name = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"app\"\nauth = \"none\""
        ))
    }

    // --- output

    /// The `gateway.toml` text (placeholders left in).
    pub fn toml(&self) -> String {
        let mut s = String::from("[server]\nlisten = \"{proxy}\"\nadmin_listen = \"{admin}\"\n");
        if let Some(n) = self.threads {
            s.push_str(&format!("threads = {n}\n"));
        }
        for l in &self.server {
            s.push_str(l);
        }
        for part in &self.body {
            s.push('\n');
            s.push_str(part);
        }
        s
    }

    /// [`Gateway::start`] on this config (`{upstream}` already substituted).
    pub fn start(&self, env: &[(&str, &str)]) -> Gateway {
        Gateway::start(&self.toml(), env)
    }

    /// [`Gateway::with_upstream`]: an echo upstream for `{upstream}`, then the gateway.
    pub fn with_upstream(&self, env: &[(&str, &str)]) -> (Gateway, Upstream) {
        Gateway::with_upstream(&self.toml(), env)
    }
}

impl fmt::Display for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.toml())
    }
}
