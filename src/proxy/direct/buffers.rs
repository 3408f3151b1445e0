//! The buffers of one direct request, from a small per-thread free list:
//! no allocation per request in the steady state, and none held by idle
//! keep-alive connections.

use bytes::BytesMut;

/// The buffers of one direct request, taken from a small per-thread
/// free list and given back after it ([`Buffers::take`],
/// [`Buffers::give_back`]): no allocation per request in the steady
/// state, and none held by idle keep-alive connections.
#[derive(Default)]
pub struct Buffers {
    /// The request head sent upstream.
    pub(super) req: Vec<u8>,
    /// What the upstream sent, not yet relayed.
    pub(super) resp: BytesMut,
    /// What goes to the client next.
    pub(super) out: Vec<u8>,
}

/// Most buffer sets a thread keeps for reuse.
const FREE_BUFFERS: usize = 32;
/// A buffer grown past this (a long head or a large response) is freed
/// rather than kept.
const KEEP_CAPACITY: usize = 64 * 1024;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buffers {
    /// A set of buffers: a free one of this thread's, or new.
    pub fn take() -> Buffers {
        FREE.with(|f| f.try_borrow_mut().ok().and_then(|mut f| f.pop()))
            .unwrap_or_default()
    }

    /// Returns `b` to this thread's free list (cleared), unless the list
    /// is full or `b` grew large.
    pub fn give_back(mut b: Buffers) {
        if b.req.capacity() > KEEP_CAPACITY
            || b.resp.capacity() > KEEP_CAPACITY
            || b.out.capacity() > KEEP_CAPACITY
        {
            return;
        }
        b.req.clear();
        b.resp.clear();
        b.out.clear();
        FREE.with(|f| {
            if let Ok(mut f) = f.try_borrow_mut() {
                if f.len() < FREE_BUFFERS {
                    f.push(b);
                }
            }
        });
    }
}
