#!/usr/bin/env bash
# Quick start: builds authgate, starts the demo backend (`authgate echo` on
# 127.0.0.1:3000) and the gateway with the shipped gateway.toml (embedded
# memory store), then shows a 401 without a token and a 200 whose backend
# saw the X-Auth-* identity headers. Leaves both running until Ctrl-C
# (DEMO_EXIT=1 stops them right after the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/prereqs.sh
cargo build --release --locked
bin=./target/release/authgate
export JWT_DEMO_SECRET="${JWT_DEMO_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
"$bin" echo --listen 127.0.0.1:3000 & pids+=($!)
"$bin" serve --config gateway.toml > authgate-demo.log & pids+=($!)
for _ in $(seq 1 50); do
  curl -fs http://127.0.0.1:9090/healthz >/dev/null 2>&1 && break
  sleep 0.2
done
echo
echo '$ curl -i http://127.0.0.1:8080/api/hello            # no token'
curl -si http://127.0.0.1:8080/api/hello
echo; echo
TOKEN=$("$bin" token --config gateway.toml --issuer demo --sub alice \
  --claim email=alice@example.com --claim 'roles=["admin","dev"]' --claim tenant=acme)
echo '$ TOKEN=$(./target/release/authgate token --config gateway.toml --issuer demo --sub alice --claim email=alice@example.com --claim '"'"'roles=["admin","dev"]'"'"' --claim tenant=acme)'
echo '$ curl -i -H "Authorization: Bearer $TOKEN" -H "X-Auth-Subject: mallory" http://127.0.0.1:8080/api/hello'
curl -si -H "Authorization: Bearer $TOKEN" -H "X-Auth-Subject: mallory" http://127.0.0.1:8080/api/hello
echo
echo "(the spoofed X-Auth-Subject: mallory was stripped; the backend saw the verified identity)"
echo "metrics: curl http://127.0.0.1:9090/metrics   request log: authgate-demo.log"
if [ "${DEMO_EXIT:-0}" = "1" ]; then exit 0; fi
echo "gateway on 127.0.0.1:8080, admin on 127.0.0.1:9090; Ctrl-C stops both"
wait
