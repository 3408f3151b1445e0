//! Step 5: the end of a request. When the upstream's head arrives,
//! `count = "failures"` charges are refunded for a success and the
//! `RateLimit` headers are computed; at the very end, charges for a
//! failure that never came are refunded, and the metrics and the request
//! log line (never the query string, never a credential) are written.

use super::{Ctx, Pipeline};
use crate::denial::Reason;
use crate::identity;
use crate::ratelimit::{self, Count, Limit};
use pingora::{Error, ErrorSource};

impl Pipeline {
    /// Step 5, when the upstream's head arrives: the upstream answered `status`: refunds `failures` charges for a
    /// success, and gives the `RateLimit-Policy` and `RateLimit` values
    /// for the response on a rate-limited route.
    pub async fn answered(&self, status: u16, ctx: &mut Ctx) -> Option<(String, String)> {
        let charged = std::mem::take(&mut ctx.failure_cells);
        let refund = !charged.is_empty() && !matches!(status, 401 | 403);
        if refund {
            self.refund(&charged).await;
        }
        let mut d = ctx.rate_decision.take()?;
        let route = ctx.matched()?;
        if refund {
            // The headers tell the budget after this answer.
            for (backlog, l) in d.backlog_us.iter_mut().zip(&route.limits) {
                if l.count == Count::Failures {
                    *backlog = backlog.saturating_sub(l.emission_us());
                }
            }
        }
        let limits: Vec<&Limit> = route.limits.iter().collect();
        Some(ratelimit::headers(&limits, &d))
    }

    /// The end of every request: refunds charges for a failure that never
    /// came, counts it, and writes the request log line.
    pub async fn finish(
        &self,
        method: &str,
        path: &str,
        status: u16,
        e: Option<&Error>,
        ctx: &mut Ctx,
    ) {
        // Charged for a failure that never came (no upstream answer).
        let charged = std::mem::take(&mut ctx.failure_cells);
        if !charged.is_empty() {
            self.refund(&charged).await;
        }
        if ctx.reason == Reason::Ok && e.is_some_and(|e| *e.esource() == ErrorSource::Upstream) {
            ctx.reason = Reason::UpstreamError;
        }
        let matched = ctx.matched();
        let route = matched.map_or(ctx.builtin.unwrap_or("unmatched"), |r| r.name.as_str());
        let m = &self.state.metrics;
        match matched.map(|r| r.metrics(m)) {
            Some(rm) => {
                if ctx.reason == Reason::Ok {
                    rm.allowed.inc();
                } else {
                    m.requests
                        .with_label_values(&[route, ctx.reason.outcome(), ctx.reason.as_str()])
                        .inc();
                }
                if let Some(t) = ctx.upstream_start {
                    rm.upstream.observe(t.elapsed().as_secs_f64());
                }
            }
            None => m
                .requests
                .with_label_values(&[route, ctx.reason.outcome(), ctx.reason.as_str()])
                .inc(),
        }
        if let Some(code) = ctx.grpc_status {
            m.grpc
                .with_label_values(&[route, crate::denial::GRPC_CODES[usize::from(code)]])
                .inc();
        }
        let client_ip = ctx.client_ip.map(identity::IpText::new);
        // The target operators filter on (`RUST_LOG=authgate::gateway=warn`
        // turns the request line off): kept stable, whatever module writes it.
        tracing::info!(
            target: "authgate::gateway",
            route,
            method,
            auth = ctx.auth_label,
            path,
            status,
            grpc_status = ctx.grpc_status,
            outcome = ctx.reason.outcome(),
            reason = ctx.reason.as_str(),
            subject = ctx.identity.as_ref().and_then(|i| i.subject.as_deref()),
            client_ip = client_ip.as_ref().map(identity::IpText::as_str),
            duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
}
