//! Issuers with a remote `jwks_url`, against a JWKS provider written here (std
//! threads; mutable document, request counter, stop/start on the same port,
//! `Cache-Control: max-age`): a kid the provider adds later works without a restart
//! (one unknown-kid re-fetch); a provider outage keeps the keys that were serving;
//! 100 concurrent unknown-kid requests cause at most one fetch; before the keys ever
//! load, tokens are 503 `keys_unavailable` and `/readyz` is 503, until the background
//! retries (~1 s) succeed; scheduled refreshes follow max-age clamped to
//! [jwks_min_refresh, jwks_max_refresh]; `authgate_jwks_refresh_total` counts ok and
//! error; several issuers each have their own JWKS; a kid the provider never has is
//! 401 `unknown_key`; `oct` keys for HS256; a reload keeps fetched keys.

mod common;

use common::ops::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

const ISS: &str = "https://remote.test";
const REFRESH: &str = "authgate_jwks_refresh_total";

/// One RS256 issuer `remote` on `jwks_url`, a JWT route `/api/`, the admin token.
fn config(url: &str, timing: &str) -> String {
    GatewayConfig::new()
        .threads(2)
        .extra(&format!(
            r#"[admin]
token_env = "AUTHGATE_ADMIN_TOKEN"

[upstreams.app]
addrs = ["{{upstream}}"]

[issuers.remote]
issuer = "{ISS}"
audiences = ["api"]
algorithms = ["RS256"]
jwks_url = "{url}"
{timing}

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "jwt"
"#
        ))
        .toml()
}

const TIMING: &str = r#"jwks_cooldown = "10s"
jwks_min_refresh = "1s"
jwks_max_refresh = "10m""#;

/// RS256 token for `iss` with kid `kid`, signed by `key_file`.
fn token_for(iss: &str, key_file: &str, kid: &str, sub: &str) -> String {
    sign_kid(Algorithm::RS256, &rsa_key(key_file), kid, &claims(iss, sub))
}
fn k1_token(sub: &str) -> String {
    token_for(ISS, "rsa_priv.pem", "k1", sub)
}
fn k2_token(sub: &str) -> String {
    token_for(ISS, "rsa2_priv.pem", "k2", sub)
}

fn refresh_count(gw: &Gateway, issuer: &str, result: &str) -> f64 {
    metric(
        &gw.metrics(),
        REFRESH,
        &[("issuer", issuer), ("result", result)],
    )
    .unwrap_or(0.0)
}

/// Waits (up to `secs`) until `/readyz` is 200.
#[track_caller]
fn wait_ready(gw: &Gateway, secs: u64) {
    let ok = poll_until(Duration::from_secs(secs), || {
        (gw.admin_get("/readyz").status == 200).then_some(())
    });
    assert!(
        ok.is_some(),
        "/readyz not 200 within {secs} s: {}\n{}",
        gw.admin_get("/readyz").text(),
        gw.logs()
    );
}

/// Waits (up to `secs`) until `f` is true.
#[track_caller]
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    assert!(
        poll_until(Duration::from_secs(secs), || f().then_some(())).is_some(),
        "{what}: not within {secs} s"
    );
}

#[test]
fn rotation_adds_k2_without_restart_and_an_outage_keeps_the_keys() {
    let mut jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    let (gw, up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    assert_eq!(jwks.count(), 1, "one initial fetch");

    let r = gw.get_bearer("/api/a", &k1_token("alice"));
    assert_eq!(r.status, 200, "k1: {}", r.text());
    let got = up.last();
    assert_eq!(got.header("x-auth-subject").as_deref(), Some("alice"));
    assert_eq!(got.header("x-auth-issuer").as_deref(), Some("remote"));

    // The provider publishes k2: a k2 token works at once, through one re-fetch.
    jwks.set_keys(&[rs_jwk("k1"), rs_jwk("k2")]);
    let r = gw.get_bearer("/api/b", &k2_token("bob"));
    assert_eq!(r.status, 200, "k2 after rotation: {}", r.text());
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("bob"));
    assert_eq!(jwks.count(), 2, "exactly one re-fetch for the new kid");
    // known kids need no fetch
    for _ in 0..5 {
        assert_eq!(gw.get_bearer("/api/c", &k1_token("alice")).status, 200);
        assert_eq!(gw.get_bearer("/api/d", &k2_token("bob")).status, 200);
    }
    assert_eq!(jwks.count(), 2, "known kids must not cause fetches");

    // The provider goes down: both keys keep serving.
    jwks.stop();
    let t1 = k1_token("alice");
    let t2 = k2_token("bob");
    assert_eq!(gw.get_bearer("/api/e", &t1).status, 200);
    assert_eq!(gw.get_bearer("/api/f", &t2).status, 200);
    assert_eq!(
        gw.admin_get("/readyz").status,
        200,
        "keys loaded once: ready"
    );
}

#[test]
fn failed_scheduled_refreshes_keep_the_keys_and_are_counted() {
    let mut jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1"), rs_jwk("k2")]));
    jwks.set_max_age(Some(1));
    let (gw, _up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    wait_for(10, "a second scheduled fetch (max-age=1)", || {
        jwks.count() >= 2
    });
    wait_for(10, "jwks_refresh_total{result=ok} >= 2", || {
        refresh_count(&gw, "remote", "ok") >= 2.0
    });
    assert_eq!(gw.get_bearer("/api/a", &k1_token("alice")).status, 200);

    // provider down: refreshes fail, are counted, the keys keep serving
    jwks.stop();
    wait_for(10, "jwks_refresh_total{result=error} >= 2", || {
        refresh_count(&gw, "remote", "error") >= 2.0
    });
    assert_eq!(gw.get_bearer("/api/b", &k1_token("alice")).status, 200);
    assert_eq!(gw.get_bearer("/api/c", &k2_token("bob")).status, 200);

    // provider answers 500, then garbage, then a JWKS with no usable key: each
    // failure is counted and the old keys keep serving
    jwks.restart();
    for (what, status, body) in [
        ("HTTP 500", 500, jwks_doc(&[rs_jwk("k1")])),
        ("not JSON", 200, "<html>maintenance</html>".to_string()),
        ("no keys", 200, json!({"keys": []}).to_string()),
    ] {
        jwks.set_status(status);
        jwks.set_body(&body);
        let before = refresh_count(&gw, "remote", "error");
        wait_for(10, &format!("{what}: a refresh error counted"), || {
            refresh_count(&gw, "remote", "error") > before
        });
        let r = gw.get_bearer("/api/d", &k2_token("bob"));
        assert_eq!(r.status, 200, "{what}: old keys must serve: {}", r.text());
        assert_eq!(gw.admin_get("/readyz").status, 200, "{what}");
    }

    // The provider drops k2 (a real rotation): a refresh removes it.
    jwks.set_status(200);
    jwks.set_keys(&[rs_jwk("k1")]);
    let t2 = k2_token("bob");
    wait_for(10, "k2 removed by a scheduled refresh", || {
        gw.get_bearer("/api/e", &t2).status == 401
    });
    assert_invalid(&gw.get_bearer("/api/e", &t2), "unknown_key", &t2);
    assert_eq!(gw.get_bearer("/api/f", &k1_token("alice")).status, 200);
}

#[test]
fn keys_unavailable_until_the_first_load_then_background_retries_succeed() {
    // The provider is down when the gateway starts.
    let mut jwks = JwksServer::not_started(&jwks_doc(&[rs_jwk("k1")]));
    let (gw, up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    let t1 = k1_token("alice");
    let unknown = token_for(ISS, "rsa_priv.pem", "never", "alice");
    for t in [&t1, &unknown] {
        let r = gw.get_bearer("/api/a", t);
        assert_error(&r, 503, "unavailable", "keys_unavailable");
        assert_no_token(&r, t);
    }
    let r = gw.admin_get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    // requests without a token are still 401 (no keys needed to say so)
    assert_eq!(gw.get("/api/a", &[]).status, 401);
    wait_for(10, "jwks_refresh_total{result=error} counted", || {
        refresh_count(&gw, "remote", "error") >= 2.0
    });
    assert_eq!(up.hits(), 0);
    let text = gw.metrics();
    assert!(
        metric(
            &text,
            "authgate_requests_total",
            &[
                ("route", "api"),
                ("outcome", "error"),
                ("reason", "keys_unavailable")
            ]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );

    // The provider comes up: within a few retries the keys load.
    jwks.restart();
    wait_for(5, "tokens pass once the provider is up", || {
        gw.get_bearer("/api/b", &t1).status == 200
    });
    assert_eq!(gw.admin_get("/readyz").status, 200);
    assert!(refresh_count(&gw, "remote", "ok") >= 1.0);
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("alice"));
}

/// 100 requests at once, each with `token`; returns the statuses.
fn burst(gw: &Gateway, token: &str, n: usize) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (addr, token, barrier) =
                (gw.proxy_addr.clone(), token.to_string(), barrier.clone());
            thread::spawn(move || {
                let auth = format!("Bearer {token}");
                barrier.wait();
                match try_request(
                    &addr,
                    "GET",
                    &format!("/api/burst/{i}"),
                    &[("Authorization", &auth)],
                    b"",
                ) {
                    Ok(r) => r.status,
                    Err(e) => panic!("request {i}: {e}"),
                }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A fresh gateway on a provider serving k1 whose answers take 300 ms (so a burst
/// overlaps the fetch), once its keys have loaded.
fn slow_provider_gateway() -> (JwksServer, Gateway, Upstream) {
    let jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    jwks.set_delay(Duration::from_millis(300));
    let (gw, up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    (jwks, gw, up)
}

#[test]
fn concurrent_requests_with_a_never_published_kid_cause_one_fetch() {
    let (jwks, gw, up) = slow_provider_gateway();
    let before = jwks.count();
    let never = token_for(ISS, "rsa_priv.pem", "never-published", "mallory");
    let statuses = burst(&gw, &never, 100);
    assert!(statuses.iter().all(|s| *s == 401), "all 401: {statuses:?}");
    assert_invalid(&gw.get_bearer("/api/x", &never), "unknown_key", &never);
    let fetches = jwks.count() - before;
    assert!(fetches <= 1, "{fetches} fetches for one unknown-kid burst");
    assert_eq!(up.hits(), 0);
}

#[test]
fn concurrent_requests_with_a_newly_published_kid_cause_one_fetch() {
    let (jwks, gw, up) = slow_provider_gateway();
    jwks.set_keys(&[rs_jwk("k1"), rs_jwk("k2")]);
    let before = jwks.count();
    let statuses = burst(&gw, &k2_token("bob"), 100);
    assert!(statuses.iter().all(|s| *s == 200), "all 200: {statuses:?}");
    assert_eq!(up.hits(), 100);
    assert_eq!(
        jwks.count() - before,
        1,
        "exactly one fetch for the new kid"
    );
}

#[test]
fn refresh_metric_counts_fetches_not_the_requests_that_waited_for_one() {
    // `authgate_jwks_refresh_total` is "JWKS fetches" (docs/operations.md): one
    // re-fetch shared by 100 waiting requests is one fetch.
    let (jwks, gw, _up) = slow_provider_gateway();
    jwks.set_keys(&[rs_jwk("k1"), rs_jwk("k2")]);
    let before = jwks.count();
    let ok_before = refresh_count(&gw, "remote", "ok");
    let statuses = burst(&gw, &k2_token("bob"), 100);
    assert!(statuses.iter().all(|s| *s == 200), "all 200: {statuses:?}");
    let fetches = jwks.count() - before;
    assert_eq!(fetches, 1);
    assert_eq!(
        refresh_count(&gw, "remote", "ok") - ok_before,
        fetches as f64,
        "{fetches} fetch(es) but authgate_jwks_refresh_total{{result=\"ok\"}} grew by the number of waiting requests"
    );
}

#[test]
fn unknown_kid_refetch_respects_the_cooldown() {
    let jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    let timing = r#"jwks_cooldown = "2s"
jwks_min_refresh = "1s"
jwks_max_refresh = "10m""#;
    let (gw, _up) = Gateway::with_upstream(&config(&jwks.url(), timing), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    let base = jwks.count();
    let never = token_for(ISS, "rsa_priv.pem", "nope", "mallory");
    assert_invalid(&gw.get_bearer("/api/a", &never), "unknown_key", &never);
    assert_eq!(jwks.count(), base + 1, "first unknown kid: one fetch");
    for _ in 0..10 {
        assert_invalid(&gw.get_bearer("/api/a", &never), "unknown_key", &never);
    }
    assert_eq!(
        jwks.count(),
        base + 1,
        "within the cooldown: no more fetches"
    );
    // k2 published during the cooldown: a later request (after the cooldown) finds it
    jwks.set_keys(&[rs_jwk("k1"), rs_jwk("k2")]);
    let t2 = k2_token("bob");
    wait_for(10, "k2 accepted once the cooldown has passed", || {
        gw.get_bearer("/api/b", &t2).status == 200
    });
    assert_eq!(jwks.count(), base + 2, "one more fetch after the cooldown");
}

#[test]
fn scheduled_refresh_follows_max_age_within_bounds() {
    // max-age far above jwks_max_refresh: refreshed at the max bound.
    let jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    jwks.set_max_age(Some(86400));
    let timing = r#"jwks_min_refresh = "1s"
jwks_max_refresh = "2s""#;
    let (gw, _up) = Gateway::with_upstream(&config(&jwks.url(), timing), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    wait_for(10, "max-age clamped to jwks_max_refresh = 2s", || {
        jwks.count() >= 3
    });
    drop(gw);

    // no Cache-Control: refreshed every jwks_max_refresh
    let jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    let (gw, _up) = Gateway::with_upstream(&config(&jwks.url(), timing), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    wait_for(10, "no max-age: refreshed at jwks_max_refresh", || {
        jwks.count() >= 3
    });
    drop(gw);

    // max-age=0 below jwks_min_refresh = 2s: never faster than the floor
    let jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    jwks.set_max_age(Some(0));
    let timing = r#"jwks_min_refresh = "2s"
jwks_max_refresh = "10m""#;
    let (gw, _up) = Gateway::with_upstream(&config(&jwks.url(), timing), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    let start = std::time::Instant::now();
    let first = jwks.count();
    wait_for(10, "max-age=0 still refreshes (at the floor)", || {
        jwks.count() > first
    });
    thread::sleep(Duration::from_secs(4));
    let fetched = jwks.count() - first;
    let elapsed = start.elapsed().as_secs_f64();
    // one fetch per 2 s at most (+1 for a boundary)
    let bound = (elapsed / 2.0).floor() as usize + 1;
    assert!(
        fetched <= bound,
        "{fetched} fetches in {elapsed:.1} s with jwks_min_refresh = 2s"
    );
    drop(gw);

    // max-age within the bounds: honoured (a fetch every 1 s here)
    let jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    jwks.set_max_age(Some(1));
    let (gw, _up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    wait_for(10, "max-age=1 honoured", || jwks.count() >= 4);
}

#[test]
fn several_issuers_each_with_their_own_jwks() {
    let a = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    let b = JwksServer::start(&jwks_doc(&[rs_jwk("k2")]));
    let text = GatewayConfig::new()
        .threads(2)
        .extra(&format!(
            r#"[upstreams.app]
addrs = ["{{upstream}}"]

[issuers.alpha]
issuer = "https://alpha.test"
audiences = ["api"]
algorithms = ["RS256"]
jwks_url = "{}"
jwks_cooldown = "10s"
jwks_min_refresh = "1s"

[issuers.beta]
issuer = "https://beta.test"
audiences = ["api"]
algorithms = ["RS256"]
jwks_url = "{}"
jwks_cooldown = "10s"
jwks_min_refresh = "1s"

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "jwt"

[[routes]]
name = "beta-only"
path_prefix = "/beta/"
upstream = "app"
auth = "jwt"
issuers = ["beta"]
"#,
            a.url(),
            b.url()
        ))
        .toml();
    let (gw, up) = Gateway::with_upstream(&text, &[]);
    wait_ready(&gw, 10);
    assert_eq!((a.count(), b.count()), (1, 1));

    let ta = token_for("https://alpha.test", "rsa_priv.pem", "k1", "ann");
    let tb = token_for("https://beta.test", "rsa2_priv.pem", "k2", "ben");
    assert_eq!(gw.get_bearer("/api/a", &ta).status, 200);
    assert_eq!(up.last().header("x-auth-issuer").as_deref(), Some("alpha"));
    assert_eq!(gw.get_bearer("/api/b", &tb).status, 200);
    assert_eq!(up.last().header("x-auth-issuer").as_deref(), Some("beta"));
    assert_eq!(gw.get_bearer("/beta/b", &tb).status, 200);

    // alpha's provider does not publish k2: alpha's k2 token is unknown_key even
    // though beta has a k2, and only alpha's provider is asked again.
    let cross = token_for("https://alpha.test", "rsa2_priv.pem", "k2", "eve");
    assert_invalid(&gw.get_bearer("/api/c", &cross), "unknown_key", &cross);
    assert_eq!((a.count(), b.count()), (2, 1));
    // beta's k2 kid, signed by the wrong key
    let forged = token_for("https://beta.test", "rsa_priv.pem", "k2", "eve");
    assert_invalid(&gw.get_bearer("/api/d", &forged), "bad_signature", &forged);
    // an alpha token on the beta-only route: refused without asking anybody
    let r = gw.get_bearer("/beta/x", &ta);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!((a.count(), b.count()), (2, 1));

    let text = gw.metrics();
    for issuer in ["alpha", "beta"] {
        assert!(
            metric(&text, REFRESH, &[("issuer", issuer), ("result", "ok")]).unwrap_or(0.0) >= 1.0,
            "{issuer}: {text}"
        );
    }
}

#[test]
fn a_kid_the_provider_never_has_is_unknown_key() {
    let jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1"), rs_jwk("k2")]));
    let (gw, up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    let t = token_for(ISS, "rsa_priv.pem", "k-never", "mallory");
    assert_invalid(&gw.get_bearer("/api/a", &t), "unknown_key", &t);
    // no kid at all: every RS256 key is tried, k1 verifies
    let nokid = sign(
        Algorithm::RS256,
        &rsa_key("rsa_priv.pem"),
        &claims(ISS, "alice"),
    );
    assert_eq!(gw.get_bearer("/api/b", &nokid).status, 200);
    assert_eq!(up.hits(), 1);
}

#[test]
fn a_token_without_kid_never_causes_a_fetch() {
    let jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    let (gw, _up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    let base = jwks.count();
    // signed by rsa2 (k2), which the provider does not publish, and no kid
    let t = sign(
        Algorithm::RS256,
        &rsa_key("rsa2_priv.pem"),
        &claims(ISS, "mallory"),
    );
    for _ in 0..3 {
        assert_invalid(&gw.get_bearer("/api/a", &t), "bad_signature", &t);
    }
    assert_eq!(jwks.count(), base, "a token without kid caused a fetch");
}

#[test]
fn jwks_url_may_serve_oct_keys_for_hs256() {
    let secret = b"remote-oct-secret-0123456789abcdef0123";
    let jwks = JwksServer::start(
        &json!({"keys": [{"kty": "oct", "kid": "h1", "alg": "HS256", "k": b64u(secret)}]})
            .to_string(),
    );
    let text = config(&jwks.url(), TIMING).replace(r#"["RS256"]"#, r#"["HS256"]"#);
    let (gw, up) = Gateway::with_upstream(&text, &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let t = sign_kid(Algorithm::HS256, &key, "h1", &claims(ISS, "hal"));
    assert_eq!(gw.get_bearer("/api/a", &t).status, 200);
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("hal"));
    let wrong = sign_kid(Algorithm::HS256, &hs_key("other"), "h1", &claims(ISS, "x"));
    assert_invalid(&gw.get_bearer("/api/b", &wrong), "bad_signature", &wrong);
}

#[test]
fn reload_keeps_fetched_keys_and_a_new_url_loads_in_the_background() {
    let mut jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    let (gw, _up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    let t1 = k1_token("alice");
    assert_eq!(gw.get_bearer("/api/a", &t1).status, 200);

    // The provider is down; a reload with the same issuer keeps its keys.
    jwks.stop();
    let current = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        format!(
            "{current}\n[[routes]]\nname = \"more\"\npath_prefix = \"/more/\"\nupstream = \"app\"\nauth = \"jwt\"\n"
        ),
    )
    .unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get_bearer("/api/b", &t1).status, 200, "keys kept");
    assert_eq!(gw.get_bearer("/more/b", &t1).status, 200, "new route");
    assert_eq!(gw.admin_get("/readyz").status, 200);

    // A new jwks_url (another provider, with k2 only): its keys load in the
    // background; meanwhile 503, then k2 passes and k1 is unknown.
    let other = JwksServer::start(&jwks_doc(&[rs_jwk("k2")]));
    let current = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, current.replace(&jwks.url(), &other.url())).unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    let t2 = k2_token("bob");
    wait_for(5, "the new provider's keys serve", || {
        gw.get_bearer("/api/c", &t2).status == 200
    });
    assert_eq!(gw.admin_get("/readyz").status, 200);
    assert!(other.count() >= 1);
    let r = gw.get_bearer("/api/d", &t1);
    assert_invalid(&r, "unknown_key", &t1);
}

#[test]
fn a_reload_that_only_retunes_jwks_timing_keeps_the_keys() {
    // Same issuer, same jwks_url, only jwks_cooldown / jwks_min_refresh changed, while
    // the provider is down: the keys fetched from that URL must keep serving.
    let mut jwks = JwksServer::start(&jwks_doc(&[rs_jwk("k1")]));
    let (gw, up) = Gateway::with_upstream(&config(&jwks.url(), TIMING), &[ADMIN_ENV]);
    wait_ready(&gw, 10);
    let t1 = k1_token("alice");
    assert_eq!(gw.get_bearer("/api/a", &t1).status, 200);
    jwks.stop();
    let retuned = r#"jwks_cooldown = "30s"
jwks_min_refresh = "5s"
jwks_max_refresh = "10m""#;
    gw.write_config(&config(&jwks.url(), retuned).replace("{upstream}", &up.addr));
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.get_bearer("/api/b", &t1);
    assert_eq!(
        r.status,
        200,
        "a timing-only reload dropped the keys of an unchanged jwks_url: {}",
        r.text()
    );
    assert_eq!(gw.admin_get("/readyz").status, 200);
}
