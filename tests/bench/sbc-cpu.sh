#!/usr/bin/env bash
# CPU cost of the SBC per operation (not run in CI): one release pbx-node
# with the SBC in front of it on loopback, sipp at a fixed rate well below
# saturation, and the SBC process's CPU time (utime + stime from
# /proc/PID/stat) over the run divided by the operations. Unlike the
# rate searches of sbc-bench.sh, this figure barely moves when other
# processes share the machine, so it is the one to compare before/after
# a change.
#
# Prints one line per phase on stderr and, last on stdout, one JSON object:
#   sbc_cpu_us_per_register   one digest REGISTER (401 challenge + 200)
#   sbc_cpu_us_per_call       one call (407, INVITE, 200, ACK, BYE both
#                             legs through the SBC, two relays set up)
#   sbc_cpu_us_per_relayed_call_second  one call's RTP both ways (50
#                             packets/s each way) for one second
#   relay_calls_per_core      1e6 / the previous figure
#   machine_us_per_call_via_sbc  the whole machine's busy time per call
#                             (wall time on every CPU less /proc/stat's
#                             idle and iowait: every process, and the
#                             packet delivery that the kernel charges to
#                             no process) with the SBC in the path
#   machine_us_per_call_direct   the same with SIPp calling the node
#                             directly (the `direct` phase)
#   call_overhead_from_cpu    1 - direct / via-SBC: the share of the
#                             machine's call throughput the SBC takes when
#                             everything shares the same cores, as in
#                             sbc-bench.sh. The node's own cost per call
#                             grows as its store fills with CDRs (392 ->
#                             412 us over four phases), so with both
#                             phases asked for they run direct, via, via,
#                             direct and each figure is the mean of its
#                             two (sbc_cpu_us_per_call too).
#
# Env: CPU_REG_RATE (1000/s), CPU_CALL_RATE (300/s), CPU_SECS (10 s per
# phase), CPU_RELAY_CALLS (200), CPU_PHASES ("reg call direct relay"),
# PERF=1 records `perf record $PERF_OPTS` (default
# `--call-graph dwarf,16384`) of the SBC during each phase into the
# work dir (kept), BENCH_SKIP_BUILD=1, BENCH_TARGET_DIR as sbc-bench.sh.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REG_RATE=${CPU_REG_RATE:-1000}
CALL_RATE=${CPU_CALL_RATE:-300}
SECS=${CPU_SECS:-10}
RELAY_CALLS=${CPU_RELAY_CALLS:-200}
PHASES=${CPU_PHASES:-reg call direct relay}
TRIAL_SECS=$SECS
PASSWORD=bench-secret
DOMAIN=demo.pbx.local
TARGET_DIR=${BENCH_TARGET_DIR:-$HOME/.cache/pbx-bench-target}
NODE_BIN=$TARGET_DIR/release/pbx-node
SBC_BIN=$TARGET_DIR/release/sbc
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
DEADLINE=$(($(date +%s) + 3600))

NODE_SIP=15261
NODE_HTTP=18281
NODE_RAFT=7601
SBC_UDP=15260
SBC_INSIDE=15280
SBC_HTTP=19291
SIPP_PORT=16201
UAS_PORT=16210
CALLEE=299999
# Registered straight with the node, for the `direct` phase: the SBC's
# callee keeps its binding through the SBC.
CALLEE_DIRECT=299998

WORK=$(mktemp -d /tmp/sbc-cpu.XXXXXX)
. "$HERE/lib.sh"
raise_open_files 0
[ "${PERF:-0}" = 1 ] && BENCH_KEEP=1

if [ "${BENCH_SKIP_BUILD:-0}" = 1 ] && [ -x "$NODE_BIN" ] && [ -x "$SBC_BIN" ]; then
  log "using the binaries built $(date -r "$SBC_BIN" '+%F %T')"
else
  log "building pbx-node and sbc (release) into $TARGET_DIR"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p pbx-node -p sbc \
    >"$WORK/build.log" 2>&1) || { cat "$WORK/build.log" >&2; exit 1; }
fi

start_single_node 200000-299999 || exit 1
cat >"$WORK/sbc.toml" <<EOF
udp_listen = "127.0.0.1:$SBC_UDP"
tcp_listen = "127.0.0.1:$SBC_UDP"
tls_listen = "127.0.0.1:0"
wss_listen = "127.0.0.1:0"
https_listen = "127.0.0.1:0"
internal_listen = "127.0.0.1:$SBC_INSIDE"
http_listen = "127.0.0.1:$SBC_HTTP"
public_host = "127.0.0.1"
media_public_bind = "127.0.0.1"
nodes = ["127.0.0.1:$NODE_SIP"]
data_dir = "$WORK/sbc"
rtp_port_min = $SBC_RTP_PORT_MIN
rtp_port_max = $SBC_RTP_PORT_MAX
edge_nonce_key_file = "$EDGE_KEY"
[guard]
requests_per_sec = 1000000.0
burst = 1000000
ban_after_failures = 0
EOF
env -u RUST_BACKTRACE RUST_LOG=warn "$SBC_BIN" --config "$WORK/sbc.toml" \
  </dev/null >"$WORK/sbc.log" 2>&1 &
SBC_PID=$!
PIDS+=("$SBC_PID")
wait_for_line "$WORK/sbc.log" '^SBC ready' 30 "$SBC_PID" || exit 1
SBC=127.0.0.1:$SBC_UDP
HZ=$(getconf CLK_TCK)

# Idle ticks of the whole machine (idle and iowait). The machine's busy
# time is the wall time on every CPU less these, not the sum of
# /proc/stat's busy fields: those are sampled at the timer tick, which
# stops on an idle CPU, so a machine that sleeps between short bursts of
# work missed much of them (the `direct` phase's busy fields added up to
# a quarter less than its busy time), while idle time is measured at
# each entry and exit.
machine_idle_ticks() {
  awk '/^cpu / { print $5 + $6 }' /proc/stat
}
NCPU=$(nproc)

# Runs "$@" (a sipp run, after the processes went idle, or a sleep while
# calls stream media) while measuring the SBC's CPU over it (and
# recording a profile with PERF=1); prints the SBC's CPU seconds. The
# node's and the whole machine's go to $WORK/$label.node-cpu and .machine-cpu.
measured() { # label command...
  local label=$1 before after idle_before started perf=""
  shift
  if [ "${PERF:-0}" = 1 ]; then
    # shellcheck disable=SC2086 # PERF_OPTS is a list of options
    perf record ${PERF_OPTS:---call-graph dwarf,16384} -p "$SBC_PID" \
      -o "$WORK/perf-$label.data" >/dev/null 2>&1 &
    perf=$!
  fi
  idle_before=$(machine_idle_ticks)
  started=$(date +%s.%N)
  before=$(cpu_ticks "$SBC_PID")
  node_before=$(cpu_ticks "$NODE_PID")
  "$@" >"$WORK/$label.result"
  after=$(cpu_ticks "$SBC_PID")
  node_after=$(cpu_ticks "$NODE_PID")
  awk -v idle=$(($(machine_idle_ticks) - idle_before)) -v hz="$HZ" -v cpus="$NCPU" \
    -v started="$started" -v ended="$(date +%s.%N)" \
    'BEGIN { printf "%.3f", (ended - started) * cpus - idle / hz }' >"$WORK/$label.machine-cpu"
  [ -n "$perf" ] && { kill -INT "$perf"; wait "$perf" 2>/dev/null || true; }
  # The node's share, for comparison: logged, not part of the figure.
  awk -v t=$((node_after - node_before)) -v hz="$HZ" \
    'BEGIN { printf "%.3f", t / hz }' >"$WORK/$label.node-cpu"
  awk -v t=$((after - before)) -v hz="$HZ" 'BEGIN { printf "%.3f", t / hz }'
}
per_op_us() { # cpu_seconds ops
  awk -v c="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "null" }'
}

US_REG=null
US_CALL=null
US_RELAY=null
RELAY_PER_CORE=null
if [[ " $PHASES " == *" reg "* ]]; then
  n=$((REG_RATE * SECS))
  write_users 200000 $((200000 + n - 1)) -DEMO "$WORK/users.csv"
  wait_idle "$SBC_PID" "$NODE_PID"
  cpu=$(measured reg run_sipp reg "$SBC" register.xml "$WORK/users.csv" "$REG_RATE" "$n" \
    -key contact_port 5060 -key expires 3600)
  read -r ok failed _ <"$WORK/reg.result"
  US_REG=$(per_op_us "$cpu" "$ok")
  log "REGISTER $REG_RATE/s: $ok ok, $failed failed, SBC ${cpu}s CPU: $US_REG us per REGISTER" \
    "(pbx-node $(per_op_us "$(cat "$WORK/reg.node-cpu")" "$ok") us)"
fi

write_users 290000 290999 -DEMO "$WORK/callers.csv"
write_users $CALLEE $CALLEE -DEMO "$WORK/callee.csv"
write_users $CALLEE_DIRECT $CALLEE_DIRECT -DEMO "$WORK/callee-direct.csv"
start_uas() { # registrar callee.csv sipp args...
  local registrar=$1 callee=$2
  shift 2
  read -r ok _ _ <<<"$(SIPP_LOCAL_PORT=$UAS_PORT run_sipp callee "$registrar" register.xml \
    "$callee" 1 1 -key contact_port "$UAS_PORT" -key expires 3600)"
  [ "$ok" = 1 ] || { log "callee did not register"; exit 1; }
  sipp -sf "$HERE/sipp/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" -nostdin "$@" \
    >"$WORK/uas.log" 2>&1 &
  UAS_PID=$!
  PIDS+=("$UAS_PID")
}
MACHINE_VIA=null
MACHINE_DIRECT=null
OVERHEAD=null
# The same call load through the SBC (`call`) or straight to the node
# (`direct`); sets PHASE_MACHINE to the machine's busy microseconds per
# call, and PHASE_SBC to the SBC's.
call_phase() { # label target callee callee.csv
  local label=$1 target=$2 callee=$3 callee_csv=$4 n cpu ok failed machine sbc
  start_uas "$target" "$callee_csv"
  n=$((CALL_RATE * SECS))
  wait_idle "$SBC_PID" "$NODE_PID"
  cpu=$(measured "$label" run_sipp "$label" "$target" uac-call.xml "$WORK/callers.csv" \
    "$CALL_RATE" "$n" -key callee "$callee")
  read -r ok failed _ <"$WORK/$label.result"
  machine=$(per_op_us "$(cat "$WORK/$label.machine-cpu")" "$ok")
  sbc=$(per_op_us "$cpu" "$ok")
  log "calls $CALL_RATE/s ($label): $ok ok, $failed failed, SBC ${cpu}s CPU:" \
    "$sbc us per call (pbx-node" \
    "$(per_op_us "$(cat "$WORK/$label.node-cpu")" "$ok") us, whole machine $machine us)"
  kill "$UAS_PID" 2>/dev/null || true
  wait "$UAS_PID" 2>/dev/null || true
  [ "$failed" = 0 ] || machine=null
  PHASE_MACHINE=$machine
  PHASE_SBC=$sbc
}
call_via_sbc() { call_phase "$1" "$SBC" "$CALLEE" "$WORK/callee.csv"; }
call_direct() { call_phase "$1" "127.0.0.1:$NODE_SIP" "$CALLEE_DIRECT" "$WORK/callee-direct.csv"; }
mean() { # a b: null if either is
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "null" || b == "null") print "null"; else printf "%.1f", (a + b) / 2 }'
}
if [[ " $PHASES " == *" call "* ]] && [[ " $PHASES " == *" direct "* ]]; then
  # Direct, via, via, direct: the node's cost per call grows as its store
  # fills, and in this order both ways meet it equally on average.
  call_direct direct-1
  direct_first=$PHASE_MACHINE
  call_via_sbc call-1
  via_first=$PHASE_MACHINE
  sbc_first=$PHASE_SBC
  call_via_sbc call-2
  MACHINE_VIA=$(mean "$via_first" "$PHASE_MACHINE")
  US_CALL=$(mean "$sbc_first" "$PHASE_SBC")
  call_direct direct-2
  MACHINE_DIRECT=$(mean "$direct_first" "$PHASE_MACHINE")
elif [[ " $PHASES " == *" call "* ]]; then
  call_via_sbc call
  MACHINE_VIA=$PHASE_MACHINE
  US_CALL=$PHASE_SBC
elif [[ " $PHASES " == *" direct "* ]]; then
  call_direct direct
  MACHINE_DIRECT=$PHASE_MACHINE
fi
if [ "$MACHINE_VIA" != null ] && [ "$MACHINE_DIRECT" != null ]; then
  OVERHEAD=$(awk -v v="$MACHINE_VIA" -v d="$MACHINE_DIRECT" 'BEGIN { printf "%.3f", 1 - d / v }')
  log "SBC overhead from CPU: $OVERHEAD of the machine's call throughput"
fi

if [[ " $PHASES " == *" relay "* ]]; then
  start_uas "$SBC" "$WORK/callee.csv" -rtp_echo -mp 26000
  write_rtp_caller
  # As the other phases: not while the node still works off the last one.
  wait_idle "$SBC_PID" "$NODE_PID"
  hold=$((SECS + 15))
  timeout $((hold + 60)) sipp "$SBC" -sf "$WORK/uac-call-rtp.xml" -inf "$WORK/callers.csv" \
    -key domain "$DOMAIN" -key callee "$CALLEE" -i 127.0.0.1 -p "$SIPP_PORT" -mp 27000 \
    -r $((RELAY_CALLS / 5)) -m "$RELAY_CALLS" -l "$RELAY_CALLS" -d $((hold * 1000)) \
    -nostdin -trace_stat -stf "$WORK/relay-stat.csv" -fd 1 >"$WORK/relay-screen.log" 2>&1 &
  RELAY_SIPP=$!
  PIDS+=("$RELAY_SIPP")
  sleep 8 # every call is up after RELAY_CALLS / rate = 5 s
  cpu=$(measured relay sleep "$SECS")
  # Each B2BUA call is two relays: all of them must be in the SBC.
  sessions=$(media_sessions "$SBC_HTTP")
  wait "$RELAY_SIPP" 2>/dev/null || true
  read -r ok failed <<<"$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i }
    END { print $col["SuccessfulCall(C)"], $col["FailedCall(C)"] }' "$WORK/relay-stat.csv")"
  if [ "$ok" = "$RELAY_CALLS" ] && [ "$sessions" = $((RELAY_CALLS * 2)) ]; then
    US_RELAY=$(per_op_us "$cpu" $((RELAY_CALLS * SECS)))
    RELAY_PER_CORE=$(awk -v u="$US_RELAY" 'BEGIN { printf "%d", 1e6 / u }')
  fi
  log "relay: $ok of $RELAY_CALLS calls ok ($failed failed), $sessions relays, SBC ${cpu}s CPU over ${SECS}s:" \
    "$US_RELAY us per call-second, $RELAY_PER_CORE calls per core" \
    "(the pbx-node, which does not touch the media, $(cat "$WORK/relay.node-cpu")s)"
fi

printf '{"sbc_cpu_us_per_register": %s, "sbc_cpu_us_per_call": %s, "sbc_cpu_us_per_relayed_call_second": %s, "relay_calls_per_core": %s, "machine_us_per_call_via_sbc": %s, "machine_us_per_call_direct": %s, "call_overhead_from_cpu": %s, "machine": "%s"}\n' \
  "$US_REG" "$US_CALL" "$US_RELAY" "$RELAY_PER_CORE" "$MACHINE_VIA" "$MACHINE_DIRECT" "$OVERHEAD" \
  "$(nproc) cores; load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg); REGISTER ${REG_RATE}/s, calls ${CALL_RATE}/s, ${SECS}s each"
