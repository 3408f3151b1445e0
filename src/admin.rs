//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and `/admin/*`
//! behind the admin bearer token (compared in constant time; 404 when no
//! token is configured, so an unconfigured admin API does not exist).

use crate::state::State;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => respond(
                200,
                "text/plain; version=0.0.4",
                self.state.metrics.render(),
            ),
            ("GET", "/healthz") => json(200, "{\"status\":\"ok\"}"),
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
                    AdminAuth::Ok => json(404, "{\"error\":\"not_found\"}"),
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
