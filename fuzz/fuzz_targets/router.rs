//! Path normalisation + host extraction + route resolution against a
//! brute-force reference of the contract's rules (an exact `path` beats any
//! prefix, the longest prefix wins, file order breaks ties, a route whose
//! `host` or `methods` don't match is skipped).
#![no_main]

use authgate::testing::{host_of, normalize, Matcher, Router};
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

#[path = "../../tests/reference/route.rs"]
mod route_reference;
use route_reference::{has_hidden_separator, is_dot_segment, reference, unsafe_path};

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
                unsafe_path(&input.path),
                "refused a safe path {:?}",
                input.path
            );
        }
    }
});
