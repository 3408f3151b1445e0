#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (default 600) on one core,
# with a working corpus under $WORK (default /tmp/authgate-fuzz) seeded from
# fuzz/corpus/<target>. Prints one summary line per target; full logs and any
# crash artifacts stay under $WORK. See docs/security.md.
#
#   fuzz/run_all.sh [SECONDS] [TARGET...]
#
# Needs: cargo install cargo-fuzz; a C++ compiler. Works on the stable
# toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Zsanitizer=address).
set -uo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(jws cookie_session config router ratelimit_body direct_framing differential)
# `differential` starts the release binary (AUTHGATE_BIN, default
# target/release/authgate) twice, once per proxy path
if [[ " ${targets[*]} " == *" differential "* ]] && [ -z "${AUTHGATE_BIN:-}" ]; then
  cargo build --release --locked --bin authgate >/dev/null
fi
work="${WORK:-/tmp/authgate-fuzz}"
mkdir -p "$work/logs"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O >/dev/null
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "$work/artifacts/$t"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=fuzz/dict/$t.dict")
  # differential's scripted upstream threads live as long as the process:
  # LeakSanitizer reports their buffers at exit (the gateways it tests are
  # separate processes, not instrumented here)
  asan="${ASAN_OPTIONS:-}"
  [ "$t" = differential ] && asan="detect_leaks=0${asan:+:$asan}" && dict+=("-detect_leaks=0")
  start=$(date +%s)
  ASAN_OPTIONS="$asan" cargo fuzz run -O "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t/" "${dict[@]}" >"$work/logs/$t.log" 2>&1
  rc=$?
  end=$(date +%s)
  last=$(grep -E '^#[0-9]+' "$work/logs/$t.log" | tail -1)
  execs=$(grep -E '^stat::number_of_executed_units' "$work/logs/$t.log" | awk '{print $2}')
  crashes=$(ls "$work/artifacts/$t" 2>/dev/null | wc -l)
  echo "$t rc=$rc secs=$((end - start)) execs=${execs:-?} artifacts=$crashes | $last"
done
