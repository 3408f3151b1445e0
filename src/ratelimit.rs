//! Rate limits for the routes an operator marks (typically login paths).
//! GCRA (the generic cell rate algorithm): each key holds one "theoretical
//! arrival time", so counts are exact over any sliding window (no
//! fixed-window double burst) and a key costs one number in the store. With
//! Redis, one atomic script checks every limit of a request and consumes
//! them all or none, so every instance shares one budget.
//!
//! Keys: the client IP, a header, or a field of a form / JSON body. Body
//! fields are read from the whole body (bounded), which pingora then
//! forwards unchanged; a request without the field is limited by IP instead,
//! never not at all. Key values are trimmed, lower-cased and hashed, so keys
//! have a fixed size and case variants share one budget.

use crate::denial::Reason;
use http::{HeaderMap, HeaderName};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// Longest body read to find a form or JSON field (bytes): a login body is
/// far smaller, and a longer one on a body-keyed route gets 413 (the key
/// must come from the whole body: docs/security.md F2). Equal to pingora's
/// retry buffer, so what was read is still forwarded whole.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What a limit is keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    Ip,
    Header(HeaderName),
    Form(String),
    Json(String),
}

impl KeySpec {
    /// Parses `ip`, `header:NAME`, `form:FIELD` or `json:FIELD`.
    pub fn parse(s: &str) -> Result<KeySpec, String> {
        match s.split_once(':') {
            None if s == "ip" => Ok(KeySpec::Ip),
            Some(("header", n)) => HeaderName::from_bytes(n.trim().as_bytes())
                .map(KeySpec::Header)
                .map_err(|_| format!("`{n}` is not a header name")),
            Some(("form", f)) if !f.is_empty() => Ok(KeySpec::Form(f.to_string())),
            Some(("json", f)) if !f.is_empty() => Ok(KeySpec::Json(f.to_string())),
            _ => Err(format!(
                "unknown key `{s}` (expected \"ip\", \"header:NAME\", \"form:FIELD\" or \"json:FIELD\")"
            )),
        }
    }

    /// Whether this key needs the request body.
    pub fn needs_body(&self) -> bool {
        matches!(self, KeySpec::Form(_) | KeySpec::Json(_))
    }

    fn label(&self) -> String {
        match self {
            KeySpec::Ip => "ip".into(),
            KeySpec::Header(h) => format!("header:{h}"),
            KeySpec::Form(f) => format!("form:{f}"),
            KeySpec::Json(f) => format!("json:{f}"),
        }
    }
}

/// Which requests a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    All,
    /// Only requests the upstream answered 401 or 403. Each attempt is
    /// charged before it is forwarded and refunded when the answer is not a
    /// failure, so parallel attempts cannot outrun the budget.
    Failures,
}

/// One compiled `[[routes.rate_limits]]`.
#[derive(Debug, Clone)]
pub struct Limit {
    pub key: KeySpec,
    pub limit: u64,
    pub window_us: u64,
    pub count: Count,
    /// The policy name in `RateLimit-Policy` / `RateLimit` headers.
    pub policy: String,
}

impl Limit {
    pub fn new(key: KeySpec, limit: u64, window_us: u64, count: Count) -> Limit {
        let policy = key.label();
        Limit {
            key,
            limit,
            window_us,
            count,
            policy,
        }
    }

    /// Microseconds one request adds to the key's arrival time.
    pub fn emission_us(&self) -> u64 {
        (self.window_us / self.limit.max(1)).max(1)
    }
}

/// The parameters of one limit for one request, as the store sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub key: String,
    pub emission_us: u64,
    pub window_us: u64,
    /// Consume on pass (`count = "all"`); `false` only checks (failures).
    pub consume: bool,
}

/// The store's answer for a request's cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// When refused: how long until one more request would pass.
    pub retry_after_us: u64,
    /// Per cell, after the decision: microseconds until its budget is full
    /// again (TAT - now).
    pub backlog_us: Vec<u64>,
}

/// Pure GCRA over TAT values (µs): `tats[i]` is the stored arrival time of
/// cell i (0 = none). Returns the decision and the new TATs to store for
/// the cells that are consumed.
pub fn gcra(cells: &[Cell], tats: &[u64], now: u64) -> (Decision, Vec<Option<u64>>) {
    let mut allowed = true;
    let mut retry = 0u64;
    let mut news = Vec::with_capacity(cells.len());
    for (c, tat) in cells.iter().zip(tats) {
        let base = (*tat).max(now);
        let new = base + c.emission_us;
        if new - now > c.window_us {
            allowed = false;
            retry = retry.max(new - now - c.window_us);
        }
        news.push((base, new));
    }
    let mut backlog = Vec::with_capacity(cells.len());
    let mut writes = Vec::with_capacity(cells.len());
    for (c, (base, new)) in cells.iter().zip(news) {
        if allowed && c.consume {
            backlog.push(new - now);
            writes.push(Some(new));
        } else {
            backlog.push(base - now);
            writes.push(None);
        }
    }
    (
        Decision {
            allowed,
            retry_after_us: retry,
            backlog_us: backlog,
        },
        writes,
    )
}

/// Gives back one unit per cell (a `failures` attempt that did not fail):
/// the new TAT, or `None` when the budget is full again (drop the key).
pub fn gcra_refund(cells: &[Cell], tats: &[u64], now: u64) -> Vec<Option<u64>> {
    cells
        .iter()
        .zip(tats)
        .map(|(c, t)| t.checked_sub(c.emission_us).filter(|n| *n > now))
        .collect()
}

/// `RateLimit-Policy` and `RateLimit` header values (IETF httpapi
/// ratelimit-headers draft, structured-field form).
pub fn headers(limits: &[&Limit], d: &Decision) -> (String, String) {
    let mut policy = String::new();
    let mut state = String::new();
    for (i, (l, backlog)) in limits.iter().zip(&d.backlog_us).enumerate() {
        if i > 0 {
            policy.push_str(", ");
            state.push_str(", ");
        }
        let w = l.window_us / 1_000_000;
        let used = backlog.div_ceil(l.emission_us());
        let remaining = if d.allowed {
            l.limit.saturating_sub(used)
        } else {
            0
        };
        let reset = if d.allowed {
            backlog.div_ceil(1_000_000)
        } else {
            d.retry_after_us.div_ceil(1_000_000).max(1)
        };
        policy.push_str(&format!("\"{}\";q={};w={}", l.policy, l.limit, w.max(1)));
        state.push_str(&format!("\"{}\";r={};t={}", l.policy, remaining, reset));
    }
    (policy, state)
}

/// Retry-After in whole seconds, at least 1.
pub fn retry_after_secs(d: &Decision) -> u64 {
    d.retry_after_us.div_ceil(1_000_000).max(1)
}

fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn normalize(v: &str) -> String {
    v.trim().to_lowercase()
}

/// A request's body, as far as it was read.
#[derive(Debug, Default)]
pub struct BodyPrefix {
    pub bytes: Vec<u8>,
    /// The bytes are the whole body. Fields are only taken from a whole
    /// body: in a prefix, a later duplicate could decide for the backend.
    pub complete: bool,
}

/// Every value of `field` in a URL-encoded form, in order.
fn form_values<'a>(body: &'a BodyPrefix, field: &'a str) -> impl Iterator<Item = String> + 'a {
    let text = if body.complete {
        std::str::from_utf8(&body.bytes).unwrap_or("")
    } else {
        ""
    };
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .ok()
    };
    text.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if dec(k).as_deref() == Some(field) {
            dec(v)
        } else {
            None
        }
    })
}

/// A form field's key value (trimmed, lower-cased), `None` when absent or
/// blank. A field that occurs with two different values is ambiguous:
/// backends disagree on which one counts (the first, the last, or both as
/// an array), so no key is safe and the request is refused (400).
fn form_field(body: &BodyPrefix, field: &str) -> Result<Option<String>, Reason> {
    let mut values = form_values(body, field).map(|v| normalize(&v));
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|v| v != first) {
        return Err(Reason::BadRequest);
    }
    Ok(Some(first).filter(|v| !v.is_empty()))
}

/// A field of a whole JSON body. Of duplicate keys the last counts, as in
/// `JSON.parse`, serde_json, Go and Jackson: the backend's reading.
fn json_field(body: &BodyPrefix, field: &str) -> Option<String> {
    if !body.complete {
        return None;
    }
    let v: Value = serde_json::from_slice(&body.bytes).ok()?;
    let obj = v.as_object()?;
    match crate::identity::lookup(obj, field)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The store key of one limit for one request:
/// `authgate:rl:{<route hash>:<value hash>}:<limit index>`. The hash tag is
/// the limited value on its route, so a Redis Cluster spreads the budgets of
/// different users (or IPs) over its masters, while the limits of one route
/// on the same value share a slot and are checked in one atomic script.
/// Falls back to the client IP when
/// the header or field is absent; a form field with two different values is
/// `bad_request` (see `form_field`).
pub fn key_for(
    route: &str,
    index: usize,
    spec: &KeySpec,
    ip: IpAddr,
    headers: &HeaderMap,
    body: Option<&BodyPrefix>,
) -> Result<String, Reason> {
    let value = match spec {
        KeySpec::Ip => None,
        KeySpec::Header(h) => headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(normalize)
            .filter(|v| !v.is_empty()),
        KeySpec::Form(f) => match body {
            Some(b) => form_field(b, f)?,
            None => None,
        },
        KeySpec::Json(f) => body.and_then(|b| json_field(b, f)).map(|v| normalize(&v)),
    };
    // the client IP as text only when it is the key (no allocation else)
    let ip_s;
    let (kind, v) = match &value {
        Some(v) => ("v", v.as_str()),
        None => {
            ip_s = ip.to_string();
            ("ip", ip_s.as_str())
        }
    };
    Ok(format!(
        "authgate:rl:{{{}:{}}}:{index}",
        digest(&[route.as_bytes()]),
        digest(&[kind.as_bytes(), v.as_bytes()])
    ))
}

/// The Redis Cluster hash tag of a store key: what lies between the first
/// `{` and the next `}` when that is not empty, else the whole key (the
/// rule Redis uses to pick a key's slot).
pub fn hash_tag(key: &str) -> &str {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag)
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key)
}

/// The request's cells grouped by hash tag (indices, in first-seen order):
/// each group lives in one cluster slot and can be one atomic script.
pub fn slot_groups(cells: &[Cell]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, c) in cells.iter().enumerate() {
        let tag = hash_tag(&c.key);
        match groups.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, g)) => g.push(i),
            None => groups.push((tag, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Joins the decisions of a request's slot groups, each checked atomically
/// on its own. The request passes only if every group passed; when one
/// refused, the groups that passed have consumed their cells and must be
/// refunded: their indices are returned, and their backlog is reported as
/// it will be after the refund.
pub fn join_groups(
    cells: &[Cell],
    groups: &[Vec<usize>],
    decisions: &[Decision],
) -> (Decision, Vec<usize>) {
    let allowed = decisions.iter().all(|d| d.allowed);
    let retry_after_us = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| d.retry_after_us)
        .max()
        .unwrap_or(0);
    let mut backlog_us = vec![0; cells.len()];
    let mut refund = Vec::new();
    for (g, d) in groups.iter().zip(decisions) {
        for (&i, b) in g.iter().zip(&d.backlog_us) {
            let consumed = d.allowed && cells.get(i).is_some_and(|c| c.consume);
            if let Some(slot) = backlog_us.get_mut(i) {
                *slot = if !allowed && consumed {
                    b.saturating_sub(cells.get(i).map_or(0, |c| c.emission_us))
                } else {
                    *b
                };
            }
            if !allowed && consumed {
                refund.push(i);
            }
        }
    }
    (
        Decision {
            allowed,
            retry_after_us,
            backlog_us,
        },
        refund,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(limit: u64, window_s: u64, consume: bool) -> Cell {
        let l = Limit::new(KeySpec::Ip, limit, window_s * 1_000_000, Count::All);
        Cell {
            key: "k".into(),
            emission_us: l.emission_us(),
            window_us: l.window_us,
            consume,
        }
    }

    #[test]
    fn five_per_minute_then_429_with_retry() {
        let cells = [cell(5, 60, true)];
        let mut tat = 0;
        let now = 1_000_000_000;
        for i in 0..5 {
            let (d, w) = gcra(&cells, &[tat], now);
            assert!(d.allowed, "request {i}");
            tat = w[0].unwrap();
        }
        let (d, w) = gcra(&cells, &[tat], now);
        assert!(!d.allowed);
        assert_eq!(w[0], None);
        assert_eq!(retry_after_secs(&d), 12);
        // No boundary double burst: a minute later, exactly 5 again.
        let later = now + 60_000_000;
        let mut ok = 0;
        for _ in 0..10 {
            let (d, w) = gcra(&cells, &[tat], later);
            if d.allowed {
                ok += 1;
                tat = w[0].unwrap();
            }
        }
        assert_eq!(ok, 5);
    }

    #[test]
    fn all_or_nothing_across_limits() {
        let cells = [cell(10, 60, true), cell(1, 60, true)];
        let (d, w) = gcra(&cells, &[0, 0], 1_000_000);
        assert!(d.allowed);
        let tats: Vec<u64> = w.iter().map(|x| x.unwrap()).collect();
        let (d, w) = gcra(&cells, &tats, 1_000_000);
        assert!(!d.allowed);
        assert!(
            w.iter().all(Option::is_none),
            "a refused request consumed a budget"
        );
    }

    #[test]
    fn body_fields() {
        let b = |s: &str, complete| BodyPrefix {
            bytes: s.as_bytes().to_vec(),
            complete,
        };
        // the key value: trimmed and lower-cased
        assert_eq!(
            form_field(&b("user=Alice&pw=x", true), "user"),
            Ok(Some("alice".into()))
        );
        assert_eq!(
            form_field(&b("user=a%20b+c&x", true), "user"),
            Ok(Some("a b c".into()))
        );
        assert_eq!(
            form_field(&b("user=alice&pw=x", false), "user"),
            Ok(None),
            "a prefix keys nothing"
        );
        assert_eq!(
            json_field(&b(r#"{"user":"bob"}"#, true), "user").as_deref(),
            Some("bob")
        );
        assert_eq!(json_field(&b(r#"{"user":"bob"}"#, false), "user"), None);
        // duplicate keys: the last, as the backend's JSON parser reads it
        assert_eq!(
            json_field(&b(r#"{"user":"random","user":"victim"}"#, true), "user").as_deref(),
            Some("victim")
        );
        let form = |body: &str| form_field(&b(body, true), "user");
        assert_eq!(
            form("user=random&pw=x&user=victim"),
            Err(Reason::BadRequest)
        );
        assert_eq!(form("user=&user=victim"), Err(Reason::BadRequest));
        assert_eq!(
            form("user=Alice&pw=x&user=alice+"),
            Ok(Some("alice".into()))
        );
        assert_eq!(form("user=alice"), Ok(Some("alice".into())));
        assert_eq!(form("user=+&pw=x"), Ok(None));
        assert_eq!(form("pw=x"), Ok(None));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let h = HeaderMap::new();
        let k1 = key_for(
            "r",
            0,
            &KeySpec::Form("user".into()),
            ip,
            &h,
            Some(&b("user=ALICE", true)),
        );
        let k2 = key_for(
            "r",
            0,
            &KeySpec::Form("user".into()),
            ip,
            &h,
            Some(&b("user=alice", true)),
        );
        let k3 = key_for(
            "r",
            0,
            &KeySpec::Form("user".into()),
            ip,
            &h,
            Some(&b("nouser=1", true)),
        );
        let k4 = key_for("r", 0, &KeySpec::Ip, ip, &h, None);
        let ambiguous = key_for(
            "r",
            0,
            &KeySpec::Form("user".into()),
            ip,
            &h,
            Some(&b("user=alice&user=bob", true)),
        );
        assert_eq!(ambiguous, Err(Reason::BadRequest));
        let (k1, k2, k3, k4) = (k1.unwrap(), k2.unwrap(), k3.unwrap(), k4.unwrap());
        assert_eq!(k1, k2);
        assert_ne!(k1, k3);
        assert_eq!(k3, k4, "a request without the field has its IP's key");
        // The tag is the limited value on its route: users differ, the
        // limits of one route on one value share it.
        let other = key_for("r", 0, &KeySpec::Ip, "10.0.0.2".parse().unwrap(), &h, None);
        let other = other.unwrap();
        assert_ne!(hash_tag(&k4), hash_tag(&other));
        let second = key_for("r", 1, &KeySpec::Ip, ip, &h, None).unwrap();
        assert_ne!(k4, second);
        assert_eq!(hash_tag(&k4), hash_tag(&second));
        let elsewhere = key_for("s", 0, &KeySpec::Ip, ip, &h, None).unwrap();
        assert_ne!(hash_tag(&k4), hash_tag(&elsewhere));
    }

    #[test]
    fn hash_tags_follow_redis() {
        assert_eq!(hash_tag("authgate:rl:{ab:cd}:0"), "ab:cd");
        assert_eq!(hash_tag("a{b}c{d}"), "b");
        assert_eq!(hash_tag("a{}b{c}"), "a{}b{c}");
        assert_eq!(hash_tag("a{b"), "a{b");
        assert_eq!(hash_tag("plain"), "plain");
    }

    fn keyed(key: &str, emission_us: u64) -> Cell {
        Cell {
            key: key.into(),
            emission_us,
            window_us: 60_000_000,
            consume: true,
        }
    }

    #[test]
    fn groups_by_slot_and_joins_all_or_nothing() {
        let cells = [
            keyed("rl:{ip}:0", 10),
            keyed("rl:{user}:1", 20),
            keyed("rl:{ip}:2", 30),
        ];
        let groups = slot_groups(&cells);
        assert_eq!(groups, vec![vec![0, 2], vec![1]]);
        let pass = |backlog: Vec<u64>| Decision {
            allowed: true,
            retry_after_us: 0,
            backlog_us: backlog,
        };
        // Both pass: the request passes, nothing to refund.
        let (d, refund) = join_groups(&cells, &groups, &[pass(vec![10, 30]), pass(vec![20])]);
        assert_eq!(d, pass(vec![10, 20, 30]));
        assert!(refund.is_empty());
        // The user's group refuses: the IP group consumed, so it is
        // refunded and reported as it will be after the refund.
        let refused = Decision {
            allowed: false,
            retry_after_us: 7,
            backlog_us: vec![55],
        };
        let (d, refund) = join_groups(&cells, &groups, &[pass(vec![15, 40]), refused.clone()]);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, 7);
        assert_eq!(d.backlog_us, vec![5, 55, 10]);
        assert_eq!(refund, vec![0, 2]);
        // Both refuse: the longest wait, no refund.
        let also = Decision {
            allowed: false,
            retry_after_us: 9,
            backlog_us: vec![1, 2],
        };
        let (d, refund) = join_groups(&cells, &groups, &[also, refused]);
        assert_eq!(d.retry_after_us, 9);
        assert_eq!(d.backlog_us, vec![1, 55, 2]);
        assert!(refund.is_empty());
    }

    #[test]
    fn header_values() {
        let l = Limit::new(KeySpec::Ip, 5, 60_000_000, Count::All);
        let d = Decision {
            allowed: true,
            retry_after_us: 0,
            backlog_us: vec![12_000_000],
        };
        let (p, s) = headers(&[&l], &d);
        assert_eq!(p, "\"ip\";q=5;w=60");
        assert_eq!(s, "\"ip\";r=4;t=12");
    }
}
