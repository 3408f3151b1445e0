#!/usr/bin/env bash
# Soak test (issue 8): mixed traffic against one gateway for a while, with the
# gateway's resident memory (RSS) sampled every INTERVAL seconds. Prints the
# series, the growth, and a verdict. Not part of CI (it takes minutes and a
# core); run it by hand:
#
#   ./benches/soak.sh                      # 10 minutes at ~1,000 req/s
#   DURATION=180 RATE=800 ./benches/soak.sh
#
# Traffic, in one wrk run (keep-alive, CONNS connections, paced by wrk's
# `delay()` hook to about RATE requests/s), round-robin over a mix of:
#   - JWT route, HS256, a pool of TOKENS distinct valid tokens (each has its
#     own jti, so the verified-token cache fills up to its bound) ...... 200
#   - JWT route, forged signatures and expired tokens ................... 401
#   - session route, SESSIONS express-session cookies in Redis .......... 200
#   - session route, cookies signed with the wrong secret ............... 401
#   - a rate-limited login (POST form body, key form:username, one budget per
#     user; generous limit, so almost all pass) ......................... 200/429
#   - a public route, and a path no route matches ....................... 200/404
# Redis is a redis-server started here on a free port (no persistence).
#
# Env: DURATION (600 s) RATE (1000) CONNS (16) INTERVAL (10 s) WARMUP (120 s:
# growth is measured from the first sample at or after it) TOKENS (20000)
# SESSIONS (2000) MAX_GROWTH_PCT (25: verdict threshold, growth after warm-up)
# KEEP (0: 1 keeps the work directory). Exits non-zero when the gateway dies,
# answers 5xx, or grows past MAX_GROWTH_PCT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-600}
RATE=${RATE:-1000}
CONNS=${CONNS:-16}
INTERVAL=${INTERVAL:-10}
WARMUP=${WARMUP:-120}
TOKENS=${TOKENS:-20000}
SESSIONS=${SESSIONS:-2000}
MAX_GROWTH_PCT=${MAX_GROWTH_PCT:-25}
KEEP=${KEEP:-0}

die() { echo "soak.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }

for c in wrk redis-server redis-cli python3 curl; do
  command -v "$c" >/dev/null 2>&1 || die "needs $c (apt-get install -y wrk redis-server redis-tools python3 curl)"
done

log "building the release binary"
cargo build --release --locked --bin authgate >/dev/null 2>&1 || cargo build --release --bin authgate
BIN=$ROOT/target/release/authgate

WORK=$(mktemp -d /tmp/authgate-soak.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PROXY=$(free_port); ADMIN=$(free_port); UP=$(free_port); REDIS=$(free_port)

redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
"$BIN" echo --listen "127.0.0.1:$UP" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS" ping >/dev/null 2>&1 && break; sleep 0.1; done

export SOAK_HS_SECRET=soak-hs-secret-0123456789abcdef0123456789abcdef
export SOAK_SESSION_SECRET=soak-session-secret-0123456789abcdef
cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$PROXY"
admin_listen = "127.0.0.1:$ADMIN"
threads = 2

[store]
kind = "redis"
url = "redis://127.0.0.1:$REDIS/0"
on_error = "deny"

[upstreams.app]
addrs = ["127.0.0.1:$UP"]

[issuers.hs]
issuer = "https://soak.test"
audiences = ["api"]
algorithms = ["HS256"]
secret_env = "SOAK_HS_SECRET"

[sessions]
cookie = "sid"
secrets_env = ["SOAK_SESSION_SECRET"]
rolling = true
identity = { subject = "userId", email = "email" }

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "jwt"
headers = { "X-Tenant" = "tenant" }

[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "session"

[[routes]]
name = "login"
path = "/login"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "form:username"
limit = 1000
window = "1m"

[[routes]]
name = "public"
path_prefix = "/public/"
upstream = "app"
auth = "none"
EOF

log "minting $TOKENS tokens and $SESSIONS sessions"
python3 - "$WORK" "$TOKENS" "$SESSIONS" "$REDIS" <<'PY'
import base64, hashlib, hmac, json, os, sys, time, urllib.parse, subprocess
work, ntok, nses, rport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hs = os.environ["SOAK_HS_SECRET"].encode()
ss = os.environ["SOAK_SESSION_SECRET"].encode()
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
now = int(time.time())
def jwt(claims, key=hs):
    si = b(b'{"alg":"HS256","typ":"JWT"}') + "." + b(json.dumps(claims, separators=(",", ":")).encode())
    return si + "." + b(hmac.new(key, si.encode(), hashlib.sha256).digest())
def cookie(sid, key=ss):
    sig = base64.b64encode(hmac.new(key, sid.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    return urllib.parse.quote("s:" + sid + "." + sig, safe="-_.!~*'()")
reqs = []
good = [jwt({"iss": "https://soak.test", "aud": "api", "sub": f"user-{i % 500}", "jti": f"j{i}",
             "iat": now, "exp": now + 86400, "tenant": f"t{i % 7}"}) for i in range(ntok)]
bad = [jwt({"iss": "https://soak.test", "aud": "api", "sub": "x", "exp": now + 86400}, key=b"wrong"),
       jwt({"iss": "https://soak.test", "aud": "api", "sub": "x", "exp": now - 3600})]
sids = [f"soak-{i}-{hashlib.sha256(str(i).encode()).hexdigest()[:20]}" for i in range(nses)]
with open(f"{work}/sessions.resp", "w") as f:
    for i, sid in enumerate(sids):
        v = json.dumps({"cookie": {"originalMaxAge": 86400000, "expires": "2099-01-01T00:00:00.000Z",
                                   "httpOnly": True, "path": "/"}, "userId": f"u{i}", "email": f"u{i}@x"})
        for part in (["SET", f"sess:{sid}", v, "PX", "86400000"],):
            f.write(f"*{len(part)}\r\n" + "".join(f"${len(p.encode())}\r\n{p}\r\n" for p in part))
subprocess.run(["sh", "-c", f"redis-cli -p {rport} --pipe < {work}/sessions.resp >/dev/null"], check=True)
# One request per line: METHOD \t PATH \t HEADER \t BODY (header "-" = none).
lines = []
for i in range(max(ntok, nses, 10000)):
    lines.append(f"GET\t/api/r{i % 50}\tAuthorization: Bearer {good[i % ntok]}\t")
    lines.append(f"GET\t/app/r{i % 50}\tCookie: sid={cookie(sids[i % nses])}\t")
    lines.append(f"GET\t/api/r{i % 50}\tAuthorization: Bearer {good[(i * 7) % ntok]}\t")
    if i % 4 == 0:
        lines.append(f"GET\t/api/bad\tAuthorization: Bearer {bad[(i // 4) % 2]}\t")
        lines.append(f"GET\t/app/bad\tCookie: sid={cookie(sids[i % nses], key=b'wrong')}\t")
        lines.append(f"POST\t/login\tContent-Type: application/x-www-form-urlencoded\tusername=user{i % 3000}&password=pw{i}")
        lines.append(f"GET\t/public/p{i % 10}\t-\t")
        lines.append(f"GET\t/nowhere/{i % 10}\t-\t")
with open(f"{work}/requests.tsv", "w") as f:
    f.write("\n".join(lines) + "\n")
print(len(lines), file=sys.stderr)
PY

cat >"$WORK/mix.lua" <<'LUA'
local reqs = {}
local n = 0
local path = os.getenv("SOAK_REQS")
for line in io.lines(path) do
  local m, p, h, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
  if m then
    local headers = {}
    if h ~= "-" and h ~= "" then
      local k, v = h:match("^([^:]+): (.*)$")
      headers[k] = v
    end
    if body == "" then body = nil end
    n = n + 1
    reqs[n] = wrk.format(m, p, headers, body)
  end
end
local i = 0
local pace = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
function setup(thread) end
function init(args)
  i = math.random(n)
end
function delay()
  return pace
end
function request()
  i = i % n + 1
  return reqs[i]
end
local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  io.write(string.format("soak: %d requests, %d errors (connect %d, read %d, write %d, timeout %d, status %d)\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout, summary.errors.status))
end
LUA

"$BIN" serve --config "$WORK/gateway.toml" >/dev/null 2>"$WORK/gateway.err" &
GW=$!
PIDS+=($GW)
for _ in $(seq 200); do
  curl -fs "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1 && break
  kill -0 "$GW" 2>/dev/null || { cat "$WORK/gateway.err" >&2; die "gateway exited at start-up"; }
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN/readyz" >/dev/null || log "warning: /readyz not 200 yet"

mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$GW/status" 2>/dev/null || echo 0; }
requests_total() {
  curl -fs "http://127.0.0.1:$ADMIN/metrics" 2>/dev/null |
    awk '/^authgate_requests_total/ {s += $NF} END {printf "%d", s}'
}

DELAY_MS=$(( CONNS * 1000 / RATE ))
log "soak: ${DURATION}s, ~${RATE} req/s over $CONNS connections (delay ${DELAY_MS} ms), RSS every ${INTERVAL}s"
SOAK_REQS="$WORK/requests.tsv" SOAK_DELAY_MS=$DELAY_MS \
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$WORK/mix.lua" "http://127.0.0.1:$PROXY" \
  >"$WORK/wrk.out" 2>&1 &
WRK=$!
PIDS+=($WRK)

start=$(date +%s)
samples=()
printf "%8s %10s %12s %10s\n" "t (s)" "RSS (MB)" "requests" "req/s" >&2
prev_req=0; prev_t=0
while kill -0 "$WRK" 2>/dev/null; do
  t=$(( $(date +%s) - start ))
  kill -0 "$GW" 2>/dev/null || die "the gateway died at t=${t}s: $(tail -5 "$WORK/gateway.err")"
  r=$(rss_kb); q=$(requests_total)
  rate=0; [ "$t" -gt "$prev_t" ] && rate=$(( (q - prev_req) / (t - prev_t) ))
  samples+=("$t:$r:$q")
  printf "%8d %10s %12d %10d\n" "$t" "$(mb "$r")" "$q" "$rate" >&2
  prev_req=$q; prev_t=$t
  sleep "$INTERVAL"
done
wait "$WRK" || true
t=$(( $(date +%s) - start )); r=$(rss_kb); q=$(requests_total)
samples+=("$t:$r:$q")
printf "%8d %10s %12d %10s\n" "$t" "$(mb "$r")" "$q" "(end)" >&2
cat "$WORK/wrk.out" >&2
kill -0 "$GW" 2>/dev/null || die "the gateway died"

# 5xx answers, by the gateway's own count
fivexx=$(curl -fs "http://127.0.0.1:$ADMIN/metrics" |
  awk '/^authgate_requests_total/ && /outcome="error"/ && !/store_unavailable|upstream_error/ {s += $NF} END {printf "%d", s}')
metrics_5xx=$(curl -fs "http://127.0.0.1:$ADMIN/metrics" | grep -E '^authgate_requests_total.*outcome="error"' || true)

echo "soak: answers by route, outcome and reason (the gateway's metrics):" >&2
curl -fs "http://127.0.0.1:$ADMIN/metrics" |
  awk '/^authgate_requests_total\{/ { sub(/^authgate_requests_total/, ""); printf "  %-70s %d\n", $1, $2 }' >&2
rc=0
python3 - "$WARMUP" "$MAX_GROWTH_PCT" "${samples[@]}" <<'PY' || rc=$?
import sys
warm, limit = float(sys.argv[1]), float(sys.argv[2])
pts = [tuple(int(x) for x in s.split(":")) for s in sys.argv[3:]]
base = next((p for p in pts if p[0] >= warm), pts[0])
first, last = pts[0], pts[-1]
peak = max(p[1] for p in pts)
after = [p for p in pts if p[0] >= base[0]]
n = len(after)
slope = 0.0
if n >= 2:
    mt = sum(p[0] for p in after) / n; mr = sum(p[1] for p in after) / n
    den = sum((p[0] - mt) ** 2 for p in after)
    slope = sum((p[0] - mt) * (p[1] - mr) for p in after) / den if den else 0.0
growth = (last[1] - base[1]) / base[1] * 100 if base[1] else 0.0
print(f"soak: RSS first {first[1]/1024:.1f} MB (t={first[0]}s), at warm-up {base[1]/1024:.1f} MB (t={base[0]}s), "
      f"end {last[1]/1024:.1f} MB (t={last[0]}s), peak {peak/1024:.1f} MB")
print(f"soak: growth after warm-up {last[1]-base[1]:+d} kB ({growth:+.1f} %), trend {slope*60:+.1f} kB/min; "
      f"{last[2]} requests ({last[2]/max(last[0],1):.0f}/s)")
verdict = "FLAT" if growth <= limit else "GREW"
print(f"soak: verdict {verdict} (limit {limit:.0f} %)")
sys.exit(0 if verdict == "FLAT" else 3)
PY
if [ -n "$metrics_5xx" ]; then
  echo "soak: error outcomes:" >&2
  echo "$metrics_5xx" >&2
fi
[ "${fivexx:-0}" -eq 0 ] || { echo "soak: $fivexx internal-error answers" >&2; rc=4; }
exit $rc
