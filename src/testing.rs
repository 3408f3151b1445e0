//! What the integration tests, benches and fuzz targets use from inside
//! the crate, and nothing else: every module is `pub(crate)`, so the
//! compiler flags dead code, and this list is the whole surface they
//! depend on. Grouped as the modules they come from.

/// JWT parsing and verification (`auth::jwt`).
pub mod jwt {
    pub use crate::auth::jwt::{check_claims, claims_of, parse, verify_jws, ClaimRules};
}

/// Keys and key sets (`auth::keys`).
pub mod keys {
    pub use crate::auth::keys::{
        keys_from_jwks, parse_alg, pem_kind, public_key_from_pem, secret_key, signing_key_from_pem,
        AlgSet, KeySet, ALL_ALGS,
    };
}

/// express-session cookies (`auth::session`).
pub mod session {
    pub use crate::auth::session::{
        cookie, csrf_ok, parse_session, sign_cookie, unsign, CookieSecrets, SessionSettings,
        MAX_COOKIE_LEN,
    };
}

/// The verified-token cache (`auth::cache`).
pub mod cache {
    pub use crate::auth::cache::{CachedToken, TokenCache};
}

/// The direct transport's head parser and chunked-body scanner.
pub mod direct {
    pub use crate::proxy::direct::{chunked_end, parse};
}

pub use crate::auth::bearer;
pub use crate::clock::now_unix;
pub use crate::config::{load_str, ConfigErrors};
pub use crate::denial::Reason;
pub use crate::identity::{AuthMethod, Identity};
pub use crate::pipeline::verify_token;
pub use crate::ratelimit::{key_for, BodyPrefix, KeySpec};
pub use crate::router::{host_of, normalize, Matcher, Router};
