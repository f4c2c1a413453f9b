#!/usr/bin/env bash
# SBC benchmark on this machine (not run in CI): the SBC in front of one
# pbx-node against that pbx-node alone, in one run, release build.
#
# Measures:
#   cps_direct, cps_via_sbc      calls/s (digest auth, answered, immediate
#                                BYE) with zero failures, RFC 7502 style
#                                (double the rate until a trial fails, then
#                                bisect), sipp straight to the pbx-node and
#                                through the SBC (which relays both legs'
#                                media and hides the node)
#   register_per_sec_direct,     REGISTER/s (digest, fresh AORs) the same way
#   register_per_sec_via_sbc
#   cps_via_kamailio,            the reference: the same two rates through
#   register_per_sec_via_kamailio  Kamailio in front of the same node
#                                (kamailio-edge.cfg: Path, Record-Route; no
#                                media relay, no topology hiding), as the
#                                SBC's peer on the same machine and run
#   cps_direct_pinned,           the call rates again with the pbx-node
#   cps_via_sbc_pinned,          pinned to CPU 0 and the edge and SIPp to
#   cps_via_kamailio_pinned      the other CPUs (taskset), as when the SBC
#                                has a host of its own: the edge then takes
#                                no CPU from the node (null on one core)
#   relay_calls_per_core         calls with G.711 RTP both ways (sipp streams
#                                50 packets/s, the callee echoes them) held
#                                through the SBC, divided by the cores the
#                                SBC process uses meanwhile; each B2BUA call
#                                is two relayed legs in the SBC. A CPU-cost
#                                figure: no loss or latency criterion (that
#                                is media-bench.sh's relay_calls_per_core of
#                                the same relay engine); measured first, on
#                                the SBC just started
#   rss_kib_per_tls_conn,        SBC RSS growth per connection with 10,000
#   rss_kib_per_wss_conn         idle TLS connections, then 10,000 idle WSS
#                                ones (hold-connections.py; CRLF keepalives)
# The three ways in (direct, SBC, Kamailio) are searched side by side,
# one trial each in turn, and each trial starts with every process idle:
# the node's cost per call grows as its store fills with CDRs and
# registrations, so searched one after the other the later ones met a
# dearer node. Each way has its own callee number.
# Progress goes to stderr; the last line on stdout is one JSON object.
# Time: at most about 28 minutes after the release build (17 in a run).
#
# Env: BENCH_TRIAL_SECS (5), BENCH_RELAY_CALLS (200), BENCH_CONNS (10000),
# BENCH_KEEP=1 keeps the work dir with every log, BENCH_SKIP_BUILD=1 runs
# the binaries already built, BENCH_TARGET_DIR is the cargo target dir of
# the release build (default ~/.cache/pbx-bench-target).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TRIAL_SECS=${BENCH_TRIAL_SECS:-5}
RELAY_CALLS=${BENCH_RELAY_CALLS:-200}
CONNS=${BENCH_CONNS:-10000}
PASSWORD=bench-secret
DOMAIN=demo.pbx.local
TARGET_DIR=${BENCH_TARGET_DIR:-$HOME/.cache/pbx-bench-target}
NODE_BIN=$TARGET_DIR/release/pbx-node
SBC_BIN=$TARGET_DIR/release/sbc
START_TIME=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
DEADLINE=0

# Extension numbers (one demo range on the node).
REG_FIRST=200000 # fresh AORs for the registration trials
REG_LAST=289999
CALLER_FIRST=290000
CALLER_LAST=290999
# The answering sipp UASes, one per way in: one AOR registered three ways
# would fork every call to all three.
CALLEE_VIA_SBC=299999
CALLEE_DIRECT=299998
CALLEE_VIA_KAM=299997
DEMO_RANGE=200000-299999

# Ports on 127.0.0.1.
NODE_SIP=15161
NODE_HTTP=18181
NODE_RAFT=7501
SBC_UDP=15160 # UDP and TCP
SBC_TLS=15162
SBC_WSS=18443
SBC_HTTPS=18444
SBC_INSIDE=15180
SBC_HTTP=19191
SIPP_PORT=16101
UAS_PORT_VIA_SBC=16110
UAS_PORT_DIRECT=16111
UAS_PORT_VIA_KAM=16112
KAM_SIP=15170

WORK=$(mktemp -d /tmp/sbc-bench.XXXXXX)

# log, cleanup (trapped on exit), left, wait_for_line, write_users,
# run_sipp, trial_ok, wait_idle, search, rss_kib, write_rtp_caller,
# media_sessions.
. "$HERE/lib.sh"

# --- prerequisites ---------------------------------------------------------------
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  log "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi
# Each held connection is a file descriptor in the SBC and in the client,
# and so is each RTP port of the SBC's range.
raise_open_files $((CONNS * 2))
log "open files limit $(ulimit -n)"

if [ "${BENCH_SKIP_BUILD:-0}" = 1 ] && [ -x "$NODE_BIN" ] && [ -x "$SBC_BIN" ]; then
  log "using the binaries built $(date -r "$SBC_BIN" '+%F %T') (BENCH_SKIP_BUILD=1)"
else
  log "building pbx-node and sbc (release) into $TARGET_DIR"
  if ! (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p pbx-node -p sbc \
    >"$WORK/build.log" 2>&1); then
    cat "$WORK/build.log" >&2
    exit 1
  fi
fi
BUILD_SECS=$(($(date +%s) - START_TIME))
DEADLINE=$(($(date +%s) + 27 * 60))
(sleep $((28 * 60)) && log "28 minutes of measurement reached, stopping" && kill -TERM $$) 2>/dev/null &
WATCHDOG=$!
PIDS+=("$WATCHDOG")

# --- pbx-node and the SBC -----------------------------------------------------------
log "starting pbx-node (extensions $DEMO_RANGE) on 127.0.0.1:$NODE_SIP"
start_single_node "$DEMO_RANGE" || exit 1

# Every load comes from 127.0.0.1: the per-IP limits are lifted so that
# they are not what is measured.
cat >"$WORK/sbc.toml" <<EOF
udp_listen = "127.0.0.1:$SBC_UDP"
tcp_listen = "127.0.0.1:$SBC_UDP"
tls_listen = "127.0.0.1:$SBC_TLS"
wss_listen = "127.0.0.1:$SBC_WSS"
https_listen = "127.0.0.1:$SBC_HTTPS"
internal_listen = "127.0.0.1:$SBC_INSIDE"
http_listen = "127.0.0.1:$SBC_HTTP"
public_host = "127.0.0.1"
media_public_bind = "127.0.0.1"
nodes = ["127.0.0.1:$NODE_SIP"]
data_dir = "$WORK/sbc"
rtp_port_min = $SBC_RTP_PORT_MIN
rtp_port_max = $SBC_RTP_PORT_MAX
edge_nonce_key_file = "$EDGE_KEY"
max_connections = $((CONNS * 2))
[guard]
requests_per_sec = 1000000.0
burst = 1000000
ban_after_failures = 0
max_connections_per_ip = $((CONNS * 2))
EOF
SBC_PID=""
# (Re)starts the SBC: each RSS figure is taken on a fresh process, since
# the allocator would reuse memory an earlier phase freed and hide growth.
start_sbc() { # label
  if [ -n "$SBC_PID" ]; then
    kill "$SBC_PID" 2>/dev/null || true
    wait "$SBC_PID" 2>/dev/null || true
  fi
  log "starting the SBC on 127.0.0.1:$SBC_UDP in front of it ($1)"
  env -u RUST_BACKTRACE RUST_LOG=warn "$SBC_BIN" --config "$WORK/sbc.toml" \
    </dev/null >"$WORK/sbc-$1.log" 2>&1 &
  SBC_PID=$!
  PIDS+=("$SBC_PID")
  wait_for_line "$WORK/sbc-$1.log" '^SBC ready' 30 "$SBC_PID" || exit 1
}
NODE=127.0.0.1:$NODE_SIP
SBC=127.0.0.1:$SBC_UDP

# --- RSS per idle TLS / WSS connection ----------------------------------------------
hold() { # kind port: RSS KiB growth per connection, or null
  local kind=$1 port=$2 before after open
  wait_idle "$SBC_PID"
  before=$(rss_kib "$SBC_PID")
  mkfifo "$WORK/hold-$kind.in"
  python3 "$HERE/hold-connections.py" "$kind" 127.0.0.1 "$port" "$CONNS" \
    <"$WORK/hold-$kind.in" >"$WORK/hold-$kind.out" 2>"$WORK/hold-$kind.err" &
  local holder=$!
  PIDS+=("$holder")
  exec 9>"$WORK/hold-$kind.in" # stdin open: the connections are held
  if ! wait_for_line "$WORK/hold-$kind.out" '^open ' 300 "$holder" >/dev/null; then
    exec 9>&-
    echo null
    return
  fi
  sleep 5
  after=$(rss_kib "$SBC_PID")
  open=$(awk '{print $2}' "$WORK/hold-$kind.out")
  log "  $kind: $open of $CONNS connections open, SBC RSS $before -> $after KiB"
  exec 9>&- # the holder sees EOF and closes them
  wait "$holder" 2>/dev/null || true
  sleep 2
  if [ "$open" -gt 0 ]; then
    awk -v a="$after" -v b="$before" -v n="$open" 'BEGIN { printf "%.1f", (a - b) / n }'
  else
    echo null
  fi
}
log "RSS with $CONNS idle TLS connections, then $CONNS idle WSS connections"
start_sbc tls
RSS_TLS=$(hold tls "$SBC_TLS")
start_sbc wss
RSS_WSS=$(hold wss "$SBC_WSS")
start_sbc load

write_users $CALLER_FIRST $CALLER_LAST -DEMO "$WORK/callers.csv"
declare -A UAS_PIDS
# The callee `number` registers from its UAS's own `port` through
# `target` (through the SBC, the registration carries its Path), then
# answers there; a UAS already on that port is stopped first.
start_callee() { # target label number port [sipp args...]
  local target=$1 label=$2 number=$3 port=$4 ok
  shift 4
  local previous=${UAS_PIDS[$port]:-}
  [ -n "$previous" ] && { kill "$previous" 2>/dev/null || true; wait "$previous" 2>/dev/null || true; }
  write_users "$number" "$number" -DEMO "$WORK/callee-$number.csv"
  read -r ok _ _ <<<"$(SIPP_LOCAL_PORT=$port run_sipp "callee-$label" "$target" register.xml \
    "$WORK/callee-$number.csv" 1 1 -key contact_port "$port" -key expires 3600)"
  ${SIPP_CPUS:+taskset -c "$SIPP_CPUS"} \
    sipp -sf "$HERE/sipp/uas.xml" -i 127.0.0.1 -p "$port" -nostdin "$@" \
    -trace_err -error_file "$WORK/uas-$label-errors.log" >"$WORK/uas-$label.log" 2>&1 &
  UAS_PIDS[$port]=$!
  PIDS+=("$!")
  [ "$ok" = 1 ]
}

# --- relayed calls per core -------------------------------------------------------
RELAY_PER_CORE=null
HOLD_SECS=30
write_rtp_caller # the callers stream RTP; the callee echoes it
# Measured first, on the SBC just started: the overloaded trials of the
# rate searches leave INVITE transactions behind, and their
# retransmissions and timeouts keep the SBC's signalling busy for
# minutes. After such a search, signalling took a fifth of the SBC's CPU
# during a relay window (sbc-cpu.sh, profiled), which counted against
# the relay.
if start_callee "$SBC" relay "$CALLEE_VIA_SBC" "$UAS_PORT_VIA_SBC" -rtp_echo -mp 26000 && [ "$(left)" -gt $((HOLD_SECS + 60)) ]; then
  log "relay: $RELAY_CALLS calls held ${HOLD_SECS}s through the SBC with RTP both ways"
  rate=$((RELAY_CALLS / 5 > 0 ? RELAY_CALLS / 5 : 1))
  relay_dir=$WORK/sipp/relay
  mkdir -p "$relay_dir"
  timeout $((HOLD_SECS + 60)) sipp "$SBC" -sf "$WORK/uac-call-rtp.xml" -inf "$WORK/callers.csv" \
    -key domain "$DOMAIN" -key callee "$CALLEE_VIA_SBC" -i 127.0.0.1 -p "$SIPP_PORT" -mp 27000 \
    -r "$rate" -m "$RELAY_CALLS" -l "$RELAY_CALLS" -d $((HOLD_SECS * 1000)) \
    -nostdin -trace_stat -stf "$relay_dir/stat.csv" -fd 1 \
    -trace_err -error_file "$relay_dir/errors.log" >"$relay_dir/screen.log" 2>&1 &
  RELAY_SIPP=$!
  PIDS+=("$RELAY_SIPP")
  # Every call is set up after RELAY_CALLS/rate = 5 s; measure the next 15.
  sleep 8
  window=15
  before=$(cpu_ticks "$SBC_PID")
  node_before=$(cpu_ticks "$NODE_PID")
  sleep "$window"
  after=$(cpu_ticks "$SBC_PID")
  node_after=$(cpu_ticks "$NODE_PID")
  # Each B2BUA call is two relays: all of them must be in the SBC.
  sessions=$(media_sessions "$SBC_HTTP")
  wait "$RELAY_SIPP" 2>/dev/null || true
  read -r relay_ok relay_failed _ <<<"$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i }
    END { print $col["SuccessfulCall(C)"], $col["FailedCall(C)"] }' "$relay_dir/stat.csv")"
  cores=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v w="$window" \
    'BEGIN { printf "%.3f", t / hz / w }')
  # The node does not touch the media: what it uses meanwhile competes
  # for the cores (logged to tell a disturbed window).
  node_cores=$(awk -v t=$((node_after - node_before)) -v hz="$(getconf CLK_TCK)" -v w="$window" \
    'BEGIN { printf "%.3f", t / hz / w }')
  log "  $relay_ok calls answered, $relay_failed failed, $sessions relays of theirs in the SBC;" \
    "the SBC used $cores cores, the pbx-node $node_cores"
  # Below 1% of a core the media did not flow (sipp without RTP streams?).
  if [ "$relay_ok" != "$RELAY_CALLS" ]; then
    log "  calls failed: no relay figure"
  elif [ "$sessions" != $((RELAY_CALLS * 2)) ]; then
    log "  not every call's media went through the SBC: no relay figure"
  elif awk -v c="$cores" 'BEGIN { exit !(c < 0.01) }'; then
    log "  the SBC stayed idle: no media relayed, no relay figure"
  else
    RELAY_PER_CORE=$(awk -v n="$RELAY_CALLS" -v c="$cores" 'BEGIN { printf "%d", n / c }')
  fi
else
  log "relay phase skipped (no callee or out of time)"
fi


# Waits until every process is idle. Each trial starts so: the searches
# take turns, and a trial at one's highest rate leaves the node writing
# CDRs and registrations for seconds after it, which the next trial, of
# another search, would pay for.
settle() { wait_idle "$NODE_PID" "$SBC_PID" ${KAM_PID:+$(kam_pids)}; }
# Idle, then 10 registrations at 10/s through `target` all succeed.
write_users $CALLER_FIRST $((CALLER_FIRST + 9)) -DEMO "$WORK/probe.csv"
recover_via() { # target
  local i ok
  for i in 1 2 3; do
    settle
    read -r ok _ _ <<<"$(SIPP_LIMIT=10 run_sipp "health-$RANDOM" "$1" register.xml \
      "$WORK/probe.csv" 10 10 -key contact_port 5060 -key expires 3600)"
    [ "$ok" = 10 ] && return 0
    log "  not healthy yet ($ok/10 probe registrations)"
  done
  log "  did not recover: search stopped"
  return 1
}
recover_direct() { recover_via "$NODE"; }
# After an overloaded trial the SBC relays its failed calls until their
# INVITE transactions are dead (32 s): the next trial would find fewer
# free ports.
recover_sbc() {
  local i
  for i in $(seq 60); do
    [ "$(media_sessions "$SBC_HTTP")" -le 0 ] && break
    sleep 1
  done
  recover_via "$SBC"
}
# CPUs the edge (SBC, Kamailio) is pinned to; empty: not pinned.
EDGE_CPUS=""
pin() { # cpus pid...: every thread of each process
  local cpus=$1 pid
  shift
  for pid in "$@"; do taskset -a -p -c "$cpus" "$pid" >/dev/null; done
}
start_edge_kamailio() {
  start_kamailio "$HERE/kamailio-edge.cfg" "$KAM_SIP" -A "NODE_URI=\"sip:$NODE\"" || return 1
  [ -z "$EDGE_CPUS" ] || pin "$EDGE_CPUS" $(kam_pids)
}
# Kamailio after an overloaded trial: its transactions (fr_inv_timer 120 s)
# kept it busy for minutes, failing every later trial, so it is started
# afresh. It holds nothing the node needs (bindings carry its Path), and
# the restart favours the peer: the SBC gets no such help.
recover_kamailio() {
  local pids
  pids=$(kam_pids)
  kill $pids 2>/dev/null || true
  wait "$KAM_PID" 2>/dev/null || true
  # Its children let go of the port after the main process has gone.
  for _ in $(seq 50); do
    kill -0 $pids 2>/dev/null || break
    sleep 0.1
  done
  start_edge_kamailio || return 1
  recover_via "$KAM"
}

log "starting Kamailio (kamailio-edge.cfg) on 127.0.0.1:$KAM_SIP in front of the pbx-node"
KAM_PID=""
start_edge_kamailio || exit 1

# --- registration rate --------------------------------------------------------------
REG_NEXT=$REG_FIRST
next_users() { # count file: fresh AORs, wrapping around the pool
  local first=$REG_NEXT last=$((REG_NEXT + $1 - 1))
  if [ "$last" -gt "$REG_LAST" ]; then
    first=$REG_FIRST
    last=$((REG_FIRST + $1 - 1))
    log "  (user pool exhausted: this trial re-registers $first-$last)"
  fi
  REG_NEXT=$((last + 1))
  write_users "$first" "$last" -DEMO "$2"
}
TRIAL=0
reg_trial() { # target label rate
  local calls=$(($3 * TRIAL_SECS)) result
  TRIAL=$((TRIAL + 1))
  settle
  next_users "$calls" "$WORK/users-$TRIAL.csv"
  result=$(run_sipp "reg-$2-$TRIAL-$3" "$1" register.xml "$WORK/users-$TRIAL.csv" \
    "$3" "$calls" -key contact_port 5060 -key expires 3600)
  log "  REGISTER $2 $3/s: ok/failed/secs $result"
  trial_ok "$result" "$calls"
}
reg_direct() { reg_trial "$NODE" direct "$1"; }
reg_sbc() { reg_trial "$SBC" via-sbc "$1"; }
reg_kamailio() { reg_trial "$KAM" via-kamailio "$1"; }
log "REGISTER rate straight to the pbx-node, through the SBC and through Kamailio, side by side"
search 9 100 20000 reg_direct:recover_direct reg_sbc:recover_sbc reg_kamailio:recover_kamailio
REGISTER_DIRECT=${RATES[0]}
REGISTER_SBC=${RATES[1]}
REGISTER_KAM=${RATES[2]}
log "register_per_sec_direct=$REGISTER_DIRECT register_per_sec_via_sbc=$REGISTER_SBC" \
  "register_per_sec_via_kamailio=$REGISTER_KAM"

# --- call rate ------------------------------------------------------------------------
call_trial() { # target label callee rate
  local calls=$(($4 * TRIAL_SECS)) result
  TRIAL=$((TRIAL + 1))
  settle
  result=$(run_sipp "call-$2-$TRIAL-$4" "$1" uac-call.xml "$WORK/callers.csv" \
    "$4" "$calls" -key callee "$3")
  log "  calls $2 $4/s: ok/failed/secs $result"
  trial_ok "$result" "$calls"
}
call_direct() { call_trial "$NODE" direct "$CALLEE_DIRECT" "$1"; }
call_sbc() { call_trial "$SBC" via-sbc "$CALLEE_VIA_SBC" "$1"; }
call_kamailio() { call_trial "$KAM" via-kamailio "$CALLEE_VIA_KAM" "$1"; }
# Calls/s straight to the node, through the SBC and through Kamailio,
# searched side by side, into CPS_DIRECT, CPS_SBC and CPS_KAM (null when
# the callee cannot register that way). Each way's callee registers
# through it first.
measure_call_rates() { # label_suffix searches_left
  local suffix=$1 share=$2 way target label callee port trial recover what i
  local -a searches=() ways=()
  CPS_DIRECT=null
  CPS_SBC=null
  CPS_KAM=null
  for way in \
    "DIRECT $NODE direct $CALLEE_DIRECT $UAS_PORT_DIRECT call_direct recover_direct straight with the node" \
    "SBC $SBC via-sbc $CALLEE_VIA_SBC $UAS_PORT_VIA_SBC call_sbc recover_sbc through the SBC" \
    "KAM $KAM via-kamailio $CALLEE_VIA_KAM $UAS_PORT_VIA_KAM call_kamailio recover_kamailio through Kamailio"; do
    read -r way target label callee port trial recover what <<<"$way"
    if start_callee "$target" "$label$suffix" "$callee" "$port"; then
      searches+=("$trial:$recover")
      ways+=("$way")
    else
      log "the callee could not register $what: no call figure"
    fi
  done
  [ ${#searches[@]} -gt 0 ] || return 0
  search "$share" 50 10000 "${searches[@]}"
  for i in "${!ways[@]}"; do printf -v "CPS_${ways[i]}" %s "${RATES[i]}"; done
  log "calls/s$suffix: direct $CPS_DIRECT, through the SBC $CPS_SBC, through Kamailio $CPS_KAM"
}
log "call rate straight to the pbx-node, through the SBC and through Kamailio, side by side"
measure_call_rates "" 6
CPS_DIRECT_SHARED=$CPS_DIRECT
CPS_SBC_SHARED=$CPS_SBC
CPS_KAM_SHARED=$CPS_KAM

# --- call rate, the pbx-node on a core of its own ---------------------------------
# Above, the node, the edge and SIPp share every core, so the edge's CPU
# is taken from the node's. In production the SBC has a host of its own.
# Here the node's threads are pinned to CPU 0 and the edge (SBC or
# Kamailio) and SIPp to the others: the node has the same core direct
# and behind the edge, and the edge competes only with the load
# generator (on 2 cores, the three share CPU 1).
CPS_DIRECT_PINNED=null
CPS_SBC_PINNED=null
CPS_KAM_PINNED=null
if [ "$(nproc)" -ge 2 ]; then
  EDGE_CPUS=1-$(($(nproc) - 1))
  SIPP_CPUS=$EDGE_CPUS
  log "pinning: the pbx-node to CPU 0; the SBC, Kamailio and SIPp to CPUs $EDGE_CPUS"
  pin 0 "$NODE_PID"
  pin "$EDGE_CPUS" "$SBC_PID" $(kam_pids)
  measure_call_rates -pinned 3
  CPS_DIRECT_PINNED=$CPS_DIRECT
  CPS_SBC_PINNED=$CPS_SBC
  CPS_KAM_PINNED=$CPS_KAM
fi

MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo),"
MACHINE+=" $(. /etc/os-release && echo "$PRETTY_NAME"); trials ${TRIAL_SECS}s; one pbx-node;"
MACHINE+=" kamailio $(kamailio -v | awk 'NR==1 {print $3}');"
MACHINE+=" load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg);"
MACHINE+=" build ${BUILD_SECS} s, total $(($(date +%s) - START_TIME)) s"
printf '{"cps_via_sbc": %s, "cps_direct": %s, "register_per_sec_via_sbc": %s, "register_per_sec_direct": %s, "relay_calls_per_core": %s, "rss_kib_per_tls_conn": %s, "rss_kib_per_wss_conn": %s, "cps_via_kamailio": %s, "register_per_sec_via_kamailio": %s, "cps_direct_pinned": %s, "cps_via_sbc_pinned": %s, "cps_via_kamailio_pinned": %s, "machine": "%s"}\n' \
  "$CPS_SBC_SHARED" "$CPS_DIRECT_SHARED" "$REGISTER_SBC" "$REGISTER_DIRECT" "$RELAY_PER_CORE" "$RSS_TLS" "$RSS_WSS" "$CPS_KAM_SHARED" "$REGISTER_KAM" "$CPS_DIRECT_PINNED" "$CPS_SBC_PINNED" "$CPS_KAM_PINNED" "$MACHINE"
