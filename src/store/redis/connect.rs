//! Reaching Redis: the command and connect timeouts, the key names
//! every instance shares, credentials and TLS roots (`Access`), the
//! topologies (one node, Cluster, Sentinel) and their connections, and the
//! RESP3 push connection that carries client-tracking invalidations.

use super::super::StoreError;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, Value};
use std::time::Duration;

/// Per-command timeout: a paused or unreachable Redis costs a request at
/// most this long before the route's `on_error` decides.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Connection attempt timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Sorted set of revoked jtis, scored by `exp` (trimmed on every write, so
/// entries vanish at their `exp` without a sweeper). The `{revoked}` hash
/// tag keeps both revocation keys in one cluster slot (one atomic write).
pub const REVOKED_JTIS: &str = "authgate:{revoked}:jti";
/// Hash of subject cutoffs: field `<issuer or *>\n<sub>`, value unix seconds.
pub const REVOKED_SUBS: &str = "authgate:{revoked}:sub";
/// The pub/sub channel revocations are announced on (JSON [`Revocation`]),
/// followed by `:<db>`: pub/sub is server-wide, databases are not. Its
/// `{revoked}` tag routes the PUBLISH to the slot of the revocation keys,
/// so write and announcement are one atomic step on a cluster too.
pub const REVOCATION_CHANNEL: &str = "authgate:{revoked}:events";

/// How the data nodes (the single node, every cluster node, the master
/// Sentinel names) are reached beyond what their URLs say: AUTH credentials
/// kept out of the config file (`password_env` / `password_file`), and the
/// CA that verifies `rediss://` servers (default: the system's roots).
/// Credentials matter most for Sentinel and cluster nodes, whose addresses
/// are discovered at run time and so carry no userinfo of their own.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM roots for `rediss://`.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl Access {
    /// `url` with the configured credentials (they replace the URL's own).
    pub fn data_url(&self, url: &str) -> String {
        let Some(password) = &self.password else {
            return url.to_string();
        };
        match url::Url::parse(url) {
            Ok(mut u) => {
                let named = u.set_username(self.username.as_deref().unwrap_or(""));
                let set = u.set_password(Some(password));
                if named.is_ok() && set.is_ok() {
                    u.to_string()
                } else {
                    url.to_string()
                }
            }
            Err(_) => url.to_string(),
        }
    }

    /// A client for `url`; `rediss://` is verified against the configured CA.
    pub fn client(&self, url: &str) -> redis::RedisResult<Client> {
        match &self.ca_pem {
            Some(ca) if is_tls(url) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            _ => Client::open(url),
        }
    }
}

/// Whether a Redis URL asks for TLS.
pub fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
}

/// `scheme://host:port` for a discovered node, with the scheme (TLS or
/// not) of the URL it was learned from.
pub(super) fn node_url(like: &str, host: &str, port: u16) -> String {
    let scheme = if is_tls(like) { "rediss" } else { "redis" };
    if host.contains(':') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// Where the Redis store lives: one node, a cluster (seed nodes), or the
/// master that Sentinel names (followed across failovers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// A command connection of any topology (all auto-reconnecting).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A RESP3 connection to `url` whose pushes go to `tx`.
pub(super) async fn connect_push(
    access: &Access,
    url: &str,
    tx: tokio::sync::mpsc::UnboundedSender<PushInfo>,
) -> Result<MultiplexedConnection, StoreError> {
    let client = access.client(&with_resp3(url)).map_err(unavailable)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(tx);
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(unavailable)
}

/// Asks one sentinel for the master's address, as a URL of the sentinel's
/// scheme (`rediss://` sentinels front TLS masters) without credentials.
pub(super) async fn ask_sentinel(
    access: &Access,
    sentinel: &str,
    master: &str,
) -> Result<String, StoreError> {
    let client = access.client(sentinel).map_err(unavailable)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(unavailable)?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    let (host, port) = addr
        .ok_or_else(|| StoreError::Unavailable(format!("sentinel knows no master `{master}`")))?;
    Ok(format!("{}/0", node_url(sentinel, &host, port)))
}

/// The database number of a redis:// URL (`/N` path), 0 by default.
pub(super) fn db_of(url: &str) -> i64 {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.path().trim_start_matches('/').parse().ok())
        .unwrap_or(0)
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn with_resp3(url: &str) -> String {
    if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_nodes_get_the_scheme_and_the_configured_credentials() {
        let access = Access {
            username: Some("gate".into()),
            password: Some("p@ss:w/rd".into()),
            ca_pem: None,
        };
        // a Sentinel's master or a cluster node: the source URL's scheme
        let master = node_url("rediss://:sentinel-pw@10.0.0.1:26379", "10.0.0.9", 6380);
        assert_eq!(master, "rediss://10.0.0.9:6380");
        assert_eq!(node_url("redis://h:1", "::1", 7000), "redis://[::1]:7000");
        let url = access.data_url(&format!("{master}/0"));
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        assert_eq!(info.redis_settings().username(), Some("gate"));
        assert_eq!(info.redis_settings().password(), Some("p@ss:w/rd"));
        // configured credentials replace a URL's own
        let url = access.data_url("redis://other:old@127.0.0.1:6379/2");
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        assert_eq!(info.redis_settings().username(), Some("gate"));
        assert_eq!(info.redis_settings().db(), 2);
        // without configured credentials the URL is kept as it is
        let plain = Access::default();
        assert_eq!(plain.data_url("redis://u:p@h:1/0"), "redis://u:p@h:1/0");
        assert!(is_tls("REDISS://h:1") && !is_tls("redis://h:1"));
        // the password never shows in Debug output
        assert!(!format!("{access:?}").contains("p@ss"));
    }
}
