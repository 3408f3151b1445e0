//! The contract's routing rules, written as plainly as possible and
//! independently of `src/router.rs`: the reference that the property tests
//! (`tests/proptest_routing.rs`) and the `router` fuzz target compare the
//! router with. One copy, included by both with `#[path]`.

use authgate::testing::Matcher;

/// A segment a backend may resolve as `.` or `..`: also encoded (`%2e`) and
/// with path parameters (`..;x`, as servlet containers read it).
pub fn is_dot_segment(seg: &str) -> bool {
    let seg = seg.split(';').next().unwrap_or(seg);
    let s = seg.to_ascii_lowercase().replace("%2e", ".");
    s == "." || s == ".."
}

/// What the router must refuse besides dot-segments: separators a backend
/// may see that the router would not (`\`, `%2f`, `%5c`).
pub fn has_hidden_separator(p: &str) -> bool {
    let l = p.to_ascii_lowercase();
    l.contains('\\') || l.contains("%2f") || l.contains("%5c")
}

/// Whether a path must be refused before routing.
pub fn unsafe_path(p: &str) -> bool {
    !(p.starts_with('/') || p == "*")
        || p.split('/').any(is_dot_segment)
        || has_hidden_separator(p)
        || bad_escape(p)
}

/// A `%` that does not start a `%XX` escape (backends read it differently,
/// and decoding once can make a new escape: `%2%65` is `%2e`).
pub fn bad_escape(p: &str) -> bool {
    let b = p.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
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

/// The route the contract picks: an exact `path` first, then the longest
/// matching prefix, file order breaking ties; a route whose `host` or
/// `methods` don't match is skipped.
pub fn reference(ms: &[Matcher], host: &str, method: &str, path: &str) -> Option<usize> {
    if let Some(i) = ms
        .iter()
        .position(|m| m.path.as_deref() == Some(path) && accepts(m, host, method))
    {
        return Some(i);
    }
    let mut best: Option<(usize, usize)> = None;
    for (i, m) in ms.iter().enumerate() {
        let (None, Some(p)) = (&m.path, m.path_prefix.as_deref()) else {
            continue;
        };
        if path.starts_with(p) && accepts(m, host, method) && best.is_none_or(|(_, l)| p.len() > l)
        {
            best = Some((i, p.len()));
        }
    }
    best.map(|(i, _)| i)
}
