//! The transports: bytes to the pipeline and back, nothing else. The
//! listener reads each request head and hands it to the direct transport
//! (bodyless HTTP/1.1 GET/HEAD, own framing) or to the general one
//! (pingora-proxy); both call the same pipeline steps and never import
//! each other; `respond` writes every answer the gateway makes itself.

pub mod direct;
pub mod general;
pub mod listener;
pub mod preface;
pub mod respond;
