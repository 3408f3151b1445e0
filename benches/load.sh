#!/usr/bin/env bash
# authgate load benchmark vs nginx and HAProxy, in one run:
#
#   ./benches/load.sh
#
# Servers (upstream nginx, the proxy under test, Redis) are pinned to one core
# (SERVER_CPU, default 0) and the load generator to another (CLIENT_CPU,
# default 1). Every row: `wrk -t1 -cCONNS --latency`, WARMUP s unmeasured,
# then DURATION s measured, against:
#
#   nginx upstream directly          a fixed 3-byte 200 (`return 200`), 1 worker
#   nginx proxy_pass                 1 worker, upstream keepalive (the baseline)
#   authgate pass-through            auth = "none", threads = 1
#   authgate pass-through, log off   the same with RUST_LOG=warn (no request log line)
#   ..., glibc malloc                with ALLOC_AB=1 only: pass-through and the RS256
#                                    pool on a build with glibc's malloc
#                                    (--no-default-features): the allocator A/B
#   authgate <alg>, 1,000-token pool HS256 RS256 ES256 EdDSA, 1,000 users' tokens in turn
#   authgate <alg>, distinct tokens  every token used once (minted here), cache on:
#                                    a cache miss and verification per request (no insert:
#                                    a token is cached on its second verification)
#   authgate <alg>, cache off        the pool again on a gateway with [token_cache] size = 0
#   authgate session, 1,000 sessions express-session cookies, connect-redis JSON in a
#                                    Redis started here
#   HAProxy <alg>, pool / distinct   HAProxy 2.6 `jwt_verify` (HS256 RS256 ES256; it has
#                                    no EdDSA) in front of the same upstream
#
# HTTP/2 rows (H2=1, the default): `h2load -t1 -cCONNS -m10`, WARMUP s
# warm-up then DURATION s, over TLS (ALPN h2) with a self-signed certificate:
#
#   nginx h2 proxy_pass              `listen ... ssl http2`, proxy_pass to the same
#                                    HTTP/1.1 upstream with keepalive (the h2 baseline)
#   ..., + RS256 header              the same with the RS256 row's Authorization field
#                                    (forwarded upstream, not checked)
#   authgate h2 pass-through         the TLS listener, auth = "none", HTTP/1.1 upstream
#   authgate h2 RS256, one token     the RS256 route with one pool token in every
#                                    request (h2load sends fixed headers): the pool
#                                    rows' steady state, a verified-token cache hit
#   authgate h2, h2c upstream        pass-through to an nginx speaking h2c
#                                    (`listen ... http2`, no TLS), the gRPC shape
#   nginx h2, h2c upstream           nginx cannot proxy_pass HTTP/2 except with
#                                    grpc_pass: `grpc_pass grpc://...` to the same
#
# ONLY_H2=1 runs just these (and no fixed-rate part).
#
# then an open-loop fixed-rate run (authgate-load-tools `rate`, wrk2-style
# latency from each request's due time) at 50 % of authgate pass-through's
# saturation, for the p99 latency that authentication adds: each row in its
# own window, and paired (one run whose requests alternate between a JWT
# route and pass-through, so both see the same seconds of the host; the
# target is checked on this one).
#
# authgate's stdout (one JSON line per request) goes to /dev/null: each line is
# still formatted and written, the cost of a log shipper reading it is not
# counted. Tokens are minted by authgate-load-tools (src/bin/authgate-load-tools.rs,
# jsonwebtoken) from the keys in tests/fixtures and kept under
# target/bench-load/tokens for 12 hours.
#
# Env: AUTHGATE_BIN (unset: the dist build of this tree; a path measures
# that build instead, e.g. an older commit for a before/after), ROUNDS (1: times every row is measured, servers restarted each round;
# the table shows the medians and the range), DURATION (10), WARMUP (2), CONNS
# (32), DISTINCT (400000 tokens per algorithm), SERVER_CPU (0), CLIENT_CPU (1),
# FIXED_RATE (1: run the fixed-rate part), FIXED_CONNS (32), FIXED_ROUNDS (3: the
# pass-through and cached-pool rows at 50 % load, interleaved, this many times;
# their p50/p99 are the medians and the p99 range is shown), ALLOC_AB (0: 1 adds the
# glibc-malloc rows, one more LTO build), OUT
# (target/bench-load/last-run.txt), H2 (1: the HTTP/2 rows), ONLY_H2 (0: 1 runs
# only the HTTP/2 rows), PRIORITY (unset: a nice value for every
# benchmarked process, e.g. -10 on a machine shared with other work, so
# neighbours disturb the run less; needs root).
# Exits non-zero if a component cannot be installed, built or started, or a
# row answers anything but 200.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
DISTINCT=${DISTINCT:-400000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
FIXED_RATE=${FIXED_RATE:-1}
FIXED_CONNS=${FIXED_CONNS:-32}
FIXED_ROUNDS=${FIXED_ROUNDS:-3}
ROUNDS=${ROUNDS:-1}
ALLOC_AB=${ALLOC_AB:-0}
H2=${H2:-1}
ONLY_H2=${ONLY_H2:-0}
# only the HTTP/2 rows: no fixed-rate part, and a small distinct-token set
# (those rows are not run)
if [ "$ONLY_H2" = 1 ]; then H2=1 FIXED_RATE=0 DISTINCT=1000; fi
OUT=${OUT:-$ROOT/target/bench-load/last-run.txt}
FIX=$ROOT/tests/fixtures
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
LUA=$ROOT/benches/load/creds.lua
PRIORITY=${PRIORITY:-}
# Pinning (and, with PRIORITY, a nice value) for servers and load generator.
ON_SERVER=(taskset -c "$SERVER_CPU")
ON_CLIENT=(taskset -c "$CLIENT_CPU")
if [ -n "$PRIORITY" ]; then
  ON_SERVER=(nice -n "$PRIORITY" "${ON_SERVER[@]}")
  ON_CLIENT=(nice -n "$PRIORITY" "${ON_CLIENT[@]}")
fi

die() {
  echo "load.sh: $*" >&2
  exit 1
}
log() { echo "[$(date +%T)] $*" >&2; }

# --- prerequisites ---------------------------------------------------------
need=()
for c in nginx wrk haproxy redis-server redis-cli curl taskset h2load openssl; do
  command -v "$c" >/dev/null 2>&1 || need+=("$c")
done
if ((${#need[@]})); then
  log "installing: ${need[*]}"
  [ "$(id -u)" = 0 ] || die "missing ${need[*]} and not root (apt-get install -y nginx wrk haproxy redis-server redis-tools curl util-linux nghttp2-client openssl)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq nginx wrk haproxy redis-server redis-tools curl util-linux nghttp2-client openssl >/dev/null ||
    die "apt-get install failed"
  # Debian's packages may start their own services; they are not used here.
  for c in nginx haproxy redis-server; do
    command -v "$c" >/dev/null 2>&1 || die "$c still missing after apt-get install"
  done
fi
cpus=$(nproc)
((cpus >= 2)) || die "needs 2 cores (servers on one, wrk on the other); this machine has $cpus"
haproxy_version=$(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }' | cut -d- -f1)

# --- build -----------------------------------------------------------------
log "building target/dist/authgate (cargo build --profile dist) and the load tools"
# The deployment build: the `dist` profile (release + fat LTO, one codegen
# unit; Cargo.toml). With ALLOC_AB=1, first a build without default
# features (glibc malloc instead of mimalloc), kept aside for the A/B rows.
mkdir -p "$ROOT/target/bench-load"
AUTHGATE_GLIBC=$ROOT/target/bench-load/authgate-glibc-malloc
if [ "$ALLOC_AB" = 1 ]; then
  cargo build --profile dist --bin authgate --no-default-features >&2 || die "cargo build --profile dist --no-default-features failed"
  cp "$ROOT/target/dist/authgate" "$AUTHGATE_GLIBC"
fi
# The helpers (mint, sessions, ports, rate) are a binary behind the
# load-tools feature, so normal builds and `cargo test` leave it out; one
# build makes both (the feature adds no code to authgate itself).
cargo build --profile dist --features load-tools --bin authgate --bin authgate-load-tools >&2 ||
  die "cargo build --profile dist --features load-tools failed"
AUTHGATE=${AUTHGATE_BIN:-$ROOT/target/dist/authgate}
[ -x "$AUTHGATE" ] || die "no $AUTHGATE"
TOOLS=$ROOT/target/dist/authgate-load-tools
[ -x "$TOOLS" ] || die "no $TOOLS"

# --- work dir, cleanup -----------------------------------------------------
WORK=$(mktemp -d /tmp/authgate-load.XXXXXX)
PIDS=()
alive() { # PID: running (an exited child stays a zombie until waited for)
  [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do
      alive "$p" || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() { # PID [SIGNAL]: stop one process we started, and forget it
  local p=$1 sig=${2:-TERM} q keep=() i
  kill -"$sig" "$p" 2>/dev/null || true
  for i in $(seq 50); do
    alive "$p" || break
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

ports=$("$TOOLS" ports 10) || die "cannot find free ports"
read -r P_UP P_NGX P_GW P_GWADM P_GW2 P_GW2ADM P_SESS P_SESSADM P_HAP P_REDIS <<<"$(echo $ports)"
ports=$("$TOOLS" ports 5) || die "cannot find free ports"
read -r P_H2UP P_NGXH2 P_NGXGRPC P_GWH2 P_GWH2ADM <<<"$(echo $ports)"

wait_http() { # URL PID NAME [ERRFILE]: 200 within 15 s while PID lives
  local url=$1 pid=$2 name=$3 err=${4:-} i
  for i in $(seq 150); do
    alive "$pid" || die "$name exited during start-up${err:+: $(tail -20 "$err")}"
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; then
      return 0
    fi
    sleep 0.1
  done
  die "$name did not answer 200 on $url within 15 s${err:+: $(tail -20 "$err")}"
}

expect_200() { # NAME URL [HEADER]: one request must get a 200
  local code
  if [ -n "${3:-}" ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "$3" "$2")
  else
    code=$(curl -s -o /dev/null -w '%{http_code}' "$2")
  fi
  [ "$code" = 200 ] || die "$1: $2 answered $code, expected 200"
}

# --- the upstream and nginx proxy ------------------------------------------
nginx_conf() { # DIR BODY
  mkdir -p "$1"
  cat >"$1/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
$2
}
EOF
}

log "starting the upstream (nginx) on 127.0.0.1:$P_UP"
nginx_conf "$WORK/up" "  server {
    listen 127.0.0.1:$P_UP;
    location / { default_type text/plain; return 200 \"ok\n\"; }
  }"
"${ON_SERVER[@]}" nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -e "$WORK/up/error.log" &
PID_UP=$!
PIDS+=("$PID_UP")
wait_http "http://127.0.0.1:$P_UP/" "$PID_UP" "upstream nginx" "$WORK/up/error.log"

# --- tokens, sessions ------------------------------------------------------
TOK=$ROOT/target/bench-load/tokens
mkdir -p "$TOK"
HS_SECRET_FILE=$FIX/hs_secret.txt
declare -A KEY=([HS256]=$HS_SECRET_FILE [RS256]=$FIX/rsa_priv.pem [ES256]=$FIX/ec256_priv.pem [EdDSA]=$FIX/ed25519_priv.pem)
declare -A ISS=([HS256]=https://hs.bench [RS256]=https://rs.bench [ES256]=https://es.bench [EdDSA]=https://ed.bench)
declare -A PFX=([HS256]=hs [RS256]=rs [ES256]=es [EdDSA]=ed)
ALGS=(HS256 RS256 ES256 EdDSA)

fresh_tokens() { # FILE COUNT: minted in the last 12 h with at least COUNT lines
  [ -f "$1" ] && [ -n "$(find "$1" -mmin -720 2>/dev/null)" ] && (($(wc -l <"$1") >= $2))
}
for a in "${ALGS[@]}"; do
  pool=$TOK/$a-pool.txt
  dist=$TOK/$a-distinct.txt
  if ! fresh_tokens "$pool" 1000; then
    log "minting 1,000 $a tokens (1,000 users)"
    "$TOOLS" mint --alg "$a" --key "${KEY[$a]}" --issuer "${ISS[$a]}" --count 1000 --users 1000 --out "$pool" ||
      die "minting $a failed"
  fi
  if ! fresh_tokens "$dist" "$DISTINCT"; then
    log "minting $DISTINCT distinct $a tokens"
    t0=$(date +%s)
    "$TOOLS" mint --alg "$a" --key "${KEY[$a]}" --issuer "${ISS[$a]}" --count "$DISTINCT" --out "$dist" ||
      die "minting $a failed"
    log "  took $(($(date +%s) - t0)) s"
  fi
done
SESSION_SECRET=bench-session-secret-0123456789abcdef
"$TOOLS" sessions --count 1000 --secret "$SESSION_SECRET" --prefix sess: \
  --cookies "$WORK/cookies.txt" --resp "$WORK/sessions.resp" || die "session generation failed"

# --- results ---------------------------------------------------------------
# One line per row and round: round|key|label|rps|p50|p99|note
RES=$WORK/results
: >"$RES"
declare -A RPS P50 P99 LABEL NOTE ALL_RPS ALL_P50 ALL_P99
KEYS=()
ROUND=1
# The median of the rounds (the mean of the middle two for an even count):
# one round disturbed by a neighbour does not move a row.
median() { echo "$@" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf (m >= 100 ? "%.0f" : "%.3f"), m }'; }
spread() { echo "$@" | awk '{ lo = $1; hi = $1; for (i = 2; i <= NF; i++) { if ($i < lo) lo = $i; if ($i > hi) hi = $i }; if (NF == 1) print "-"; else printf "%.0f-%.0f", lo, hi }'; }

to_ms() { # "1.23ms" / "850.00us" / "1.02s" -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "nan" }'
}

metric() { # ADMIN_PORT NAME_AND_LABELS -> value (0 when absent)
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($0, m) == 1 { v = $2 } END { print v + 0 }'
}

# row KEY LABEL URL [CREDS KIND [WARM_CREDS [ADMIN_PORT]]]
row() {
  local key=$1 label=$2 url=$3 creds=${4:-} kind=${5:-bearer} warm=${6:-${4:-}} adm=${7:-}
  local script=() wscript=() out h0 m0 h1 m1
  [ -n "$creds" ] && script=(-s "$LUA" "$url" -- "$creds" "$kind")
  [ -n "$warm" ] && wscript=(-s "$LUA" "$url" -- "$warm" "$kind")
  [ -n "$creds" ] || script=("$url")
  [ -n "$warm" ] || wscript=("$url")
  log "row: $label"
  "${ON_CLIENT[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${wscript[@]}" >"$WORK/warm.out" 2>&1 ||
    die "$label: wrk warm-up failed: $(cat "$WORK/warm.out")"
  if [ -n "$adm" ]; then
    h0=$(metric "$adm" 'authgate_token_cache_total{result="hit"}')
    m0=$(metric "$adm" 'authgate_token_cache_total{result="miss"}')
  fi
  out=$("${ON_CLIENT[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${script[@]}" 2>&1) ||
    die "$label: wrk failed: $out"
  echo "== $label" >>"$WORK/wrk.log"
  echo "$out" >>"$WORK/wrk.log"
  local rps p50 p99 non2xx sockerr wraps note=""
  rps=$(echo "$out" | awk '/^Requests\/sec:/ { printf "%.0f", $2 }')
  p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" { print $2 }')")
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" { print $2 }')")
  non2xx=$(echo "$out" | awk '/Non-2xx or 3xx responses:/ { print $NF }')
  sockerr=$(echo "$out" | awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }')
  wraps=$(echo "$out" | awk '/^wraps:/ { print $2 }')
  [ -n "$rps" ] || die "$label: cannot parse wrk output: $out"
  if [ -n "$adm" ]; then
    h1=$(metric "$adm" 'authgate_token_cache_total{result="hit"}')
    m1=$(metric "$adm" 'authgate_token_cache_total{result="miss"}')
    note="cache hits $((${h1%.*} - ${h0%.*})), misses $((${m1%.*} - ${m0%.*}))"
  fi
  # Only a distinct-token row promises each token once (pools cycle by design).
  case $key in
  ag_dist_* | hap_dist_*)
    if [ -n "$wraps" ] && [ "$wraps" != 0 ]; then note="${note:+$note; }token list wrapped $wraps x"; fi
    ;;
  esac
  if [ -n "$non2xx" ] && [ "$non2xx" != 0 ]; then
    echo "$out" >&2
    die "$label: $non2xx non-2xx responses: the row is not measuring what it claims"
  fi
  if [ -n "$sockerr" ] && [ "$sockerr" != 0 ]; then note="${note:+$note; }socket errors $sockerr"; fi
  [ -n "${LABEL[$key]:-}" ] || KEYS+=("$key")
  LABEL[$key]=$label
  ALL_RPS[$key]+="$rps " ALL_P50[$key]+="$p50 " ALL_P99[$key]+="$p99 "
  [ -n "$note" ] && NOTE[$key]+="${NOTE[$key]:+ / }$note"
  RPS[$key]=$(median ${ALL_RPS[$key]})
  P50[$key]=$(median ${ALL_P50[$key]})
  P99[$key]=$(median ${ALL_P99[$key]})
  echo "$ROUND|$key|$label|$rps|$p50|$p99|$note" >>"$RES"
  log "  round $ROUND: $rps req/s  p50 $p50 ms  p99 $p99 ms  $note"
}

# --- configs (once) ---------------------------------------------------------
nginx_conf "$WORK/px" "  upstream app { server 127.0.0.1:$P_UP; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGX;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"

gw_conf() { # FILE LISTEN ADMIN EXTRA
  cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
threads = 1

[upstreams.app]
addrs = ["127.0.0.1:$P_UP"]

[issuers.hs]
issuer = "https://hs.bench"
audiences = ["api"]
algorithms = ["HS256"]
secret_file = "$FIX/hs_secret.txt"

[issuers.rs]
issuer = "https://rs.bench"
audiences = ["api"]
algorithms = ["RS256"]
public_key_file = "$FIX/rsa_pub.pem"

[issuers.es]
issuer = "https://es.bench"
audiences = ["api"]
algorithms = ["ES256"]
public_key_file = "$FIX/ec256_pub.pem"

[issuers.ed]
issuer = "https://ed.bench"
audiences = ["api"]
algorithms = ["EdDSA"]
public_key_file = "$FIX/ed25519_pub.pem"

[[routes]]
name = "none"
path_prefix = "/none/"
upstream = "app"
auth = "none"
EOF
  for p in hs rs es ed; do
    printf '\n[[routes]]\nname = "%s"\npath_prefix = "/%s/"\nupstream = "app"\nauth = "jwt"\nissuers = ["%s"]\n' "$p" "$p" "$p" >>"$1"
  done
  printf '%s\n' "$4" >>"$1"
}

start_gw() { # NAME CONFIG ADMIN_PORT [ENV...] -> sets GW_PID (binary: AG_BIN, else $AUTHGATE)
  local name=$1 cfg=$2 adm=$3 bin=${AG_BIN:-$AUTHGATE}
  shift 3
  env "$@" "$bin" check --config "$cfg" >/dev/null 2>"$WORK/$name.check" ||
    die "$name: invalid config: $(cat "$WORK/$name.check")"
  env "$@" "${ON_SERVER[@]}" "$bin" serve --config "$cfg" >/dev/null 2>"$WORK/$name.err" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_http "http://127.0.0.1:$adm/readyz" "$GW_PID" "authgate ($name)" "$WORK/$name.err"
}

gw_conf "$WORK/gw.toml" "$P_GW" "$P_GWADM" ""
gw_conf "$WORK/gw-nocache.toml" "$P_GW2" "$P_GW2ADM" $'\n[token_cache]\nsize = 0'
GW=http://127.0.0.1:$P_GW
GW2=http://127.0.0.1:$P_GW2
HAP=http://127.0.0.1:$P_HAP
HAP_ALGS=(HS256 RS256 ES256)

# Sessions: a Redis with 1,000 express-session sessions (connect-redis JSON).
log "starting redis-server on 127.0.0.1:$P_REDIS"
"${ON_SERVER[@]}" redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no \
  --daemonize no --logfile "$WORK/redis.log" &
PID_REDIS=$!
PIDS+=("$PID_REDIS")
for _ in $(seq 100); do
  redis-cli -p "$P_REDIS" ping >/dev/null 2>&1 && break
  alive "$PID_REDIS" || die "redis-server exited: $(cat "$WORK/redis.log")"
  sleep 0.1
done
redis-cli -p "$P_REDIS" ping >/dev/null 2>&1 || die "redis-server did not answer"
redis-cli -p "$P_REDIS" --pipe <"$WORK/sessions.resp" >"$WORK/pipe.out" 2>&1 || die "loading sessions: $(cat "$WORK/pipe.out")"
[ "$(redis-cli -p "$P_REDIS" dbsize)" -ge 1000 ] || die "sessions not loaded: $(cat "$WORK/pipe.out")"
cat >"$WORK/sess.toml" <<EOF
[server]
listen = "127.0.0.1:$P_SESS"
admin_listen = "127.0.0.1:$P_SESSADM"
threads = 1

[store]
kind = "redis"
url = "redis://127.0.0.1:$P_REDIS/0"

[upstreams.app]
addrs = ["127.0.0.1:$P_UP"]

[sessions]
cookie = "sessionId"
secrets_env = ["AG_BENCH_SESSION_SECRET"]
key_prefix = "sess:"
rolling = false
identity = { subject = "userId", email = "email", roles = "role" }

[[routes]]
name = "sess"
path_prefix = "/sess/"
upstream = "app"
auth = "session"
EOF

# --- HAProxy ---------------------------------------------------------------
HS_SECRET=$(cat "$HS_SECRET_FILE") # like a secret_file: without the trailing newline
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096

defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 75s

frontend fe
  bind 127.0.0.1:$P_HAP
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('\$.alg')
  # Each path pins its algorithm (a token must not choose it) and its key.
  http-request deny if { path_beg /hs/ } !{ var(txn.jwt_alg) -m str HS256 }
  http-request deny if { path_beg /hs/ } !{ var(txn.bearer),jwt_verify(txn.jwt_alg,"$HS_SECRET") -m int 1 }
  http-request deny if { path_beg /rs/ } !{ var(txn.jwt_alg) -m str RS256 }
  http-request deny if { path_beg /rs/ } !{ var(txn.bearer),jwt_verify(txn.jwt_alg,"$FIX/rsa_pub.pem") -m int 1 }
  http-request deny if { path_beg /es/ } !{ var(txn.jwt_alg) -m str ES256 }
  http-request deny if { path_beg /es/ } !{ var(txn.bearer),jwt_verify(txn.jwt_alg,"$FIX/ec256_pub.pem") -m int 1 }
  default_backend app

backend app
  server up 127.0.0.1:$P_UP
EOF
haproxy -c -q -f "$WORK/haproxy.cfg" >"$WORK/haproxy.check" 2>&1 || die "HAProxy config: $(cat "$WORK/haproxy.check")"
start_hap() { # -> PID_HAP
  "${ON_SERVER[@]}" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  PID_HAP=$!
  PIDS+=("$PID_HAP")
  wait_http "$HAP/none/" "$PID_HAP" "haproxy" "$WORK/haproxy.log"
}

# --- HTTP/2 ------------------------------------------------------------------
# h2row KEY LABEL URL [HEADER]: h2load over TLS (ALPN h2), like `row`.
h2row() {
  local key=$1 label=$2 url=$3 hdr=${4:-} out rps mean bad failed
  local extra=()
  [ -n "$hdr" ] && extra=(-H "$hdr")
  log "row: $label"
  out=$("${ON_CLIENT[@]}" h2load -t1 -c"$CONNS" -m10 -D "$DURATION" --warm-up-time="$WARMUP" "${extra[@]}" "$url" 2>&1) ||
    die "$label: h2load failed: $out"
  echo "== $label" >>"$WORK/wrk.log"
  echo "$out" >>"$WORK/wrk.log"
  rps=$(echo "$out" | awk '/^finished in/ { gsub(",", ""); printf "%.0f", $4 }')
  mean=$(to_ms "$(echo "$out" | awk '$1 == "time" && $3 == "request:" { print $6 }')")
  # "status codes: A 2xx, B 3xx, C 4xx, D 5xx"; "requests: ... F failed, E errored"
  bad=$(echo "$out" | awk '/^status codes:/ { gsub(",", ""); print $5 + $7 + $9 }')
  failed=$(echo "$out" | awk '/^requests:/ { gsub(",", ""); print $10 + $12 }')
  [ -n "$rps" ] || die "$label: cannot parse h2load output: $out"
  if [ "${bad:-1}" != 0 ]; then
    echo "$out" >&2
    die "$label: $bad answers other than 2xx: the row is not measuring what it claims"
  fi
  [ -n "${LABEL[$key]:-}" ] || KEYS+=("$key")
  LABEL[$key]=$label
  ALL_RPS[$key]+="$rps " ALL_P50[$key]+="$mean " ALL_P99[$key]+="- "
  NOTE[$key]="h2load -m10; p50 column: mean ms"
  # a request cut by the end of the measured window counts as failed
  if [ "${failed:-0}" != 0 ]; then NOTE[$key]+="; failed or errored $failed"; fi
  RPS[$key]=$(median ${ALL_RPS[$key]})
  P50[$key]=$(median ${ALL_P50[$key]})
  P99[$key]=-
  echo "$ROUND|$key|$label|$rps|$mean|-|h2" >>"$RES"
  log "  round $ROUND: $rps req/s  mean $mean ms"
}

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/h2.key" -out "$WORK/h2.crt" -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1 ||
  die "openssl could not make the HTTP/2 rows' certificate"
nginx_conf "$WORK/h2up" "  server {
    listen 127.0.0.1:$P_H2UP http2;
    location / { default_type text/plain; return 200 \"ok\n\"; }
  }"
nginx_conf "$WORK/ngxh2" "  upstream app { server 127.0.0.1:$P_UP; keepalive 64; }
  upstream h2app { server 127.0.0.1:$P_H2UP; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGXH2 ssl http2;
    ssl_certificate $WORK/h2.crt;
    ssl_certificate_key $WORK/h2.key;
    http2_max_concurrent_streams 128;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
    location /h2c/ { grpc_pass grpc://h2app; }
  }"
gw_conf "$WORK/gwh2.toml" "$P_GWH2" "$P_GWH2ADM" "
[upstreams.h2up]
addrs = [\"127.0.0.1:$P_H2UP\"]
protocol = \"h2c\"

[[routes]]
name = \"h2c\"
path_prefix = \"/h2c/\"
upstream = \"h2up\"
auth = \"none\""
sed -i "s|^threads = 1$|threads = 1\ntls = { cert_file = \"$WORK/h2.crt\", key_file = \"$WORK/h2.key\" }|" "$WORK/gwh2.toml"

h2_rows() {
  local up ngx tok
  tok="authorization: Bearer $(head -1 "$TOK/RS256-pool.txt")"
  "${ON_SERVER[@]}" nginx -p "$WORK/h2up" -c "$WORK/h2up/nginx.conf" -e "$WORK/h2up/error.log" &
  up=$!
  PIDS+=("$up")
  "${ON_SERVER[@]}" nginx -p "$WORK/ngxh2" -c "$WORK/ngxh2/nginx.conf" -e "$WORK/ngxh2/error.log" &
  ngx=$!
  PIDS+=("$ngx")
  for _ in $(seq 100); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' --http2 "https://127.0.0.1:$P_NGXH2/none/")" = 200 ] && break
    alive "$ngx" || die "nginx (h2) exited: $(cat "$WORK/ngxh2/error.log")"
    sleep 0.1
  done
  [ "$(curl -sk -o /dev/null -w '%{http_code}' --http2 "https://127.0.0.1:$P_NGXH2/h2c/")" = 200 ] ||
    die "nginx (h2) grpc_pass to the h2c upstream does not answer 200: $(tail -5 "$WORK/ngxh2/error.log")"
  h2row ngx_h2 "nginx h2 proxy_pass (h2 baseline)" "https://127.0.0.1:$P_NGXH2/none/"
  # the same with the RS256 row's Authorization field (forwarded, not
  # checked): what the 600-byte field costs nginx and its upstream
  h2row ngx_h2_tok "nginx h2 proxy_pass + RS256 header, unchecked" "https://127.0.0.1:$P_NGXH2/none/" "$tok"
  h2row ngx_h2c "nginx h2, grpc_pass to an h2c upstream" "https://127.0.0.1:$P_NGXH2/h2c/"
  stop_pid "$ngx"
  start_gw gwh2 "$WORK/gwh2.toml" "$P_GWH2ADM"
  for u in /none/ /h2c/; do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' --http2 "https://127.0.0.1:$P_GWH2$u")" = 200 ] ||
      die "authgate (h2) $u does not answer 200"
  done
  [ "$(curl -sk -o /dev/null -w '%{http_code}' --http2 -H "$tok" "https://127.0.0.1:$P_GWH2/rs/")" = 200 ] ||
    die "authgate (h2) RS256 does not answer 200"
  h2row ag_h2_pass "authgate h2 pass-through (auth = none)" "https://127.0.0.1:$P_GWH2/none/"
  h2row ag_h2_RS256 "authgate h2 RS256, one pool token (cached)" "https://127.0.0.1:$P_GWH2/rs/" "$tok"
  h2row ag_h2_h2c "authgate h2, h2c upstream (auth = none)" "https://127.0.0.1:$P_GWH2/h2c/"
  stop_pid "$GW_PID" INT
  stop_pid "$up"
}

# --- the rows, ROUNDS times (every server restarted each round) -------------
for round in $(seq "$ROUNDS"); do
  ROUND=$round
  if [ "$H2" = 1 ]; then
    h2_rows
  fi
  [ "$ONLY_H2" = 1 ] && continue
  row ngx_up "nginx upstream directly" "http://127.0.0.1:$P_UP/"

  "${ON_SERVER[@]}" nginx -p "$WORK/px" -c "$WORK/px/nginx.conf" -e "$WORK/px/error.log" &
  PID_NGX=$!
  PIDS+=("$PID_NGX")
  wait_http "http://127.0.0.1:$P_NGX/" "$PID_NGX" "nginx proxy" "$WORK/px/error.log"
  row ngx_px "nginx proxy_pass (baseline)" "http://127.0.0.1:$P_NGX/none/"
  stop_pid "$PID_NGX"

  start_gw gw "$WORK/gw.toml" "$P_GWADM"
  expect_200 "authgate pass-through" "$GW/none/"
  for a in "${ALGS[@]}"; do
    expect_200 "authgate $a" "$GW/${PFX[$a]}/" "Authorization: Bearer $(head -1 "$TOK/$a-pool.txt")"
  done
  row ag_pass "authgate pass-through (auth = none)" "$GW/none/"
  # The same route with the RS256 pool's Authorization header (not checked):
  # what the bigger request costs, apart from authentication.
  row ag_pass_tok "authgate pass-through + RS256 header, unchecked" "$GW/none/" "$TOK/RS256-pool.txt" bearer
  for a in "${ALGS[@]}"; do
    row "ag_pool_$a" "authgate $a, 1,000-token pool" "$GW/${PFX[$a]}/" "$TOK/$a-pool.txt" bearer "" "$P_GWADM"
  done
  for a in "${ALGS[@]}"; do
    # Warm-up on the pool (other tokens), so every measured token is new.
    row "ag_dist_$a" "authgate $a, every token distinct" "$GW/${PFX[$a]}/" "$TOK/$a-distinct.txt" bearer \
      "$TOK/$a-pool.txt" "$P_GWADM"
  done
  stop_pid "$GW_PID" INT

  # The same gateway built with glibc's malloc instead of mimalloc (A/B).
  if [ "$ALLOC_AB" = 1 ]; then
    AG_BIN=$AUTHGATE_GLIBC start_gw gwglibc "$WORK/gw.toml" "$P_GWADM"
    row ag_glibc_pass "authgate pass-through, glibc malloc" "$GW/none/"
    row ag_glibc_pool_RS256 "authgate RS256, 1,000-token pool, glibc malloc" "$GW/${PFX[RS256]}/" "$TOK/RS256-pool.txt" bearer "" "$P_GWADM"
    stop_pid "$GW_PID" INT
  fi

  # The same gateway with no request log line (what the log costs).
  start_gw gwq "$WORK/gw.toml" "$P_GWADM" RUST_LOG=warn
  row ag_pass_quiet "authgate pass-through, request log off" "$GW/none/"
  stop_pid "$GW_PID" INT

  # Cache off: every request verifies (the 1,000-token pool).
  start_gw gwnc "$WORK/gw-nocache.toml" "$P_GW2ADM"
  for a in "${ALGS[@]}"; do
    row "ag_nc_$a" "authgate $a, cache off (size = 0), pool" "$GW2/${PFX[$a]}/" "$TOK/$a-pool.txt" bearer
  done
  stop_pid "$GW_PID" INT

  start_gw sess "$WORK/sess.toml" "$P_SESSADM" AG_BENCH_SESSION_SECRET="$SESSION_SECRET"
  expect_200 "authgate session" "http://127.0.0.1:$P_SESS/sess/" "Cookie: sessionId=$(head -1 "$WORK/cookies.txt")"
  row ag_sess "authgate session, 1,000 sessions" "http://127.0.0.1:$P_SESS/sess/" "$WORK/cookies.txt" cookie
  stop_pid "$GW_PID" INT

  start_hap
  for a in "${HAP_ALGS[@]}"; do
    expect_200 "HAProxy $a" "$HAP/${PFX[$a]}/" "Authorization: Bearer $(head -1 "$TOK/$a-pool.txt")"
    bad=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -1 "$TOK/$a-pool.txt")x" "$HAP/${PFX[$a]}/")
    [ "$bad" = 403 ] || die "HAProxy $a: a tampered token got $bad, expected 403 (jwt_verify not effective)"
  done
  for a in "${HAP_ALGS[@]}"; do
    row "hap_pool_$a" "HAProxy $haproxy_version $a, 1,000-token pool" "$HAP/${PFX[$a]}/" "$TOK/$a-pool.txt" bearer
  done
  for a in "${HAP_ALGS[@]}"; do
    row "hap_dist_$a" "HAProxy $haproxy_version $a, every token distinct" "$HAP/${PFX[$a]}/" \
      "$TOK/$a-distinct.txt" bearer "$TOK/$a-pool.txt"
  done
  stop_pid "$PID_HAP"
done
stop_pid "$PID_REDIS"

# --- fixed rate: latency added by authentication ----------------------------
FIXED=$WORK/fixed
: >"$FIXED"
declare -A FX_P50=() FX_P99=() FX_RATE=() FX_ALL_P50=() FX_ALL_P99=()
# The value of KEY in the rate client's `key=value ...` line.
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
# Each call adds a round for KEY: the row's p50/p99 are the medians over its
# rounds; $FIXED keeps one line per key (first round's order).
fixed() { # KEY LABEL ADDR PATH RATE [TOKENS [KIND]]
  local key=$1 label=$2 addr=$3 path=$4 rate=$5 toks=${6:-} kind=${7:-bearer} out
  local extra=()
  [ -n "$toks" ] && extra=(--tokens "$toks" --kind "$kind")
  log "fixed rate $rate/s: $label"
  out=$("${ON_CLIENT[@]}" "$TOOLS" rate --addr "$addr" --path "$path" --rate "$rate" --secs "$DURATION" \
    --warmup "$WARMUP" --conns "$FIXED_CONNS" "${extra[@]}") || die "$label: fixed-rate client failed"
  local p50 p99 achieved non200
  p50=$(field "$out" p50_ms)
  p99=$(field "$out" p99_ms)
  achieved=$(field "$out" achieved)
  non200=$(field "$out" non200)
  [ "$non200" = 0 ] || die "$label: $non200 non-200 responses at fixed rate: $out"
  [ -n "${FX_RATE[$key]:-}" ] || echo "$key|$label|$rate|$achieved" >>"$FIXED"
  FX_ALL_P50[$key]+="$p50 " FX_ALL_P99[$key]+="$p99 "
  FX_P50[$key]=$(median ${FX_ALL_P50[$key]}) FX_P99[$key]=$(median ${FX_ALL_P99[$key]}) FX_RATE[$key]=$rate
  log "  $out"
}
# Paired: one open-loop run whose requests alternate between a JWT route
# (the pool's tokens) and pass-through (no token), at the same total rate:
# both classes share the same seconds, connections and process, so a stall
# of the host lands on both, and p99(JWT) - p99(pass-through) in the same
# window is what authentication adds. Each round's difference is kept; the
# row shows their median and range.
declare -A PR_DIFF=() PR_JWT=() PR_PASS=()
pair_fixed() { # ALG ADDR RATE
  local a=$1 addr=$2 rate=$3 out p99 pp99 non200
  log "fixed rate $rate/s, paired: authgate $a pool / pass-through"
  out=$("${ON_CLIENT[@]}" "$TOOLS" rate --addr "$addr" --path "/${PFX[$a]}/" --rate "$rate" --secs "$DURATION" \
    --warmup "$WARMUP" --conns "$FIXED_CONNS" --tokens "$TOK/$a-pool.txt" --kind bearer --pair-path /none/) ||
    die "$a paired: fixed-rate client failed"
  p99=$(field "$out" p99_ms)
  pp99=$(field "$out" pair_p99_ms)
  non200=$(field "$out" non200)
  [ "$non200" = 0 ] || die "$a paired: $non200 non-200 responses at fixed rate: $out"
  [ -n "$p99" ] && [ -n "$pp99" ] || die "$a paired: no p99 in: $out"
  PR_JWT[$a]+="$p99 " PR_PASS[$a]+="$pp99 "
  PR_DIFF[$a]+="$(awk -v x="$p99" -v y="$pp99" 'BEGIN { printf "%.3f", x - y }') "
  log "  $out"
}
if [ "$FIXED_RATE" = 1 ]; then
  R=$(awk -v r="${RPS[ag_pass]:-}" 'BEGIN { printf "%d", int(r * 0.5 / 100) * 100 }')
  start_gw gw "$WORK/gw.toml" "$P_GWADM"
  GWA=127.0.0.1:$P_GW
  # interleaved rounds: a neighbour's stall lands in one round of one row,
  # and the medians set it aside
  for _ in $(seq "$FIXED_ROUNDS"); do
    fixed "fx_pass_$R" "authgate pass-through" "$GWA" /none/ "$R"
    fixed "fx_hdr_$R" "authgate pass-through + RS256 header, unchecked" "$GWA" /none/ "$R" "$TOK/RS256-pool.txt"
    for a in "${ALGS[@]}"; do
      fixed "fx_pool_$a" "authgate $a, 1,000-token pool" "$GWA" "/${PFX[$a]}/" "$R" "$TOK/$a-pool.txt"
    done
    for a in "${ALGS[@]}"; do
      pair_fixed "$a" "$GWA" "$R"
    done
  done
  stop_pid "$GW_PID" INT
  # Cache off: at the same rate when the row's saturation allows 2x, else at
  # half its own saturation, with a pass-through run at that rate too.
  start_gw gwnc "$WORK/gw-nocache.toml" "$P_GW2ADM"
  for a in "${ALGS[@]}"; do
    r=$(awk -v r="${RPS[ag_nc_$a]:-}" -v c="$R" 'BEGIN { h = int(r * 0.5 / 100) * 100; printf "%d", (h < c ? h : c) }')
    fixed "fx_nc_$a" "authgate $a, cache off, pool" "127.0.0.1:$P_GW2" "/${PFX[$a]}/" "$r" "$TOK/$a-pool.txt"
  done
  stop_pid "$GW_PID" INT
  start_hap
  for a in "${HAP_ALGS[@]}"; do
    r=$(awk -v r="${RPS[hap_pool_$a]:-}" -v c="$R" 'BEGIN { h = int(r * 0.5 / 100) * 100; printf "%d", (h < c ? h : c) }')
    fixed "fx_hap_$a" "HAProxy $a, pool" "127.0.0.1:$P_HAP" "/${PFX[$a]}/" "$r" "$TOK/$a-pool.txt"
  done
  stop_pid "$PID_HAP"
  # Pass-through references at every other rate used.
  start_gw gw "$WORK/gw.toml" "$P_GWADM"
  for r in $(cut -d'|' -f3 "$FIXED" | sort -u); do
    [ -n "${FX_P99[fx_pass_$r]:-}" ] || fixed "fx_pass_$r" "authgate pass-through" "$GWA" /none/ "$r"
  done
  stop_pid "$GW_PID" INT
fi

# --- report ----------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
hap_of() { # row key -> the HAProxy row it compares with (same alg, same token set)
  case $1 in
  ag_pool_* | hap_pool_*) echo "hap_pool_${1##*_}" ;;
  ag_dist_* | ag_nc_* | hap_dist_*) echo "hap_dist_${1##*_}" ;;
  esac
}
{
  echo "authgate load benchmark  ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo "  machine: $cpus x $(lscpu 2>/dev/null | awk -F: '/Model name/ && !n++ { gsub(/^ +/, "", $2); print $2 }'), $(uname -r); servers on core $SERVER_CPU, wrk on core $CLIENT_CPU"
  echo "  load average at start: $LOAD_START   at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "  authgate $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (+ uncommitted changes)') (--profile dist) threads = 1, stdout to /dev/null; $(nginx -v 2>&1 | cut -d' ' -f3); HAProxy $haproxy_version nbthread 1; $(wrk --version 2>&1 | awk 'NR == 1 { print $1, $2 }'); redis $(redis-server --version | awk '{print $3}' | cut -d= -f2)"
  echo "  wrk -t1 -c$CONNS -d${DURATION}s --latency after a ${WARMUP}s warm-up; distinct rows: $DISTINCT tokens per algorithm, each used at most once${PRIORITY:+; every benchmarked process at nice $PRIORITY}"
  echo
  ((ROUNDS == 1)) || echo "  $ROUNDS rounds: req/s, p50 and p99 are the medians over the rounds; \"range\" is the lowest-highest round"
  echo
  printf '| %-50s | %8s | %11s | %7s | %7s | %8s | %8s | %s\n' "row" "req/s" "range" "p50 ms" "p99 ms" "vs pass" "vs HAP" "notes |"
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..52})" "---------:" "------------:" "--------:" "--------:" "---------:" "---------:" "-------"
  for key in "${KEYS[@]}"; do
    h=$(hap_of "$key")
    rps=${RPS[$key]:-}
    printf '| %-50s | %8s | %11s | %7s | %7s | %8s | %8s | %s |\n' "${LABEL[$key]}" "$rps" "$(spread ${ALL_RPS[$key]})" \
      "${P50[$key]}" "${P99[$key]}" "$(ratio "$rps" "${RPS[ag_pass]:-}")" \
      "$([ -n "$h" ] && ratio "$rps" "${RPS[$h]:-}" || echo -)" "${NOTE[$key]:--}"
  done
  if [ -s "$FIXED" ]; then
    echo
    echo "Fixed rate (open loop, latency from each request's due time; $FIXED_CONNS connections, ${DURATION}s after ${WARMUP}s;"
    echo "rows with a p99 range ran $FIXED_ROUNDS interleaved rounds: p50 and p99 are their medians):"
    echo
    printf '| %-50s | %7s | %8s | %7s | %7s | %13s | %17s | %17s |\n' "row" "rate/s" "achieved" "p50 ms" "p99 ms" "p99 range ms" "p50 added vs pass" "p99 added vs pass"
    printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..52})" "--------:" "---------:" "--------:" "--------:" "--------------:" "------------------:" "------------------:"
    while IFS='|' read -r key label rate achieved; do
      diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "") print "-"; else printf "%+.3f ms", a - b }'; }
      range=$(echo ${FX_ALL_P99[$key]} | awk '{ if (NF < 2) { print "-"; exit } lo = $1; hi = $1; for (i = 2; i <= NF; i++) { if ($i < lo) lo = $i; if ($i > hi) hi = $i } printf "%.2f-%.2f", lo, hi }')
      printf '| %-50s | %7s | %8s | %7s | %7s | %13s | %17s | %17s |\n' "$label" "$rate" "$achieved" "${FX_P50[$key]}" "${FX_P99[$key]}" "$range" \
        "$(diff_ms "${FX_P50[$key]}" "${FX_P50[fx_pass_$rate]:-}")" "$(diff_ms "${FX_P99[$key]}" "${FX_P99[fx_pass_$rate]:-}")"
    done <"$FIXED"
  fi
  if ((${#PR_DIFF[@]})); then
    echo
    echo "Paired at fixed rate (one open-loop run per round whose requests alternate between the JWT route"
    echo "with the pool's tokens and pass-through without a token, $R/s in all; $FIXED_ROUNDS rounds; p99 are medians,"
    echo "\"p99 added\" is the median of each round's p99(JWT) - p99(pass-through) in the same window):"
    echo
    printf '| %-50s | %7s | %11s | %11s | %17s | %17s |\n' "row" "rate/s" "JWT p99 ms" "pass p99 ms" "p99 added (median)" "p99 added range"
    printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..52})" "--------:" "------------:" "------------:" "-------------------:" "------------------:"
    for a in "${ALGS[@]}"; do
      [ -n "${PR_DIFF[$a]:-}" ] || continue
      printf '| %-50s | %7s | %11s | %11s | %+15.3f ms | %17s |\n' "authgate $a pool / pass-through, paired" "$R" \
        "$(median ${PR_JWT[$a]})" "$(median ${PR_PASS[$a]})" "$(median ${PR_DIFF[$a]})" \
        "$(echo ${PR_DIFF[$a]} | awk '{ lo = $1; hi = $1; for (i = 2; i <= NF; i++) { if ($i < lo) lo = $i; if ($i > hi) hi = $i } printf "%+.3f..%+.3f", lo, hi }')"
    done
  fi
  echo
  echo "Targets:"
  target() { # LABEL VALUE OP THRESHOLD
    local v=$2
    if [ "$v" = - ]; then
      printf '  %-58s %6s   (not measured)\n' "$1" "$v"
      return
    fi
    if awk -v v="$v" -v t="$4" 'BEGIN { exit !(v >= t) }'; then
      printf '  %-58s %6s >= %-5s met\n' "$1" "$v" "$4"
    else
      printf '  %-58s %6s >= %-5s MISSED\n' "$1" "$v" "$4"
    fi
  }
  target "RS256 pool / authgate pass-through" "$(ratio "${RPS[ag_pool_RS256]:-}" "${RPS[ag_pass]:-}")" ">=" 0.90
  target "ES256 pool / authgate pass-through" "$(ratio "${RPS[ag_pool_ES256]:-}" "${RPS[ag_pass]:-}")" ">=" 0.90
  target "RS256 pool / HAProxy RS256" "$(ratio "${RPS[ag_pool_RS256]:-}" "${RPS[hap_pool_RS256]:-}")" ">=" 1.8
  target "ES256 pool / HAProxy ES256" "$(ratio "${RPS[ag_pool_ES256]:-}" "${RPS[hap_pool_ES256]:-}")" ">=" 3.0
  for a in "${HAP_ALGS[@]}"; do
    target "$a every token distinct / HAProxy $a (distinct)" "$(ratio "${RPS[ag_dist_$a]:-}" "${RPS[hap_dist_$a]:-}")" ">=" 1.0
  done
  target "authgate pass-through / nginx proxy_pass" "$(ratio "${RPS[ag_pass]:-}" "${RPS[ngx_px]:-}")" ">=" 0.90
  target "h2: authgate RS256 / nginx pass-through (both h2)" "$(ratio "${RPS[ag_h2_RS256]:-}" "${RPS[ngx_h2]:-}")" ">=" 1.0
  target "h2: authgate pass-through / nginx pass-through" "$(ratio "${RPS[ag_h2_pass]:-}" "${RPS[ngx_h2]:-}")" ">=" 0.90
  # not a target: the like-for-like reference (both carry the token upstream)
  printf '  %-58s %6s   (reference)\n' "h2: authgate RS256 / nginx + the same header, unchecked" \
    "$(ratio "${RPS[ag_h2_RS256]:-}" "${RPS[ngx_h2_tok]:-}")"
  # p99 added by authentication at 50 % load: the paired runs (the same
  # window for both classes), the median over the rounds
  for a in "${ALGS[@]}"; do
    d=${PR_DIFF[$a]:-}
    if [ -z "$d" ]; then
      printf '  %-58s %6s   (not measured)\n' "$a pool: p99 added at 50 % load, paired (ms)" -
      continue
    fi
    d=$(median $d)
    if awk -v d="$d" 'BEGIN { exit !(d < 0.2) }'; then
      printf '  %-58s %+6.3f <  0.2   met\n' "$a pool: p99 added at 50 % load, paired (ms)" "$d"
    else
      printf '  %-58s %+6.3f <  0.2   MISSED\n' "$a pool: p99 added at 50 % load, paired (ms)" "$d"
    fi
  done
  # the same from separate windows (each row its own 10 s; host stalls in
  # one window and not the other show up here)
  for a in "${ALGS[@]}"; do
    local_p=${FX_P99[fx_pool_$a]:-}
    pass_p=${FX_P99[fx_pass_${FX_RATE[fx_pool_$a]:-none}]:-}
    if [ -z "$local_p" ] || [ -z "$pass_p" ]; then
      printf '  %-58s %6s   (not measured)\n' "$a pool: p99 added at 50 % load, separate windows (ms)" -
    elif awk -v a="$local_p" -v b="$pass_p" 'BEGIN { exit !(a - b < 0.2) }'; then
      printf '  %-58s %+6.3f <  0.2   met\n' "$a pool: p99 added at 50 % load, separate windows (ms)" "$(awk -v a="$local_p" -v b="$pass_p" 'BEGIN { print a - b }')"
    else
      printf '  %-58s %+6.3f <  0.2   MISSED\n' "$a pool: p99 added at 50 % load, separate windows (ms)" "$(awk -v a="$local_p" -v b="$pass_p" 'BEGIN { print a - b }')"
    fi
  done
} >"$WORK/report"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report" "$OUT"
cp "$WORK/wrk.log" "${OUT%.txt}.wrk.log"
echo
cat "$WORK/report"
echo
echo "(saved to $OUT; raw wrk output in ${OUT%.txt}.wrk.log)"
