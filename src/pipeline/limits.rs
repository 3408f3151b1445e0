//! Step 2: rate limits, counted in the store (one atomic call per
//! request on routes that have limits), and the `count = "failures"`
//! refunds step 5 makes.

use super::{has_body, Ctx, Next, Pipeline};
use crate::denial::{Answer, Reason};
use crate::ratelimit::{self, BodyPrefix, Cell, Count, Limit};
use crate::runtime::OnError;
use http::request::Parts;
use std::borrow::Cow;
use std::net::IpAddr;

impl Pipeline {
    /// Gives back `failures` charges for an attempt that did not fail.
    pub(super) async fn refund(&self, cells: &[Cell]) {
        if let Err(e) = self.state.store.rate_refund(cells).await {
            self.state
                .metrics
                .store_errors
                .with_label_values(&["ratelimit"])
                .inc();
            tracing::warn!(error = %e, op = "ratelimit", "a successful attempt could not be refunded");
        }
    }

    /// Step 2: the matched route's rate limits (one store call). `body`: the
    /// request body when the route's keys need it.
    pub(super) async fn limits(
        &self,
        req: &Parts,
        body: Option<&BodyPrefix>,
        ctx: &mut Ctx,
    ) -> Next {
        let Some(rt) = ctx.rt.clone() else {
            return Next::Forward;
        };
        let Some(route) = ctx.route.and_then(|i| rt.routes.get(i)) else {
            return Next::Forward;
        };
        if route.limits.is_empty() {
            return Next::Forward;
        }
        let ip = ctx
            .client_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let cells: std::result::Result<Vec<Cell>, Reason> = route
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(Cell {
                    key: ratelimit::key_for(&route.name, i, &l.key, ip, &req.headers, body)?,
                    emission_us: l.emission_us(),
                    window_us: l.window_us,
                    consume: true,
                })
            })
            .collect();
        let cells = match cells {
            Ok(cells) => cells,
            Err(reason) => return ctx.deny(reason, has_body(&req.headers)),
        };
        match self.state.store.rate_check(&cells).await {
            Err(e) => {
                self.state
                    .metrics
                    .store_errors
                    .with_label_values(&["ratelimit"])
                    .inc();
                let on_error = rt.store.on_error;
                tracing::warn!(error = %e, op = "ratelimit", route = route.name.as_str(), on_error = on_error.as_str(), "store error");
                match on_error {
                    OnError::Deny => ctx.deny(Reason::StoreUnavailable, has_body(&req.headers)),
                    OnError::Allow => Next::Forward,
                }
            }
            Ok(d) => {
                if !d.allowed {
                    let limits: Vec<&Limit> = route.limits.iter().collect();
                    let (policy, state) = ratelimit::headers(&limits, &d);
                    self.state
                        .metrics
                        .rate_limited
                        .with_label_values(&[route.name.as_str()])
                        .inc();
                    let retry = ratelimit::retry_after_secs(&d).to_string();
                    ctx.reason = Reason::RateLimited;
                    return ctx.respond(Answer::deny(
                        Reason::RateLimited,
                        vec![
                            ("Retry-After", Cow::Owned(retry)),
                            ("RateLimit-Policy", Cow::Owned(policy)),
                            ("RateLimit", Cow::Owned(state)),
                        ],
                        has_body(&req.headers),
                    ));
                }
                ctx.rate_decision = Some(d);
                ctx.failure_cells = cells
                    .into_iter()
                    .zip(&route.limits)
                    .filter(|(_, l)| l.count == Count::Failures)
                    .map(|(c, _)| c)
                    .collect();
                Next::Forward
            }
        }
    }
}
