//! The one shape of a rate-limit store key, written apart from the gateway
//! so the property test and the fuzz target check the same rule:
//! `authgate:rl:{<route hash>:<value hash>}:<limit index>`, each hash 32
//! hex digits, the hash tag being the limited value on its route.

pub fn key_shape_ok(key: &str, index: usize) -> bool {
    let Some(rest) = key.strip_prefix("authgate:rl:{") else {
        return false;
    };
    let hex = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let Some((tag, tail)) = rest.split_once('}') else {
        return false;
    };
    tag.split_once(':')
        .is_some_and(|(route, value)| hex(route) && hex(value))
        && tail.strip_prefix(':') == Some(index.to_string().as_str())
}
