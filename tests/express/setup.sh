#!/usr/bin/env bash
# Installs the Express interop app's pinned dependencies (package-lock.json)
# with `npm ci`. Idempotent and quick: does nothing when node_modules was
# installed from the current package.json + package-lock.json. Run by
# tests/session_express.rs itself; CI may also run it up front.
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null 2>&1 || { echo "setup.sh: node is not installed" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "setup.sh: npm is not installed" >&2; exit 1; }
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
stamp=node_modules/.authgate-installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# Serialise concurrent runs (several test processes may call this at once).
exec 9>.setup.lock
flock 9
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
echo "$want" > "$stamp"
