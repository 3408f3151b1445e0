//! The `authgate` binary: the allocator, then the command line
//! (`authgate::cli`).

use std::process::ExitCode;

/// mimalloc: pingora allocates some 60 small blocks per proxied request
/// (header maps, boxed futures); against glibc malloc this measured +15-20 %
/// throughput on a cached JWT route (docs/performance.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    authgate::cli::main()
}
