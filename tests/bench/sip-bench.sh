#!/usr/bin/env bash
# SIP benchmark of pbx-node against Kamailio on this machine (not run in CI).
#
# Measures, in one run:
#   register_per_sec           highest REGISTER rate (digest auth, new bindings)
#                              a 3-node pbx-node cluster sustains with zero
#                              failures, RFC 7502 style (raise the rate until a
#                              trial fails, then bisect)
#   kamailio_register_per_sec  the same for Kamailio (in-memory registrar)
#   cps                        calls/s, setup and immediate BYE, through the
#                              pbx-node B2BUA (null if INVITE is not served yet)
#   kamailio_cps               the same through Kamailio (stateful proxy)
#   rss_bytes_per_binding      VmRSS growth per binding over 100,000 new
#                              registrations (the largest of the 3 nodes;
#                              over fewer if 5 minutes do not suffice),
#                              45 s after the last one, when their SIP
#                              transactions are gone (Timer J, 32 s)
# Progress goes to stderr; the last line on stdout is one JSON object.
# Time: at most 15 minutes after the release build of pbx-node.
#
# Env: BENCH_TRIAL_SECS (5), BENCH_RSS_RATE (2000/s) and BENCH_RSS_INFLIGHT
# (32) for the RSS phase, BENCH_KEEP=1 keeps the work dir with every log,
# BENCH_SKIP_BUILD=1 runs the pbx-node already built (e.g. while the tree
# does not compile), BENCH_TARGET_DIR is the cargo target dir of that
# release build (default ~/.cache/pbx-bench-target).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TRIAL_SECS=${BENCH_TRIAL_SECS:-5}
RSS_RATE=${BENCH_RSS_RATE:-2000}
# A closed loop: this many registrations in progress at most, so that the
# phase goes as fast as the cluster can without overloading it.
RSS_INFLIGHT=${BENCH_RSS_INFLIGHT:-32}
PASSWORD=bench-secret # also in kamailio.cfg
DOMAIN=demo.pbx.local
TARGET_DIR=${BENCH_TARGET_DIR:-$HOME/.cache/pbx-bench-target}
BIN=$TARGET_DIR/release/pbx-node
START_TIME=$(date +%s)
# Other work on the machine skews every figure: the load is reported too.
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# The measurement must stay under 14 minutes after the build (which takes
# seconds when pbx-node is unchanged, minutes after a change); the searches
# stop early near the deadline, set once the build is done.
DEADLINE=0

# Extension numbers (6 digits, one demo range of 200,000 on the cluster):
RSS_FIRST=100000      # 100,000 fresh registrations for the RSS figure
RSS_COUNT=100000
REG_FIRST=200000      # fresh AORs for the registration-rate trials
REG_LAST=289999
CALLER_FIRST=290000   # callers in the call trials
CALLER_LAST=290999
CALLEE=299999         # the answering sipp UAS registers as this number
DEMO_RANGE=100000-299999

# Ports on 127.0.0.1.
PBX_SIP=(0 15061 15062 15063)
PBX_RAFT=(0 7401 7402 7403)
PBX_HTTP=(0 18081 18082 18083)
KAM_SIP=15070
SIPP_PORT=16001
UAS_PORT=16010

WORK=$(mktemp -d /tmp/sip-bench.XXXXXX)

# log, cleanup (trapped on exit), left, wait_for_line, write_users,
# run_sipp, trial_ok, wait_idle, search, rss_kib.
. "$HERE/lib.sh"

# --- prerequisites -----------------------------------------------------------
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  log "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi

if [ "${BENCH_SKIP_BUILD:-0}" = 1 ] && [ -x "$BIN" ]; then
  log "using the pbx-node built $(date -r "$BIN" '+%F %T') (BENCH_SKIP_BUILD=1)"
else
  log "building pbx-node (release) into $TARGET_DIR"
  if ! (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p pbx-node \
    >"$WORK/build.log" 2>&1); then
    cat "$WORK/build.log" >&2
    exit 1
  fi
fi

BUILD_SECS=$(($(date +%s) - START_TIME))
DEADLINE=$(($(date +%s) + 14 * 60))
# Hard stop, in case something hangs beyond every per-step timeout.
(sleep $((15 * 60)) && log "15 minutes of measurement reached, stopping" && kill -TERM $$) 2>/dev/null &
WATCHDOG=$!
PIDS+=("$WATCHDOG")

# --- helpers -----------------------------------------------------------------
# RocksDB's share of a node's memory, from its /metrics (MiB by kind).
rocksdb_mib() { # id
  curl -s --max-time 2 "http://127.0.0.1:${PBX_HTTP[$1]}/metrics" 2>/dev/null |
    awk '/^raft_rocksdb_memory_bytes/ {
      match($0, /kind="[a-z_]+"/); kind = substr($0, RSTART + 6, RLENGTH - 7);
      printf "%s%s %.0f", sep, kind, $NF / 1048576; sep = ", "
    }'
}

# --- pbx-node cluster ----------------------------------------------------------
log "cluster certificates (one CA, node-N.raft.pbx)"
TLS=$WORK/tls
mkdir -p "$TLS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$TLS/ca.key" -out "$TLS/ca.pem" -days 2 -subj "/CN=bench cluster CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for id in 1 2 3; do
  name=node-$id.raft.pbx
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$TLS/node-$id.key" -out "$TLS/node-$id.csr" -subj "/CN=$name" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$name" >"$TLS/node-$id.ext"
  openssl x509 -req -in "$TLS/node-$id.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
    -CAcreateserial -days 2 -extfile "$TLS/node-$id.ext" -out "$TLS/node-$id.pem" 2>/dev/null
done

NODE_PID=(0 0 0 0)
log "starting 3 pbx-node processes (node 1 creates extensions $DEMO_RANGE)"
for id in 1 2 3; do
  peers=()
  for other in 1 2 3; do
    [ "$other" = "$id" ] || peers+=("$other@127.0.0.1:${PBX_RAFT[$other]}")
  done
  demo=(--demo false)
  [ "$id" = 1 ] && demo=(--demo true --demo-extensions "$DEMO_RANGE" --demo-password "$PASSWORD")
  # No RUST_BACKTRACE: as in production, errors do not capture backtraces.
  env -u RUST_BACKTRACE RUST_LOG=warn "$BIN" --node-id "$id" --data-dir "$WORK/node$id" \
    --sip-udp-listen "127.0.0.1:${PBX_SIP[$id]}" --sip-tcp-listen "127.0.0.1:${PBX_SIP[$id]}" \
    --raft-listen "127.0.0.1:${PBX_RAFT[$id]}" --http-listen "127.0.0.1:${PBX_HTTP[$id]}" --peers "$(IFS=,; echo "${peers[*]}")" \
    --cluster-ca "$TLS/ca.pem" --cluster-cert "$TLS/node-$id.pem" --cluster-key "$TLS/node-$id.key" \
    --sip-digest-sha256 false "${demo[@]}" </dev/null >"$WORK/node$id.log" 2>&1 &
  NODE_PID[$id]=$!
  PIDS+=("$!")
done
for id in 1 2 3; do
  wait_for_line "$WORK/node$id.log" '^ready ' 120 "${NODE_PID[$id]}" || exit 1
done
log "cluster ready"
PBX=127.0.0.1:${PBX_SIP[1]}

# Idle, then 10 registrations at 10/s all succeed (up to 90 s): a cluster
# that lost its leader under load needs more than an idle CPU.
write_users $CALLER_FIRST $((CALLER_FIRST + 9)) -DEMO "$WORK/pbx-probe.csv"
pbx_recover() {
  local i ok
  for i in 1 2 3; do
    wait_idle "${NODE_PID[@]:1}"
    read -r ok _ _ <<<"$(SIPP_LIMIT=10 run_sipp "pbx-health-$RANDOM" "$PBX" register.xml \
      "$WORK/pbx-probe.csv" 10 10 -key contact_port 5060 -key expires 3600)"
    [ "$ok" = 10 ] && return 0
    log "  pbx-node not healthy yet ($ok/10 probe registrations)"
  done
  log "  pbx-node did not recover: search stopped"
  return 1
}

# --- RSS per binding -----------------------------------------------------------
sleep 3
declare -A RSS_BEFORE
for id in 1 2 3; do RSS_BEFORE[$id]=$(rss_kib "${NODE_PID[$id]}"); done
log "  RSS before: $(for id in 1 2 3; do printf 'node%s %s KiB (RocksDB MiB: %s); ' "$id" "${RSS_BEFORE[$id]}" "$(rocksdb_mib "$id")"; done)"
write_users $RSS_FIRST $((RSS_FIRST + RSS_COUNT - 1)) -DEMO "$WORK/rss-users.csv"
log "RSS phase: $RSS_COUNT registrations, at most $RSS_RATE/s and $RSS_INFLIGHT in progress"
# Bounded so that the four rate searches keep about 6 minutes.
rss_secs=$(($(left) - 360))
[ "$rss_secs" -gt 300 ] && rss_secs=300
[ "$rss_secs" -lt 60 ] && rss_secs=60
read -r rss_ok rss_failed rss_elapsed <<<"$(SIPP_LIMIT=$RSS_INFLIGHT SIPP_TIMEOUT=$rss_secs run_sipp rss "$PBX" register.xml \
  "$WORK/rss-users.csv" "$RSS_RATE" "$RSS_COUNT" -key contact_port 5060 -key expires 7200)"
log "  $rss_ok registered, $rss_failed failed, ${rss_elapsed}s (limit ${rss_secs}s)"
wait_idle "${NODE_PID[@]:1}"
rss_growth() { # label: the RSS growth per binding of each node, into rss_note
  local id after per
  worst=0
  rss_note+=" $1:"
  for id in 1 2 3; do
    after=$(rss_kib "${NODE_PID[$id]}")
    per=$(((after - RSS_BEFORE[$id]) * 1024 / rss_ok))
    rss_note+=" node$id ${RSS_BEFORE[$id]}->${after} KiB (${per} B/binding; RocksDB MiB: $(rocksdb_mib "$id"));"
    if [ "$per" -gt "$worst" ]; then worst=$per; fi
  done
}
RSS_PER_BINDING=null
rss_note=" RSS over $rss_ok bindings,"
if [ "$rss_ok" -gt 0 ]; then
  rss_growth "right after the last REGISTER"
  # The figure is the bindings' memory, not the burst's: each REGISTER's
  # server transaction lives on for Timer J (64*T1 = 32 s on UDP), and the
  # allocator returns freed pages after its decay time (10 s).
  sleep 45
  rss_growth "45 s later"
  RSS_PER_BINDING=$worst
  log " $rss_note"
fi

# --- registration rate -----------------------------------------------------------
REG_NEXT=$REG_FIRST
# Fresh AORs for every trial (RFC 7502 separates registration from
# re-registration); the pool wraps around if a long search exhausts it.
next_users() { # count suffix file
  local first=$REG_NEXT last=$((REG_NEXT + $1 - 1))
  if [ "$last" -gt "$REG_LAST" ]; then
    first=$REG_FIRST
    last=$((REG_FIRST + $1 - 1))
    log "  (user pool exhausted: this trial re-registers $first-$last)"
  fi
  REG_NEXT=$((last + 1))
  write_users "$first" "$last" "$2" "$3"
}

TRIAL=0
pbx_reg_trial() {
  local rate=$1 calls=$(($1 * TRIAL_SECS)) result
  TRIAL=$((TRIAL + 1))
  next_users "$calls" -DEMO "$WORK/users-$TRIAL.csv"
  result=$(run_sipp "pbx-reg-$TRIAL-$rate" "$PBX" register.xml "$WORK/users-$TRIAL.csv" \
    "$rate" "$calls" -key contact_port 5060 -key expires 3600)
  log "  pbx-node REGISTER $rate/s: ok/failed/secs $result"
  trial_ok "$result" "$calls"
}
log "pbx-node registration rate (3 nodes, sipp -> node 1)"
search 4 100 20000 pbx_reg_trial:pbx_recover
REGISTER_PER_SEC=${RATES[0]}
log "pbx-node register_per_sec=$REGISTER_PER_SEC"

# --- call rate through pbx-node ----------------------------------------------------
write_users $CALLER_FIRST $CALLER_LAST -DEMO "$WORK/pbx-callers.csv"
write_users $CALLEE $CALLEE -DEMO "$WORK/pbx-callee.csv"
start_uas() { # name
  sipp -sf "$HERE/sipp/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" -nostdin \
    -trace_err -error_file "$WORK/uas-$1-errors.log" >"$WORK/uas-$1.log" 2>&1 &
  UAS_PID=$!
  PIDS+=("$UAS_PID")
}
pbx_call_trial() {
  local rate=$1 calls=$(($1 * TRIAL_SECS)) result
  TRIAL=$((TRIAL + 1))
  result=$(run_sipp "pbx-call-$TRIAL-$rate" "$PBX" uac-call.xml "$WORK/pbx-callers.csv" \
    "$rate" "$calls" -key callee "$CALLEE")
  log "  pbx-node calls $rate/s: ok/failed/secs $result"
  trial_ok "$result" "$calls"
}
CPS=null
# The callee registers from the UAS's own port: pbx-node sends calls to
# the address a REGISTER came from (NAT-safe), not only to its Contact.
read -r ok _ _ <<<"$(SIPP_LOCAL_PORT=$UAS_PORT run_sipp pbx-callee "$PBX" register.xml \
  "$WORK/pbx-callee.csv" 1 1 -key contact_port "$UAS_PORT" -key expires 3600)"
start_uas pbx
if [ "$ok" != 1 ]; then
  log "the callee could not register to pbx-node: no call figures"
else
  # A few calls first: until the B2BUA serves INVITE, cps stays null.
  read -r ok _ _ <<<"$(run_sipp pbx-call-probe "$PBX" uac-call.xml "$WORK/pbx-callers.csv" 5 5 \
    -key callee "$CALLEE")"
  if [ "$ok" = 5 ]; then
    log "pbx-node call rate (B2BUA, caller -> node 1 -> sipp UAS)"
    search 3 50 10000 pbx_call_trial:pbx_recover
    CPS=${RATES[0]}
    log "pbx-node cps=$CPS"
  else
    log "pbx-node does not complete calls yet (probe: $ok of 5); cps = null"
    head -c 600 "$WORK/sipp/pbx-call-probe/errors.log" >&2 2>/dev/null || true
  fi
fi
kill "$UAS_PID" 2>/dev/null || true
for id in 1 2 3; do kill "${NODE_PID[$id]}" 2>/dev/null || true; done
for id in 1 2 3; do wait "${NODE_PID[$id]}" 2>/dev/null || true; done

# --- Kamailio ----------------------------------------------------------------------
log "starting Kamailio (in-memory registrar, stateful proxy) on 127.0.0.1:$KAM_SIP"
start_kamailio "$HERE/kamailio.cfg" "$KAM_SIP" || exit 1
kam_recover() { wait_idle $(kam_pids); }

# Kamailio registers anyone with the password: every trial takes numbers
# never used before.
KAM_NEXT=1000000
kam_reg_trial() {
  local rate=$1 calls=$(($1 * TRIAL_SECS)) result
  TRIAL=$((TRIAL + 1))
  write_users $KAM_NEXT $((KAM_NEXT + calls - 1)) "" "$WORK/users-$TRIAL.csv"
  KAM_NEXT=$((KAM_NEXT + calls))
  result=$(run_sipp "kam-reg-$TRIAL-$rate" "$KAM" register.xml "$WORK/users-$TRIAL.csv" \
    "$rate" "$calls" -key contact_port 5060 -key expires 3600)
  log "  Kamailio REGISTER $rate/s: ok/failed/secs $result"
  trial_ok "$result" "$calls"
}
log "Kamailio registration rate"
search 2 250 20000 kam_reg_trial:kam_recover
KAM_REGISTER_PER_SEC=${RATES[0]}
log "kamailio_register_per_sec=$KAM_REGISTER_PER_SEC"

write_users $CALLER_FIRST $CALLER_LAST "" "$WORK/kam-callers.csv"
write_users $CALLEE $CALLEE "" "$WORK/kam-callee.csv"
kam_call_trial() {
  local rate=$1 calls=$(($1 * TRIAL_SECS)) result
  TRIAL=$((TRIAL + 1))
  result=$(run_sipp "kam-call-$TRIAL-$rate" "$KAM" uac-call.xml "$WORK/kam-callers.csv" \
    "$rate" "$calls" -key callee "$CALLEE")
  log "  Kamailio calls $rate/s: ok/failed/secs $result"
  trial_ok "$result" "$calls"
}
KAM_CPS=null
read -r ok _ _ <<<"$(SIPP_LOCAL_PORT=$UAS_PORT run_sipp kam-callee "$KAM" register.xml \
  "$WORK/kam-callee.csv" 1 1 -key contact_port "$UAS_PORT" -key expires 3600)"
start_uas kam
if [ "$ok" = 1 ]; then
  log "Kamailio call rate (caller -> Kamailio -> sipp UAS, record-routed)"
  search 1 50 10000 kam_call_trial:kam_recover
  KAM_CPS=${RATES[0]}
  log "kamailio_cps=$KAM_CPS"
else
  log "the callee could not register to Kamailio"
fi

MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo),"
SIPP_VERSION=$(sipp -v 2>&1 | grep -o 'v[0-9.]*' | head -n1 || true) # sipp -v exits 99
MACHINE+=" $(. /etc/os-release && echo "$PRETTY_NAME"); sipp $SIPP_VERSION,"
MACHINE+=" kamailio $(kamailio -v | awk 'NR==1 {print $3}'); trials ${TRIAL_SECS}s;"
MACHINE+=" pbx-node 3-node cluster on loopback, SIP to node 1;$rss_note"
MACHINE+=" load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg);"
MACHINE+=" build ${BUILD_SECS} s, total $(($(date +%s) - START_TIME)) s"
printf '{"register_per_sec": %s, "kamailio_register_per_sec": %s, "cps": %s, "kamailio_cps": %s, "rss_bytes_per_binding": %s, "machine": "%s"}\n' \
  "$REGISTER_PER_SEC" "$KAM_REGISTER_PER_SEC" "$CPS" "$KAM_CPS" "$RSS_PER_BINDING" "$MACHINE"
