//! Upstreams: the addresses of one backend pool (resolved when the config
//! is loaded, never on the request path), round-robin balancing, passive
//! health per address, the pingora peer for an address, and the idle
//! connection pool of the direct transport. One implementation, used by
//! both transports, so balancing and health cannot drift between them.

use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An upstream pool: addresses resolved at load time (never DNS on the
/// request path), a round-robin cursor and each address's passive health.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub tls: bool,
    /// What the gateway speaks to it.
    pub protocol: Protocol,
    pub sni: String,
    /// Trust anchors for the upstream's certificate (default: system roots).
    pub ca: Option<Arc<[WrappedX509]>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Consecutive connect failures that take an address out of rotation.
    pub max_fails: u32,
    /// How long an address stays out before it is tried again.
    pub fail_timeout: Duration,
    /// Idle keep-alive connections of the direct transport (this
    /// config's generation only: a reload starts with none).
    pub pool: IdlePool,
    /// Per address (same index as `addrs`).
    health: Vec<AddrHealth>,
    /// The clock `AddrHealth::down_until_ms` counts from.
    born: Instant,
    next: AtomicUsize,
}

/// The HTTP version spoken to an upstream (`[upstreams.NAME] protocol`).
/// gRPC backends need HTTP/2: `h2` over TLS (ALPN `h2` only), `h2c` in
/// plaintext with prior knowledge (RFC 9113 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2,
    H2c,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "http1" => Some(Protocol::Http1),
            "h2" => Some(Protocol::H2),
            "h2c" => Some(Protocol::H2c),
            _ => None,
        }
    }
}

/// Most addresses one upstream may have ([`Tried`] is a bit per address).
pub const MAX_UPSTREAM_ADDRS: usize = 64;

/// One address's passive health: consecutive connect failures, and when
/// its backoff ends (ms since `Upstream::born`).
#[derive(Debug, Default)]
struct AddrHealth {
    fails: AtomicU32,
    down_until_ms: AtomicU64,
}

/// The addresses one request has tried, so a retry after a failed
/// connect never goes to the same address twice.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried {
    mask: u64,
    /// Where this request's round-robin walk starts.
    start: Option<usize>,
    /// The address of the latest attempt.
    last: usize,
}

impl Tried {
    /// Connect attempts so far.
    pub fn count(&self) -> usize {
        self.mask.count_ones() as usize
    }
}

impl Upstream {
    /// The address for this request's next connect attempt: the next one in
    /// round-robin order that it has not tried and that is not backing off;
    /// when every untried address is backing off, the first of those (a
    /// request is never refused for health alone). `None` once every
    /// address was tried.
    pub fn pick(&self, tried: &mut Tried) -> Option<SocketAddr> {
        let n = self.addrs.len().min(MAX_UPSTREAM_ADDRS);
        if n == 0 || tried.count() >= n {
            return None;
        }
        let start = *tried
            .start
            .get_or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed) % n);
        let untried = |i: usize| tried.mask & (1u64 << i) == 0;
        let mut now = None;
        let order = (0..n).map(|k| (start + k) % n);
        let chosen = order
            .clone()
            .find(|&i| untried(i) && self.is_up(i, &mut now))
            .or_else(|| order.clone().find(|&i| untried(i)))?;
        tried.mask |= 1u64 << chosen;
        tried.last = chosen;
        self.addrs.get(chosen).copied()
    }

    /// The address of the latest attempt of `tried`, if any.
    pub fn last_tried(&self, tried: &Tried) -> Option<SocketAddr> {
        (tried.count() > 0)
            .then(|| self.addrs.get(tried.last).copied())
            .flatten()
    }

    /// Whether address `i` is in rotation (`now`: the clock, read once and
    /// only for an address with failures).
    fn is_up(&self, i: usize, now: &mut Option<u64>) -> bool {
        let Some(h) = self.health.get(i) else {
            return true;
        };
        if h.fails.load(Ordering::Relaxed) < self.max_fails {
            return true;
        }
        let now = *now.get_or_insert_with(|| self.clock_ms());
        now >= h.down_until_ms.load(Ordering::Relaxed)
    }

    fn clock_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The latest attempt of `tried` connected: its address is back in
    /// rotation (a store only when it had failures).
    pub fn connected(&self, tried: &Tried) {
        if let Some(h) = self.health.get(tried.last) {
            if h.fails.load(Ordering::Relaxed) != 0 {
                h.fails.store(0, Ordering::Relaxed);
                h.down_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The latest attempt of `tried` failed to connect: one more failure
    /// for its address (out for `fail_timeout` from the `max_fails`-th on).
    /// Whether an address is left that this request has not tried.
    pub fn connect_failed(&self, tried: &Tried) -> bool {
        if let Some(h) = self.health.get(tried.last) {
            let fails = h.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if fails >= self.max_fails {
                let until = self.clock_ms() + self.fail_timeout.as_millis() as u64;
                h.down_until_ms.store(until, Ordering::Relaxed);
            }
        }
        tried.count() < self.addrs.len().min(MAX_UPSTREAM_ADDRS)
    }

    /// Each address with whether it is in rotation (for the metrics): out
    /// from its `max_fails`-th consecutive failure until a connect to it
    /// succeeds.
    pub fn health(&self) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
        self.addrs.iter().enumerate().map(|(i, a)| {
            let up = self
                .health
                .get(i)
                .is_none_or(|h| h.fails.load(Ordering::Relaxed) < self.max_fails);
            (*a, up)
        })
    }
}

impl Upstream {
    /// An upstream of `addrs` with every address in rotation, nginx's
    /// health defaults (`max_fails = 1`, `fail_timeout = 10s`), plain
    /// TCP and the default timeouts; the config compiler sets the rest.
    pub fn new(name: String, addrs: Vec<SocketAddr>) -> Upstream {
        let n = addrs.len();
        Upstream {
            name,
            addrs,
            tls: false,
            protocol: Protocol::Http1,
            sni: String::new(),
            ca: None,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(60),
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            pool: IdlePool::default(),
            health: (0..n).map(|_| AddrHealth::default()).collect(),
            born: Instant::now(),
            next: AtomicUsize::new(0),
        }
    }

    /// The pingora peer for `addr`: its timeouts and, over TLS, its trust
    /// store and name. `generation`: the config the request runs on.
    pub fn peer(&self, addr: SocketAddr, generation: u64) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.tls, self.sni.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        if self.protocol != Protocol::Http1 {
            // HTTP/2 only: over TLS by ALPN, in plaintext with prior
            // knowledge (pingora speaks h2 on a plain peer that allows
            // only version 2)
            peer.options.set_http_version(2, 2);
            // one stream per connection, as nginx's grpc_pass: a stream
            // that outlives its credential is ended by shutting down its
            // connection (`streams.rs`), which must carry no one else's
            peer.options.max_h2_streams = 1;
        }
        if self.tls {
            peer.options.verify_cert = true;
            peer.options.verify_hostname = true;
            peer.options.ca = self.ca.clone();
            // pingora's connection pool key ignores the CA: keep pooled TLS
            // connections apart per upstream and per config, so a
            // connection verified under one trust store never serves
            // another (or a reloaded one).
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.name.hash(&mut h);
            Some(generation).hash(&mut h);
            peer.group_key = h.finish();
        }
        peer
    }
}

/// Most idle connections kept per upstream (each address shares it).
const POOL_SIZE: usize = 128;
/// An idle upstream connection older than this is closed, not reused.
const POOL_IDLE: Duration = Duration::from_secs(55);

/// Idle keep-alive connections to one upstream's addresses. Taking and
/// putting back are a short lock, never held across an await. A pooled
/// connection is a boundary between clients: one the upstream wrote to
/// while idle (bytes after a response's end, an unsolicited `408`) or
/// closed is never handed out, since whatever waits in it would be read as
/// the next client's answer ([`idle_fit`], checked on put and on take, as
/// pingora's pool watches its idle connections). A connection that became
/// unfit in the instant between the check and the write is found on use
/// and the request retried once on a fresh one (a bodyless GET or HEAD is
/// safe to send again).
#[derive(Default)]
pub struct IdlePool {
    idle: Mutex<Vec<(SocketAddr, Stream, Instant)>>,
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.idle.lock().map_or(0, |i| i.len());
        f.debug_struct("IdlePool").field("idle", &n).finish()
    }
}

/// Whether an idle connection can carry another exchange: a read would
/// wait (nothing arrived, no EOF, no error). One poll with a no-op waker,
/// so it costs a `recv` that returns `EAGAIN`; over TLS, records with no
/// application data (a session ticket) are consumed and still wait.
pub(crate) fn idle_fit(stream: &mut Stream) -> bool {
    use std::task::{Context, Poll, Waker};
    use tokio::io::AsyncRead;
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

impl IdlePool {
    /// The most recently idled connection to `addr` that is still fit
    /// ([`idle_fit`]). Entries stay in the order they were put back, so
    /// the expired ones are a prefix; unfit and expired ones are closed
    /// after the lock is released.
    pub fn take(&self, addr: SocketAddr) -> Option<Stream> {
        loop {
            let (found, expired) = {
                let mut idle = self.idle.lock().ok()?;
                let now = Instant::now();
                let stale = idle
                    .iter()
                    .take_while(|(_, _, since)| now.duration_since(*since) >= POOL_IDLE)
                    .count();
                let expired: Vec<_> = idle.drain(..stale).collect();
                let found = idle
                    .iter()
                    .rposition(|(a, _, _)| *a == addr)
                    .map(|i| idle.remove(i).1);
                (found, expired)
            };
            drop(expired);
            let mut stream = found?;
            if idle_fit(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` for reuse, unless something already arrived on it.
    pub fn put(&self, addr: SocketAddr, mut stream: Stream) {
        if !idle_fit(&mut stream) {
            return;
        }
        let evicted = match self.idle.lock() {
            Ok(mut idle) => {
                let oldest = (idle.len() >= POOL_SIZE).then(|| idle.remove(0));
                idle.push((addr, stream, Instant::now()));
                oldest
            }
            Err(_) => None,
        };
        drop(evicted);
    }
}
