#!/usr/bin/env bash
# Makes the Python virtualenv of the tests' Python peers (requirements.txt):
# PyJWT[crypto], with which tests/assertion.rs verifies gateway assertions
# independently of authgate's JWT code, and grpcio, whose server and client
# tests/grpc.rs runs through the gateway, and websockets (tests/streams.rs). Prints the venv's interpreter path
# on stdout (and nothing else there). Idempotent and quick: does nothing when
# the venv was built from the current requirements.txt. Run by the tests
# themselves; CI also runs it up front.
# Needs python3 with the venv module (Debian: python3-venv) and PyPI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target="$root/$target" ;; esac
venv="$target/python-venv"
req="$here/requirements.txt"
want=$(sha256sum "$req" | cut -d' ' -f1)
stamp="$venv/.authgate-installed"
ready() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; }
if ready; then
  echo "$venv/bin/python"
  exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "setup.sh: python3 is not installed" >&2; exit 1; }
mkdir -p "$target"
# Serialise concurrent runs (several test threads or processes may call this at once).
exec 9>"$target/.python-venv.lock"
flock 9
if ready; then
  echo "$venv/bin/python"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2 || {
  echo "setup.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
  exit 1
}
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req" >&2
"$venv/bin/python" -c 'import jwt, cryptography, grpc, websockets, h2' >&2
echo "$want" > "$stamp"
echo "$venv/bin/python"
