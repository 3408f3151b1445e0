#!/usr/bin/env bash
# The whole test suite: unit tests, the Wycheproof vectors, and the
# integration tests that start the real authgate binary, a real upstream and
# (for store features) a real redis-server on loopback. One build profile
# (release) for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/prereqs.sh
tests/express/setup.sh
tests/python/setup.sh >/dev/null
cargo test --release --locked "$@"
