//! Compiles `[sessions]`: express-session compatible cookies (signing
//! secrets, the identity paths in a session, allowed origins, the local
//! cache). Its own file because it depends on the compiled `[store]` (a
//! session store must be Redis) and reads its own list of secrets.

use super::{duration, read_secret_file, resolve};
use crate::auth::session::{normalize_allowed, SessionSettings};
use crate::config::file::FileConfig;
use crate::config::Issues;
use crate::runtime::{StoreKind, StoreSettings};
use std::path::Path;
use std::time::Duration;

pub(super) fn build_sessions(
    cfg: &FileConfig,
    base: &Path,
    store: &StoreSettings,
    issues: &mut Issues,
) -> Option<SessionSettings> {
    let s = cfg.sessions.as_ref()?;
    let before = issues.0.len();
    if store.kind == StoreKind::Memory
        && cfg.store.as_ref().is_none_or(|st| {
            !matches!(
                st.kind.as_deref(),
                Some("redis" | "redis_cluster" | "redis_sentinel")
            )
        })
    {
        issues.at(
            "sessions",
            "[sessions] needs store.kind = \"redis\": sessions live in the login service's Redis (express-session + connect-redis), which the memory store cannot read",
        );
    }
    let mut secrets = Vec::new();
    for (i, var) in s.secrets_env.iter().flatten().enumerate() {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => secrets.push(v.into_bytes()),
            Ok(_) => issues.at(
                format!("sessions.secrets_env.{i}"),
                format!("environment variable `{var}` is empty"),
            ),
            Err(_) => issues.at(
                format!("sessions.secrets_env.{i}"),
                format!("environment variable `{var}` is not set"),
            ),
        }
    }
    for (i, f) in s.secrets_files.iter().flatten().enumerate() {
        match read_secret_file(&resolve(base, f)) {
            Ok(v) if !v.is_empty() => secrets.push(v),
            Ok(_) => issues.at(
                format!("sessions.secrets_files.{i}"),
                format!("secret file `{f}` is empty"),
            ),
            Err(e) => issues.at(
                format!("sessions.secrets_files.{i}"),
                format!("cannot read secret file `{f}`: {e}"),
            ),
        }
    }
    if s.secrets_env.iter().flatten().count() + s.secrets_files.iter().flatten().count() == 0 {
        issues.at("sessions", "[sessions] needs the cookie-signing secrets: secrets_env = [...] or secrets_files = [...]");
    }
    let subject = match s.identity.as_ref().and_then(|i| i.subject.clone()) {
        Some(p) if !p.is_empty() => p,
        _ => {
            issues.at("sessions", "[sessions] needs identity = { subject = \"<path of the user id in the session>\" }");
            String::new()
        }
    };
    let mut allowed_origins = Vec::new();
    for (i, o) in s.allowed_origins.iter().enumerate() {
        match normalize_allowed(o) {
            Some(n) => allowed_origins.push(n),
            None => issues.at(
                format!("sessions.allowed_origins.{i}"),
                format!("`{o}` is not an origin like \"https://app.example.com\""),
            ),
        }
    }
    let mut dur = |key: &str, v: &Option<String>, default: u64| match v.as_deref().map(duration) {
        None => Duration::from_secs(default),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            issues.at(format!("sessions.{key}"), e);
            Duration::ZERO
        }
    };
    let touch_interval = dur("touch_interval", &s.touch_interval, 60);
    let cache_ttl = dur("cache_ttl", &s.cache_ttl, 300);
    if issues.0.len() > before {
        return None;
    }
    Some(SessionSettings {
        cookie: s.cookie.clone().unwrap_or_else(|| "connect.sid".into()),
        secrets: secrets.into(),
        key_prefix: s.key_prefix.clone().unwrap_or_else(|| "sess:".into()),
        rolling: s.rolling,
        touch_interval,
        subject,
        email: s.identity.as_ref().and_then(|i| i.email.clone()),
        roles: s.identity.as_ref().and_then(|i| i.roles.clone()),
        allowed_origins,
        cache_ttl,
        cache_size: s.cache_size.unwrap_or(100_000),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, has, has_line, refused, MINIMAL};
    use std::time::Duration;

    const REDIS: &str = "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n";

    #[test]
    fn defaults_are_applied() {
        let rt = accepted(&format!(
            "{REDIS}[sessions]\nsecrets_files = [\"hs_secret.txt\"]\nidentity = {{ subject = \"userId\" }}\n{MINIMAL}"
        ));
        let s = rt.sessions.expect("sessions compiled");
        assert_eq!(s.cookie, "connect.sid");
        assert_eq!(s.key_prefix, "sess:");
        assert!(!s.rolling);
        assert_eq!(s.touch_interval, Duration::from_secs(60));
        assert_eq!(s.cache_ttl, Duration::from_secs(300));
        assert_eq!(s.cache_size, 100_000);
        assert_eq!(s.subject, "userId");
        assert!(s.email.is_none() && s.roles.is_none());
        assert!(s.allowed_origins.is_empty());
    }

    #[test]
    fn sessions_need_redis_secrets_and_a_subject() {
        let e = refused(&format!("[sessions]\ncookie = \"sid\"\n{MINIMAL}"));
        has(&e, "[sessions] needs store.kind = \"redis\"");
        has(&e, "[sessions] needs the cookie-signing secrets");
        has(&e, "[sessions] needs identity = { subject = ");
    }

    #[test]
    fn unusable_secrets_and_origins_are_refused_at_their_index() {
        let e = refused(&format!(
            r#"{REDIS}[sessions]
secrets_env = ["AUTHGATE_TEST_SURELY_UNSET_9d2e"]
identity = {{ subject = "userId" }}
allowed_origins = ["https://ok.example", "not an origin"]
touch_interval = "often"
{MINIMAL}"#
        ));
        has_line(
            &e,
            "g.toml:5:16: environment variable `AUTHGATE_TEST_SURELY_UNSET_9d2e` is not set",
        );
        has_line(
            &e,
            "g.toml:7:42: `not an origin` is not an origin like \"https://app.example.com\"",
        );
        has(&e, "g.toml:8:18: invalid duration `often`");
    }
}
