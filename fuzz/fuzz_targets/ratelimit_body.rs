//! Rate-limit keys: `KeySpec::parse` on arbitrary specs and `key_for` on
//! arbitrary headers and bodies. Never a panic; keys have one fixed shape; a
//! body that is not whole keys nothing but the client IP (a later duplicate
//! field could decide for the backend: docs/security.md F2); a JSON field is
//! the one serde_json's last-wins reading gives; without the field the key
//! falls back to the client IP; only a form field with two different values
//! is refused (`bad_request`).
#![no_main]

use authgate::testing::{key_for, BodyPrefix, KeySpec};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Arbitrary, Debug)]
struct Input {
    spec: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    complete: bool,
    v6: bool,
    ip: [u8; 16],
}

#[path = "../../tests/reference/rl_key.rs"]
mod rl_key;
use rl_key::key_shape_ok as shape_ok;


fuzz_target!(|input: Input| {
    let Ok(spec) = KeySpec::parse(&input.spec) else {
        return;
    };
    let ip = if input.v6 {
        IpAddr::V6(Ipv6Addr::from(input.ip))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            input.ip[0],
            input.ip[1],
            input.ip[2],
            input.ip[3],
        ))
    };
    let mut headers = HeaderMap::new();
    for (k, v) in input.headers.iter().take(8) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(k, v);
        }
    }
    let body = BodyPrefix {
        bytes: input.body.clone(),
        complete: input.complete,
    };
    let by_ip = match key_for("route", 3, &KeySpec::Ip, ip, &headers, None) {
        Ok(k) => k,
        Err(e) => panic!("an IP key refused: {e:?}"),
    };
    let key = match key_for("route", 3, &spec, ip, &headers, Some(&body)) {
        Ok(k) => k,
        // only a form field with two different values is refused
        Err(e) => {
            assert!(matches!(spec, KeySpec::Form(_)), "{spec:?} refused: {e:?}");
            assert_eq!(e, authgate::testing::Reason::BadRequest);
            assert!(input.complete, "a body prefix refused");
            return;
        }
    };
    assert!(shape_ok(&key, 3), "bad key shape {key:?}");
    assert_eq!(
        Ok(key.clone()),
        key_for("route", 3, &spec, ip, &headers, Some(&body))
    );
    if spec == KeySpec::Ip {
        assert_eq!(key, by_ip);
    }
    if spec.needs_body() && !input.complete {
        assert_eq!(key, by_ip, "a body prefix keyed on a field");
    }
    // A JSON field is the whole body's, read as serde_json reads it.
    if let KeySpec::Json(field) = &spec {
        if input.complete && !field.contains('.') {
            let v = serde_json::from_slice::<serde_json::Value>(&input.body).ok();
            let want = match v.as_ref().and_then(|v| v.get(field)) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            if want.is_none() {
                assert_eq!(key, by_ip);
            }
        }
    }
});
