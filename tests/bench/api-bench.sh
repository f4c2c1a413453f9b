#!/usr/bin/env bash
# Management API benchmark on a 3-node pbx-node cluster (not run in CI).
#
# Measures, in one run:
#   reads_per_sec          GET of one extension, 64 concurrent clients spread
#                          over the 3 nodes (wrk, 20 s), every answer a 200
#   p99_read_ms            the worst node's 99th percentile of those GETs
#   writes_per_sec         PUT of an extension (a new display name), same load
#   p99_write_ms           likewise
#   import_10k_s           POST of a 10,000-row CSV (new extensions) to node 1
#   list_10k_filtered_ms   GET of the extensions list filtered down to one
#                          department (1,000 of the 10,000), median of 5
# Progress goes to stderr; the last line on stdout is one JSON object.
#
# Env: BENCH_SECS (20) per load phase, BENCH_KEEP=1 keeps the logs,
# BENCH_SKIP_BUILD=1 runs the pbx-node already built, BENCH_TARGET_DIR is
# the cargo target dir of its release build (default ~/.cache/pbx-bench-target).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECS=${BENCH_SECS:-20}
TARGET_DIR=${BENCH_TARGET_DIR:-$HOME/.cache/pbx-bench-target}
BIN=$TARGET_DIR/release/pbx-node
ADMIN_PASSWORD=bench-admin-1
HTTP=(0 18181 18182 18183)
RAFT=(0 7501 7502 7503)
SIP=(0 15161 15162 15163)
WORK=$(mktemp -d /tmp/api-bench.XXXXXX)
PIDS=()
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { echo "[$(date +%T)] $*" >&2; }

cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$code" -ne 0 ]; then
    log "logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  log "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi

if [ "${BENCH_SKIP_BUILD:-0}" = 1 ] && [ -x "$BIN" ]; then
  log "using the pbx-node built $(date -r "$BIN" '+%F %T')"
else
  log "building pbx-node (release) into $TARGET_DIR"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p pbx-node >"$WORK/build.log" 2>&1) ||
    { cat "$WORK/build.log" >&2; exit 1; }
fi

# --- cluster -------------------------------------------------------------------
TLS=$WORK/tls
mkdir -p "$TLS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$TLS/ca.key" -out "$TLS/ca.pem" -days 2 -subj "/CN=bench cluster CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for id in 1 2 3; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$TLS/node-$id.key" -out "$TLS/node-$id.csr" -subj "/CN=node-$id.raft.pbx" 2>/dev/null
  printf 'subjectAltName=DNS:node-%s.raft.pbx\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$id" >"$TLS/node-$id.ext"
  openssl x509 -req -in "$TLS/node-$id.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
    -CAcreateserial -days 2 -extfile "$TLS/node-$id.ext" -out "$TLS/node-$id.pem" 2>/dev/null
done
NODE_PID=(0 0 0 0)
for id in 1 2 3; do
  peers=()
  for other in 1 2 3; do
    [ "$other" = "$id" ] || peers+=("$other@127.0.0.1:${RAFT[$other]}")
  done
  env -u RUST_BACKTRACE RUST_LOG=warn "$BIN" --node-id "$id" --data-dir "$WORK/node$id" \
    --sip-udp-listen "127.0.0.1:${SIP[$id]}" --sip-tcp-listen "127.0.0.1:${SIP[$id]}" \
    --raft-listen "127.0.0.1:${RAFT[$id]}" --http-listen "127.0.0.1:${HTTP[$id]}" \
    --peers "$(IFS=,; echo "${peers[*]}")" --demo false \
    --cluster-ca "$TLS/ca.pem" --cluster-cert "$TLS/node-$id.pem" --cluster-key "$TLS/node-$id.key" \
    --admin-password "$ADMIN_PASSWORD" </dev/null >"$WORK/node$id.log" 2>&1 &
  NODE_PID[$id]=$!
  PIDS+=("$!")
done
for id in 1 2 3; do
  until grep -q '^ready ' "$WORK/node$id.log" 2>/dev/null; do
    kill -0 "${NODE_PID[$id]}" 2>/dev/null || { tail "$WORK/node$id.log" >&2; exit 1; }
    sleep 0.5
  done
done
log "cluster ready"

api() { # method node path [curl args...]
  local method=$1 node=$2 path=$3
  shift 3
  curl -sS -X "$method" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${HTTP[$node]}$path" "$@"
}
TOKEN=$(curl -sS -X POST -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$ADMIN_PASSWORD\"}" \
  "http://127.0.0.1:${HTTP[1]}/api/v1/auth/login" | jq -r .token)
api POST 1 /api/v1/tenants -H 'content-type: application/json' \
  -d '{"name":"Bench","code":"BENCH","sip_domain":"bench.pbx.local"}' >/dev/null

# --- import 10,000 rows ----------------------------------------------------------
{
  echo "number,display_name,password,department"
  seq 100000 109999 | awk '{printf "%s,User %s,secret-%s,D%d\n", $1, $1, $1, $1 % 10}'
} >"$WORK/import.csv"
t0=$(date +%s.%N)
api POST 1 /api/v1/tenants/BENCH/extensions/import -H 'content-type: text/csv' \
  --data-binary "@$WORK/import.csv" >"$WORK/import.json"
t1=$(date +%s.%N)
IMPORT_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
jq -e '.created == 10000' "$WORK/import.json" >/dev/null ||
  { log "import failed: $(head -c 500 "$WORK/import.json")"; exit 1; }
log "import of 10,000 rows: ${IMPORT_S} s"

# --- filtered list ---------------------------------------------------------------
LIST_MS=()
for _ in 1 2 3 4 5; do
  ms=$(api GET 2 "/api/v1/tenants/BENCH/extensions?filter=department%20eq%20'D7'&top=100" \
    -o "$WORK/list.json" -w '%{time_total}' | awk '{ printf "%.1f", $1 * 1000 }')
  jq -e '.count == 1000' "$WORK/list.json" >/dev/null || { log "list: wrong count"; exit 1; }
  LIST_MS+=("$ms")
done
LIST_MEDIAN=$(printf '%s\n' "${LIST_MS[@]}" | sort -n | sed -n 3p)
log "filtered list of 10,000: ${LIST_MS[*]} ms (median $LIST_MEDIAN)"

# --- reads and writes, 64 clients over the 3 nodes --------------------------------
cat >"$WORK/put.lua" <<EOF
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
request = function()
  local number = 100000 + math.random(0, 9999)
  local body = '{"number":"' .. number .. '","display_name":"W ' .. math.random(1, 1000000) .. '","department":"D' .. (number % 10) .. '"}'
  return wrk.format(nil, "/api/v1/tenants/BENCH/extensions/" .. number, nil, body)
end
EOF
# Runs wrk against each node with 64 clients in all; prints "<req/s> <worst p99 ms>".
load() { # name path [lua script]
  local name=$1 path=$2 script=${3:-}
  local id args
  for id in 1 2 3; do
    args=(-t1 -c"$([ "$id" = 1 ] && echo 22 || echo 21)" -d"${SECS}s" --latency --timeout 10s)
    [ -n "$script" ] && args+=(-s "$script")
    wrk "${args[@]}" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${HTTP[$id]}$path" \
      >"$WORK/$name-$id.txt" 2>&1 &
  done
  wait
  local total=0 worst=0 rate p99 bad
  for id in 1 2 3; do
    bad=$(awk '/Non-2xx or 3xx responses/ {print $5}' "$WORK/$name-$id.txt")
    [ -z "$bad" ] || { log "$name: $bad non-2xx answers from node $id"; cat "$WORK/$name-$id.txt" >&2; exit 1; }
    rate=$(awk '/^Requests\/sec/ {print $2}' "$WORK/$name-$id.txt")
    p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } print v }' "$WORK/$name-$id.txt")
    total=$(awk -v a="$total" -v b="$rate" 'BEGIN { print a + b }')
    worst=$(awk -v a="$worst" -v b="$p99" 'BEGIN { print (b > a ? b : a) }')
  done
  printf '%.0f %.2f\n' "$total" "$worst"
}
read -r READS P99_READ <<<"$(load reads /api/v1/tenants/BENCH/extensions/100500)"
log "reads: $READS/s, p99 $P99_READ ms"
read -r WRITES P99_WRITE <<<"$(load writes /api/v1/tenants/BENCH/extensions/100000 "$WORK/put.lua")"
log "writes: $WRITES/s, p99 $P99_WRITE ms"

log "load average at start: $LOAD_START; now: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '{"reads_per_sec": %s, "writes_per_sec": %s, "p99_read_ms": %s, "p99_write_ms": %s, "import_10k_s": %s, "list_10k_filtered_ms": %s}\n' \
  "$READS" "$WRITES" "$P99_READ" "$P99_WRITE" "$IMPORT_S" "$LIST_MEDIAN"
