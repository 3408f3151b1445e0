//! The `authgate` binary: the allocator, then the command line
//! (`authgate::cli`).

use std::process::ExitCode;

/// mimalloc: pingora allocates some 60 small blocks per proxied request
/// (header maps, boxed futures); against glibc malloc it is faster on a
/// cached JWT route (docs/performance.md, "Earlier run: mimalloc and a
/// leaner identity path", and `ALLOC_AB=1 benches/load.sh`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    authgate::cli::main()
}
