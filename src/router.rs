//! Request -> route: an exact `path` beats any prefix, among prefixes the
//! longest wins, and a candidate whose `host` or `methods` don't match is
//! skipped. Built once per config load; resolving allocates nothing.

use std::collections::HashMap;

/// What a route matches on (the rest of the route lives in the runtime).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    /// Lower-case host without port; a leading `*.` matches any subdomain.
    pub host: Option<String>,
    /// Upper-case method names; empty = any.
    pub methods: Vec<String>,
}

impl Matcher {
    fn accepts(&self, host: &str, method: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        match &self.host {
            None => true,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host
                            .get(host.len() - suffix.len()..)
                            .is_some_and(|t| t.eq_ignore_ascii_case(suffix))
                        && host.as_bytes().get(host.len() - suffix.len() - 1) == Some(&b'.')
                }
                None => h.eq_ignore_ascii_case(host),
            },
        }
    }
}

/// The compiled routing table.
#[derive(Debug, Default)]
pub struct Router {
    matchers: Vec<Matcher>,
    exact: HashMap<String, Vec<usize>>,
    /// Route indexes with a prefix, longest prefix first (stable: file order
    /// breaks ties).
    prefixes: Vec<usize>,
}

impl Router {
    /// Builds the table; route `i` is `matchers[i]`.
    pub fn new(matchers: Vec<Matcher>) -> Router {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut prefixes = Vec::new();
        for (i, m) in matchers.iter().enumerate() {
            if let Some(p) = &m.path {
                exact.entry(p.clone()).or_default().push(i);
            } else if m.path_prefix.is_some() {
                prefixes.push(i);
            }
        }
        prefixes.sort_by_key(|i| {
            std::cmp::Reverse(matchers[*i].path_prefix.as_deref().map_or(0, str::len))
        });
        Router {
            matchers,
            exact,
            prefixes,
        }
    }

    /// The route for a request, by index. `host` is the Host header without
    /// port, `path` the normalised path (see [`normalize`]).
    pub fn resolve(&self, host: &str, method: &str, path: &str) -> Option<usize> {
        if let Some(list) = self.exact.get(path) {
            if let Some(i) = list
                .iter()
                .find(|i| self.matchers[**i].accepts(host, method))
            {
                return Some(*i);
            }
        }
        self.prefixes.iter().copied().find(|i| {
            let m = &self.matchers[*i];
            m.path_prefix
                .as_deref()
                .is_some_and(|p| path.starts_with(p))
                && m.accepts(host, method)
        })
    }
}

/// Why a path cannot be routed safely.
#[derive(Debug, PartialEq, Eq)]
pub struct UnsafePath;

/// The path routing decides on, read the way the backends behind the
/// gateway may read it, so no spelling reaches a weaker route than the one
/// the backend serves:
/// - a path with dot-segments (`/./`, `/../`, also percent-encoded) is
///   refused, since a backend that resolves them would serve a different
///   route than the one authorized;
/// - percent-encoded unreserved characters (`%61` for `a`) are decoded
///   (RFC 3986 §6.2.2.2: Go, Flask and nginx decode them);
/// - `;params` are dropped from every segment (servlet containers do);
/// - runs of `/` are merged.
///
/// Only the match uses this: the path sent upstream is not changed.
/// Borrowed when nothing needs rewriting.
pub fn normalize(path: &str) -> Result<std::borrow::Cow<'_, str>, UnsafePath> {
    if !path.starts_with('/') && path != "*" {
        return Err(UnsafePath);
    }
    if path.contains('\\') || has_encoded_separator(path) {
        return Err(UnsafePath);
    }
    let plain = memchr::memchr2(b'%', b';', path.as_bytes()).is_none() && !path.contains("//");
    if plain {
        if path.split('/').any(is_dot_segment) {
            return Err(UnsafePath);
        }
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    // a `%` must start an escape: `%zz` or `%2%65` (which decodes to a
    // new `%2e`) are read differently by every backend that reads them
    let b = path.as_bytes();
    let hex = |i: usize| b.get(i).is_some_and(u8::is_ascii_hexdigit);
    if memchr::memchr_iter(b'%', b).any(|i| !hex(i + 1) || !hex(i + 2)) {
        return Err(UnsafePath);
    }
    let mut out = String::with_capacity(path.len());
    // index of the last segment, without collecting them
    let last = memchr::memchr_iter(b'/', path.as_bytes()).count();
    for (i, seg) in path.split('/').enumerate() {
        // `..;x` is `..` to servlet containers (path parameters), so the
        // part before a `;` decides (Apache Shiro CVE-2020-1957 pattern)
        let seg = seg.split(';').next().unwrap_or(seg);
        let seg = decode_unreserved(seg);
        if is_dot_segment(&seg) {
            return Err(UnsafePath);
        }
        // merged runs of `/`: an empty segment is kept only first and last
        if seg.is_empty() && i != 0 && i != last {
            continue;
        }
        if i != 0 {
            out.push('/');
        }
        out.push_str(&seg);
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// `seg` with its percent-encoded unreserved characters (ALPHA, DIGIT,
/// `-`, `.`, `_`, `~`) decoded; every other escape is kept as written.
fn decode_unreserved(seg: &str) -> std::borrow::Cow<'_, str> {
    if !seg.contains('%') {
        return std::borrow::Cow::Borrowed(seg);
    }
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
            if let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // only ASCII bytes were replaced by ASCII bytes: still UTF-8
    std::borrow::Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| seg.to_string()))
}

/// `%2f` and `%5c` (any case): backends that decode them before resolving
/// the path would see separators the router never saw.
fn has_encoded_separator(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && (w[2] | 0x20) == b'f') || (w[1] == b'5' && (w[2] | 0x20) == b'c'))
    })
}

fn is_dot_segment(seg: &str) -> bool {
    // ".", "..", and their percent-encoded forms (%2e, any case)
    let mut dots = 0;
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%'
            && b.get(i + 1) == Some(&b'2')
            && matches!(b.get(i + 2), Some(b'e') | Some(b'E'))
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// The host a request is for: `Host` without port and without one
/// trailing dot (`admin.local.` is the fully qualified `admin.local`, and
/// backends such as nginx serve it as that); matching ignores case.
pub fn host_of(host_header: Option<&str>) -> &str {
    let h = host_header.unwrap_or("");
    if h.starts_with('[') {
        return h.split(']').next().unwrap_or(h).trim_start_matches('[');
    }
    let h = h.rsplit_once(':').map_or(h, |(a, _)| a);
    h.strip_suffix('.').unwrap_or(h)
}

/// Whether `text` is an authority a host can be routed on: a host name
/// (letters, digits, `-`, `_`, `.`), an IPv4 address or a bracketed IPv6
/// literal, and an optional `:port`. RFC 3986 allows more in a reg-name,
/// but each extra character is a way for two parsers to disagree on the
/// host: userinfo (`www.local@admin.local`), a list
/// (`admin.local,www.local`, whose first item some frameworks take),
/// percent-encoding (a backend that decodes it sees another name), an
/// empty label (`a..b`, which nginx refuses).
pub fn valid_authority(text: &str) -> bool {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => {
                let v6_ok = !v6.is_empty()
                    && v6
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !v6_ok {
                    return false;
                }
                match after {
                    "" => return true,
                    _ => match after.strip_prefix(':') {
                        Some(p) => ("x", Some(p)),
                        None => return false,
                    },
                }
            }
            None => return false,
        },
        None => match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 5);
    port_ok
        && !host.is_empty()
        && !host.contains("..")
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(
        path: Option<&str>,
        prefix: Option<&str>,
        host: Option<&str>,
        methods: &[&str],
    ) -> Matcher {
        Matcher {
            path: path.map(String::from),
            path_prefix: prefix.map(String::from),
            host: host.map(String::from),
            methods: methods.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn exact_then_longest_prefix_then_filters() {
        let r = Router::new(vec![
            m(None, Some("/"), None, &[]),
            m(None, Some("/api/"), None, &[]),
            m(Some("/api/login"), None, None, &["POST"]),
            m(None, Some("/api/admin/"), Some("admin.example"), &[]),
        ]);
        assert_eq!(r.resolve("x", "POST", "/api/login"), Some(2));
        assert_eq!(r.resolve("x", "GET", "/api/login"), Some(1));
        assert_eq!(r.resolve("x", "GET", "/api/admin/x"), Some(1));
        assert_eq!(r.resolve("admin.example", "GET", "/api/admin/x"), Some(3));
        assert_eq!(r.resolve("x", "GET", "/other"), Some(0));
        let r2 = Router::new(vec![m(None, Some("/api/"), None, &[])]);
        assert_eq!(r2.resolve("x", "GET", "/nope"), None);
    }

    #[test]
    fn dot_segments_are_refused() {
        assert!(normalize("/a/../b").is_err());
        assert!(normalize("/a/%2e%2E/b").is_err());
        assert!(normalize("/a/.").is_err());
        assert!(normalize("/a/..b").is_ok());
        assert_eq!(normalize("//api///x").unwrap(), "/api/x");
        assert_eq!(normalize("/api/x").unwrap(), "/api/x");
        // resolved as parents by some backends (docs/security.md F6)
        for p in [
            "/public/..;/api",
            "/public/..;jsessionid=1/api",
            "/public/%2e%2e;/api",
            "/public/..%2fapi",
            "/public/..%2Fapi",
            "/public/..%5capi",
            "/public/..\\api",
            "/a/.;x/b",
        ] {
            assert!(normalize(p).is_err(), "{p}");
        }
        assert_eq!(normalize("/a;v=1/b").unwrap(), "/a/b");
        assert!(normalize("/a/%2e%2ex/%25/b").is_ok());
    }

    #[test]
    fn backend_decodings_are_matched_decoded() {
        assert_eq!(normalize("/%61pi/x").unwrap(), "/api/x");
        assert_eq!(normalize("/%61%50%49/x").unwrap(), "/aPI/x");
        assert_eq!(normalize("/api;x/x").unwrap(), "/api/x");
        assert_eq!(normalize("/%61pi;v=1/x;y").unwrap(), "/api/x");
        assert_eq!(normalize("/api/").unwrap(), "/api/");
        assert_eq!(normalize("/api//").unwrap(), "/api/");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a%20b/%3B").unwrap(), "/a%20b/%3B");
        for p in ["/%zz", "/a/%4", "/x%2%65", "/%"] {
            assert!(normalize(p).is_err(), "{p}");
        }
        let p = normalize("/%2561%61").unwrap();
        assert_eq!(p, "/%2561a");
        assert_eq!(normalize(&p).unwrap(), p);
        assert!(normalize("/a/%2E/b").is_err());
        assert!(normalize("/a/.%2e;x/b").is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of(Some("a.example:8080")), "a.example");
        assert_eq!(host_of(Some("[::1]:80")), "::1");
        assert_eq!(host_of(Some("admin.local.")), "admin.local");
        assert_eq!(host_of(Some("admin.local.:8080")), "admin.local");
        assert!(valid_authority("admin.local:8080"));
        assert!(valid_authority("[::1]:80"));
        assert!(!valid_authority("www.local@admin.local"));
        assert!(!valid_authority("a b"));
        assert!(!valid_authority("a/b"));
        assert!(!valid_authority(""));
        assert!(!valid_authority("admin%2elocal"));
        assert!(!valid_authority("admin..local"));
        assert!(!valid_authority("admin.local,www.local"));
        assert!(!valid_authority("admin.local:80:81"));
        assert!(!valid_authority("admin.local:8x"));
        assert!(!valid_authority(".admin.local"));
        assert!(valid_authority("admin.local."));
        assert!(valid_authority("admin.local:"));
        assert!(valid_authority("[::1]"));
        assert!(!valid_authority("[::1]x"));
        assert!(!valid_authority("[admin.local]"));
        assert!(m(None, None, Some("*.example.com"), &[]).accepts("a.example.com", "GET"));
        assert!(!m(None, None, Some("*.example.com"), &[]).accepts("example.com", "GET"));
    }
}
