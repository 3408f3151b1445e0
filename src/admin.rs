//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and `/admin/*`
//! behind the admin bearer token (compared in constant time; 404 when no
//! token is configured, so an unconfigured admin API does not exist).

use crate::clock::now_unix;
use crate::revocation::{Revocation, MAX_EXP_AHEAD, MAX_ID_LEN};
use crate::runtime::Runtime;
use crate::state::State;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The admin HTTP app.
pub struct AdminApp {
    pub state: Arc<State>,
}

/// A response with a body and its Content-Length (ServeHttp adds none).
pub fn respond(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let mut r = http::Response::new(Vec::new());
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    *r.body_mut() = body;
    r
}

fn json(status: u16, body: &str) -> http::Response<Vec<u8>> {
    respond(status, "application/json", body.as_bytes().to_vec())
}

/// Why an admin request is refused before it is looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminAuth {
    Ok,
    NotConfigured,
    Unauthorized,
}

/// Checks `Authorization: Bearer <token>` against the configured token in
/// constant time.
pub fn check_admin(configured: Option<&[u8]>, authorization: Option<&[u8]>) -> AdminAuth {
    let Some(expected) = configured else {
        return AdminAuth::NotConfigured;
    };
    let presented = authorization
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    match presented {
        Some(p) if bool::from(p.ct_eq(expected)) => AdminAuth::Ok,
        _ => AdminAuth::Unauthorized,
    }
}

/// Largest admin request body read (bytes); more is a 413.
pub const MAX_ADMIN_BODY: usize = 16 * 1024;

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, http::Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ADMIN_BODY {
                    return Err(json(413, "{\"error\":\"payload_too_large\"}"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(json(
                    400,
                    "{\"error\":\"bad_request\",\"message\":\"cannot read the request body\"}",
                ))
            }
        }
    }
}

/// The body of `POST /admin/revoke`: exactly one of `jti` (with `exp`),
/// `sub` (optionally narrowed by `iss`, an issuer's config name), `session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub jti: Option<String>,
    pub exp: Option<i64>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub session: Option<String>,
}

fn bad(message: impl Into<String>) -> (u16, Value) {
    (
        400,
        serde_json::json!({"error": "bad_request", "message": message.into()}),
    )
}

fn id_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN
}

/// Validates a revoke request into a [`Revocation`].
pub fn parse_revoke(body: &[u8], rt: &Runtime, now: i64) -> Result<Revocation, (u16, Value)> {
    let req: RevokeRequest = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "expected a JSON object with jti+exp, sub (+iss) or session: {e}"
        ))
    })?;
    let given = [req.jti.is_some(), req.sub.is_some(), req.session.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        return Err(bad(
            "give exactly one of `jti` (with `exp`), `sub` or `session`",
        ));
    }
    if req.iss.is_some() && req.sub.is_none() {
        return Err(bad(
            "`iss` narrows a `sub` revocation; it goes with `sub` only",
        ));
    }
    if req.exp.is_some() && req.jti.is_none() {
        return Err(bad("`exp` goes with `jti` only"));
    }
    if let Some(jti) = req.jti {
        let exp = req
            .exp
            .ok_or_else(|| bad("`exp` (unix seconds) is required with `jti`"))?;
        if !id_ok(&jti) {
            return Err(bad(format!("`jti` must be 1 to {MAX_ID_LEN} bytes")));
        }
        if exp <= 0 || exp > now.saturating_add(MAX_EXP_AHEAD) {
            return Err(bad(
                "`exp` must be the token's expiry in unix seconds (at most ten years ahead)",
            ));
        }
        return Ok(Revocation::Jti { jti, exp });
    }
    if let Some(sub) = req.sub {
        if !id_ok(&sub) {
            return Err(bad(format!("`sub` must be 1 to {MAX_ID_LEN} bytes")));
        }
        if let Some(iss) = &req.iss {
            if rt.issuer(iss).is_none() {
                return Err(bad(format!(
                    "unknown issuer `{iss}` (use an [issuers.NAME] name)"
                )));
            }
        }
        return Ok(Revocation::Sub {
            sub,
            iss: req.iss,
            before: now,
        });
    }
    let sid = req.session.unwrap_or_default();
    if !id_ok(&sid) || sid.contains(['\r', '\n']) {
        return Err(bad(format!(
            "`session` must be a session id of 1 to {MAX_ID_LEN} bytes"
        )));
    }
    if rt.sessions.is_none() {
        return Err(bad(
            "no [sessions] configured: there is no session to destroy",
        ));
    }
    Ok(Revocation::Session { sid })
}

/// Records a revocation in the store (atomically announced to every
/// instance) and in this instance's mirror. A store failure is a loud 503:
/// the revocation is enforced here but not yet elsewhere, so the caller must
/// retry.
pub async fn revoke(state: &State, rt: &Runtime, body: &[u8], who: &str) -> (u16, Value) {
    let now = now_unix();
    let r = match parse_revoke(body, rt, now) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let session_key = match (&r, &rt.sessions) {
        (Revocation::Session { sid }, Some(s)) => Some(format!("{}{}", s.key_prefix, sid)),
        _ => None,
    };
    if let Some(k) = &session_key {
        if let Some(cache) = &state.sessions {
            cache.invalidate(Some(k.as_bytes()));
        }
    }
    if let Err(e) = state.revocations.apply(&r, now) {
        tracing::error!(error = %e, kind = r.kind(), "revocation refused");
        return (
            507,
            serde_json::json!({"error": "insufficient_storage", "message": e.to_string()}),
        );
    }
    state.publish_mirror_size();
    let (what, detail) = match &r {
        Revocation::Jti { jti, exp } => ("jti", serde_json::json!({"jti": jti, "exp": exp})),
        Revocation::Sub { sub, iss, before } => (
            "sub",
            serde_json::json!({"sub": sub, "iss": iss, "before": before}),
        ),
        Revocation::Session { sid } => ("session", serde_json::json!({"session": sid})),
    };
    if let Err(e) = state.store.revoke(&r, session_key.as_deref()).await {
        state
            .metrics
            .store_errors
            .with_label_values(&["revocation_write"])
            .inc();
        tracing::error!(error = %e, kind = what, by = who, op = "revocation_write", "revocation NOT stored: enforced on this instance only");
        return (
            503,
            serde_json::json!({"error": "unavailable", "reason": "store_unavailable",
                "message": format!("the revocation was not stored ({e}); it is enforced on this instance only: retry")}),
        );
    }
    state.metrics.revocations.with_label_values(&[what]).inc();
    match &r {
        Revocation::Jti { jti, exp } => {
            tracing::info!(kind = what, jti = jti.as_str(), exp, by = who, "revocation")
        }
        Revocation::Sub { sub, iss, before } => tracing::info!(
            kind = what,
            sub = sub.as_str(),
            iss = iss.as_deref(),
            before,
            by = who,
            "revocation"
        ),
        // A session id is half a credential: log a digest, not the id.
        Revocation::Session { sid } => {
            tracing::info!(kind = what, session_sha256 = %short_digest(sid), by = who, "revocation")
        }
    }
    let mut out = serde_json::json!({"revoked": what});
    if let (Some(o), Value::Object(d)) = (out.as_object_mut(), detail) {
        o.extend(d);
    }
    (200, out)
}

/// The first 16 hex digits of SHA-256: enough to correlate, not to use.
pub fn short_digest(s: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                let rt = self.state.runtime();
                let addrs = rt.upstreams.iter().flat_map(|up| {
                    up.health()
                        .map(move |(addr, healthy)| (up.name.as_str(), addr, healthy))
                });
                self.state.metrics.set_upstream_health(addrs);
                respond(
                    200,
                    "text/plain; version=0.0.4",
                    self.state.metrics.render(),
                )
            }
            ("GET", "/healthz") => json(200, "{\"status\":\"ok\"}"),
            ("GET", "/readyz") if !self.state.keys_loaded() => json(
                503,
                "{\"status\":\"not_ready\",\"reason\":\"keys_unavailable\"}",
            ),
            ("GET", "/readyz")
                if self.state.redis.is_some()
                    && !self
                        .state
                        .revocations_synced
                        .load(std::sync::atomic::Ordering::Acquire) =>
            {
                json(
                    503,
                    "{\"status\":\"not_ready\",\"reason\":\"revocations_not_synced\"}",
                )
            }
            ("GET", "/readyz") => match self.state.store.ping().await {
                Ok(()) => json(200, "{\"status\":\"ready\"}"),
                Err(e) => {
                    self.state
                        .metrics
                        .store_errors
                        .with_label_values(&["ping"])
                        .inc();
                    tracing::warn!(error = %e, op = "ping", "store error");
                    json(
                        503,
                        "{\"status\":\"not_ready\",\"reason\":\"store_unavailable\"}",
                    )
                }
            },
            (_, p) if p.starts_with("/admin/") || p == "/admin" => {
                let rt = self.state.runtime();
                let auth = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                match check_admin(rt.admin_token.as_deref(), auth) {
                    AdminAuth::NotConfigured => json(404, "{\"error\":\"not_found\"}"),
                    AdminAuth::Unauthorized => json(401, "{\"error\":\"unauthorized\"}"),
                    AdminAuth::Ok => match (method.as_str(), path.as_str()) {
                        ("POST", "/admin/revoke") => {
                            let peer = session
                                .client_addr()
                                .and_then(|a| a.as_inet())
                                .map(|a| a.ip().to_string())
                                .unwrap_or_default();
                            match read_body(session).await {
                                Ok(body) => {
                                    let (status, out) =
                                        revoke(&self.state, &rt, &body, &peer).await;
                                    respond(
                                        status,
                                        "application/json",
                                        out.to_string().into_bytes(),
                                    )
                                }
                                Err(resp) => resp,
                            }
                        }
                        ("POST", "/admin/reload") => {
                            let state = self.state.clone();
                            match tokio::task::spawn_blocking(move || crate::reload::reload(&state)).await {
                                Ok(Ok(summary)) => respond(
                                    200,
                                    "application/json",
                                    serde_json::json!({"reloaded": true, "summary": summary}).to_string().into_bytes(),
                                ),
                                Ok(Err(e)) => respond(
                                    422,
                                    "application/json",
                                    serde_json::json!({"error": "invalid_config", "message": e.to_string()}).to_string().into_bytes(),
                                ),
                                Err(_) => json(500, "{\"error\":\"internal\"}"),
                            }
                        }
                        _ => json(404, "{\"error\":\"not_found\"}"),
                    },
                }
            }
            _ => json(404, "{\"error\":\"not_found\"}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_rules() {
        assert_eq!(
            check_admin(None, Some(b"Bearer x")),
            AdminAuth::NotConfigured
        );
        assert_eq!(check_admin(Some(b"s3cret"), None), AdminAuth::Unauthorized);
        assert_eq!(
            check_admin(Some(b"s3cret"), Some(b"Bearer nope")),
            AdminAuth::Unauthorized
        );
        assert_eq!(
            check_admin(Some(b"s3cret"), Some(b"bearer s3cret")),
            AdminAuth::Ok
        );
    }
}
