//! Path normalisation + host extraction + route resolution against a
//! brute-force reference of the contract's rules (an exact `path` beats any
//! prefix, the longest prefix wins, file order breaks ties, a route whose
//! `host` or `methods` don't match is skipped).
#![no_main]

use authgate::router::{host_of, normalize, Matcher, Router};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct RouteIn {
    path: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    methods: Vec<String>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<RouteIn>,
    host_header: Option<String>,
    method: String,
    path: String,
}

/// A segment a backend may resolve as `.` or `..`: also encoded (`%2e`) and
/// with path parameters (`..;x`, as servlet containers read it).
fn is_dot_segment(seg: &str) -> bool {
    let seg = seg.split(';').next().unwrap_or(seg);
    let lower = seg.to_ascii_lowercase().replace("%2e", ".");
    lower == "." || lower == ".."
}

/// Separators a backend may see that the router would not.
fn has_hidden_separator(p: &str) -> bool {
    let l = p.to_ascii_lowercase();
    l.contains('\\') || l.contains("%2f") || l.contains("%5c")
}

fn accepts(m: &Matcher, host: &str, method: &str) -> bool {
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == method) {
        return false;
    }
    match &m.host {
        None => true,
        Some(h) => match h.strip_prefix("*.") {
            Some(suffix) => {
                let host = host.to_ascii_lowercase();
                host.len() > suffix.len() + 1
                    && host.ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
            }
            None => h.eq_ignore_ascii_case(host),
        },
    }
}

fn reference(ms: &[Matcher], host: &str, method: &str, path: &str) -> Option<usize> {
    if let Some(i) = ms
        .iter()
        .position(|m| m.path.as_deref() == Some(path) && accepts(m, host, method))
    {
        return Some(i);
    }
    let mut best: Option<(usize, usize)> = None;
    for (i, m) in ms.iter().enumerate() {
        if m.path.is_some() {
            continue;
        }
        let Some(p) = m.path_prefix.as_deref() else {
            continue;
        };
        if path.starts_with(p) && accepts(m, host, method) && best.is_none_or(|(_, l)| p.len() > l)
        {
            best = Some((i, p.len()));
        }
    }
    best.map(|(i, _)| i)
}

fuzz_target!(|input: Input| {
    let matchers: Vec<Matcher> = input
        .routes
        .into_iter()
        .take(12)
        .map(|r| Matcher {
            path: r.path,
            path_prefix: r.prefix,
            host: r.host,
            methods: r.methods.into_iter().take(4).collect(),
        })
        .collect();
    let router = Router::new(matchers.clone());
    let host = host_of(input.host_header.as_deref());
    if let Some(h) = input.host_header.as_deref() {
        assert!(
            h.contains(host),
            "host_of({h:?}) = {host:?} is not part of it"
        );
    }
    match normalize(&input.path) {
        Ok(p) => {
            assert!(p.starts_with('/') || p == "*", "{p:?}");
            assert!(!p.contains("//"), "normalize left `//` in {p:?}");
            assert!(
                !p.split('/').any(is_dot_segment),
                "normalize let a dot segment through: {p:?}"
            );
            assert!(
                !has_hidden_separator(&p),
                "normalize let an encoded separator through: {p:?}"
            );
            assert_eq!(normalize(&p).as_deref(), Ok(&*p), "not idempotent");
            assert_eq!(
                router.resolve(host, &input.method, &p),
                reference(&matchers, host, &input.method, &p),
                "route for {:?} {:?} {p:?}",
                host,
                input.method
            );
        }
        Err(_) => {
            assert!(
                !(input.path.starts_with('/') || input.path == "*")
                    || input.path.split('/').any(is_dot_segment)
                    || has_hidden_separator(&input.path),
                "refused a safe path {:?}",
                input.path
            );
        }
    }
});
