//! Streams that outlive their credential. A request is checked once, when
//! it starts; an HTTP/2 stream (a gRPC call, a server-sent stream) or an
//! upgraded HTTP/1.1 connection (WebSocket) may then run for hours. On a
//! route with `revalidate_streams` (the default), each such request is
//! registered here while it runs, and a sweep every [`SWEEP`] ends the ones
//! whose token reached its `exp`, whose token or subject was revoked, or
//! whose session was destroyed (the sweeper asks the store about the
//! sessions Redis reported changed):
//! "revoked within milliseconds" holds for streaming clients too.
//!
//! Ending a stream means shutting down its upstream socket: the proxy loop
//! then sees its upstream fail and ends the client's stream (a gRPC client
//! gets UNAUTHENTICATED in trailers, an HTTP/2 client RST_STREAM, a
//! WebSocket client a closed connection; see `proxy::general`). The socket
//! is held as a duplicate descriptor, so the number can never name another
//! socket, and it is let go ([`Watch::finish`]) as soon as the upstream's
//! answer has ended, before the connection can go back to the pool: a
//! pooled connection that carries someone else's request is never touched.
//! An HTTP/2 upstream carries one stream per connection for the same reason
//! (`upstream::Upstream::peer`).

use crate::denial::Reason;
use crate::identity::Identity;
use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often running streams are checked: a revocation or an `exp` ends
/// a stream within this (plus the revocation's propagation, milliseconds).
pub const SWEEP: Duration = Duration::from_millis(200);

/// The streams running now.
#[derive(Default)]
pub struct Streams {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Watched>>>,
}

/// One running stream.
struct Watched {
    /// The credential; its `expires_at` is when the stream must end.
    identity: Arc<Identity>,
    /// The upstream socket while the stream may still be ended, and why it
    /// was ended once it was.
    socket: Mutex<Socket>,
}

enum Socket {
    Open(TcpStream),
    Finished,
    Ended(Reason),
}

/// A registered stream; dropping it unregisters it.
pub struct Watch {
    id: u64,
    streams: Arc<Streams>,
    watched: Arc<Watched>,
}

impl Streams {
    /// Registers a stream whose upstream socket is `socket` (a duplicate
    /// of the proxy's descriptor).
    pub fn watch(self: &Arc<Self>, identity: Arc<Identity>, socket: TcpStream) -> Watch {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let watched = Arc::new(Watched {
            identity,
            socket: Mutex::new(Socket::Open(socket)),
        });
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, watched.clone());
        Watch {
            id,
            streams: self.clone(),
            watched,
        }
    }

    /// How many streams are registered.
    pub fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The session ids of the running streams authenticated by session.
    pub fn sessions(&self) -> Vec<Arc<str>> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|w| w.identity.session.clone())
            .collect()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every stream whose credential expired (`now`, unix seconds) or
    /// is revoked; returns how many it ended.
    pub fn sweep(&self, now: i64, revoked: impl Fn(&Identity) -> bool) -> usize {
        let live: Vec<Arc<Watched>> = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut ended = 0;
        for w in live {
            let reason = if w.identity.expires_at.is_some_and(|e| now >= e) {
                Reason::Expired
            } else if revoked(&w.identity) {
                Reason::Revoked
            } else {
                continue;
            };
            let mut socket = w.socket.lock().unwrap_or_else(PoisonError::into_inner);
            if let Socket::Open(s) = &*socket {
                // the proxy loop reads EOF and fails the stream
                let _ = s.shutdown(Shutdown::Both);
                *socket = Socket::Ended(reason);
                ended += 1;
            }
        }
        ended
    }
}

impl Watch {
    /// The upstream's answer has ended: the socket is let go, never shut
    /// down after this (the connection may go back to the pool).
    pub fn finish(&self) {
        let mut socket = self
            .watched
            .socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if matches!(*socket, Socket::Open(_)) {
            *socket = Socket::Finished;
        }
    }

    /// Why the stream was ended, if the sweep ended it.
    pub fn ended(&self) -> Option<Reason> {
        match &*self
            .watched
            .socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Socket::Ended(r) => Some(*r),
            _ => None,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.finish();
        self.streams
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A token's identity with `jti`, expiring at unix second 2,000.
    fn identity(jti: &str) -> Arc<Identity> {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice".into());
        claims.insert("jti".into(), jti.into());
        let mut id = Identity::from_jwt("hs".into(), claims, &[]);
        id.expires_at = Some(2_000);
        Arc::new(id)
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn a_revoked_or_expired_stream_is_ended_and_a_finished_one_never() {
        let streams = Arc::new(Streams::default());
        // `watch` gets a duplicate, as from the proxy's descriptor; the
        // original stays open, as the proxy's does
        let (ours, mut theirs) = pair();
        let w = streams.watch(identity("j1"), ours.try_clone().unwrap());
        assert_eq!(streams.len(), 1);
        assert_eq!(streams.sweep(1_000, |_| false), 0);
        assert_eq!(w.ended(), None);
        assert_eq!(
            streams.sweep(1_000, |id| id.jti.as_deref() == Some("j1")),
            1
        );
        assert_eq!(w.ended(), Some(Reason::Revoked));
        // the peer sees the connection end
        let mut buf = [0u8; 1];
        assert_eq!(theirs.read(&mut buf).unwrap(), 0);
        // once ended, not again
        assert_eq!(streams.sweep(3_000, |_| true), 0);
        drop(w);
        assert!(streams.is_empty());

        let (ours, mut theirs) = pair();
        let w = streams.watch(identity("j2"), ours.try_clone().unwrap());
        assert_eq!(streams.sweep(2_000, |_| false), 1);
        assert_eq!(w.ended(), Some(Reason::Expired));
        assert_eq!(theirs.read(&mut buf).unwrap(), 0);

        // finished: the connection is left alone whatever happens after
        let (ours, mut theirs) = pair();
        let w = streams.watch(identity("j3"), ours.try_clone().unwrap());
        w.finish();
        assert_eq!(streams.sweep(9_000, |_| true), 0);
        assert_eq!(w.ended(), None);
        theirs
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert!(theirs.read(&mut buf).is_err(), "still open");
        drop(ours);
    }
}
