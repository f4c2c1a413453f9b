# Shell helpers of the SIP benchmarks (sip-bench.sh, sbc-bench.sh,
# sbc-cpu.sh), sourced after the script sets WORK, DEADLINE, HERE,
# TRIAL_SECS, DOMAIN, PASSWORD and SIPP_PORT.

# What cleanup stops: the processes the script starts, and its watchdog.
PIDS=()
WATCHDOG=""

# The SBC's RTP ports in sbc-bench.sh and sbc-cpu.sh: wider than the
# default range (5,000 pairs, 1,250 relayed B2BUA calls), since the failed
# calls of an overloaded trial hold their relays until their transactions
# time out, and a call short of ports is refused (503), which would fail
# the next trials for want of ports rather than of CPU.
# At most as many as the open files the SBC may have allow (two per pair,
# RTP and RTCP, and OTHER_FILES for the rest): beyond them it would
# refuse calls for want of descriptors rather than of ports (on a machine whose
# hard limit is 20,000: 15,904 ports, 1,988 calls).
SBC_RTP_PORT_MIN=30000
SBC_RTP_PORT_MAX=59999
# Descriptors beside the RTP ports: listeners, connections to the nodes,
# logs.
OTHER_FILES=4096
FILES_HARD=$(ulimit -Hn)
if [ "$FILES_HARD" != unlimited ] && [ $((FILES_HARD - OTHER_FILES)) -lt 30000 ]; then
  SBC_RTP_PORT_MAX=$((SBC_RTP_PORT_MIN + (FILES_HARD - OTHER_FILES) / 2 * 2 - 1))
fi

log() { echo "[$(date +%T)] $*" >&2; }

# Open files for the SBC: one per RTP port of the range, as it asks for,
# 4,096 for the rest, and `extra` (held connections); up to the hard
# limit where that is lower.
raise_open_files() { # extra
  ulimit -n $((SBC_RTP_PORT_MAX - SBC_RTP_PORT_MIN + 1 + OTHER_FILES + $1)) 2>/dev/null ||
    ulimit -n "$(ulimit -Hn)"
}

cleanup() {
  local code=$?
  # The watchdog's sleep first, then everything this script started.
  [ -n "$WATCHDOG" ] && { pkill -P "$WATCHDOG" 2>/dev/null || true; }
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

left() { echo $((DEADLINE - $(date +%s))); }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
wait_for_line() { # file pattern timeout_secs pid
  local until=$(($(date +%s) + $3))
  while ! grep -q "$2" "$1" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$until" ] || ! kill -0 "$4" 2>/dev/null; then
      log "timed out waiting for '$2' in $1"
      tail -n 20 "$1" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

# users.csv for sipp -inf: number;auth username;password, numbers first..last.
# $3 is the auth username suffix ("-DEMO" for pbx-node, "" for Kamailio).
write_users() { # first last suffix file
  {
    echo SEQUENTIAL
    seq "$1" "$2" | awk -v s="$3" -v p="$PASSWORD" '{print $1 ";" $1 s ";" p}'
  } >"$4"
}

# Runs one sipp client; prints "<successful> <failed> <elapsed seconds>".
# SIPP_LIMIT caps the calls in progress (default: no cap, an open loop);
# SIPP_TIMEOUT bounds the run (default: calls/rate + 40 s); SIPP_LOCAL_PORT
# is its UDP port (default $SIPP_PORT); SIPP_CPUS pins it to those CPUs.
# Any failure, or a run much longer than calls/rate (the generator or the
# server fell behind), fails the trial in the caller.
run_sipp() { # name target scenario csv rate calls [extra sipp args...]
  local name=$1 target=$2 scenario=$3 csv=$4 rate=$5 calls=$6
  shift 6
  local dir=$WORK/sipp/$name
  mkdir -p "$dir"
  local t0 t1
  t0=$(date +%s.%N)
  ${SIPP_CPUS:+taskset -c "$SIPP_CPUS"} \
    timeout "${SIPP_TIMEOUT:-$((calls / rate + 40))}" sipp "$target" -sf "$HERE/sipp/$scenario" \
    -inf "$csv" -key domain "$DOMAIN" -i 127.0.0.1 -p "${SIPP_LOCAL_PORT:-$SIPP_PORT}" \
    -r "$rate" -m "$calls" -l "${SIPP_LIMIT:-$((calls + 1))}" -recv_timeout 5000 \
    -nostdin -trace_stat -stf "$dir/stat.csv" -fd 1 \
    -trace_err -error_file "$dir/errors.log" "$@" >"$dir/screen.log" 2>&1 || true
  t1=$(date +%s.%N)
  local last
  last=$(tail -n 1 "$dir/stat.csv" 2>/dev/null || true)
  local header
  header=$(head -n 1 "$dir/stat.csv" 2>/dev/null || true)
  awk -v h="$header" -v l="$last" -v e="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" 'BEGIN {
    n = split(h, names, ";"); split(l, vals, ";");
    ok = 0; failed = -1;
    for (i = 1; i <= n; i++) {
      if (names[i] == "SuccessfulCall(C)") ok = vals[i];
      if (names[i] == "FailedCall(C)") failed = vals[i];
    }
    printf "%d %d %.2f\n", ok, failed, e;
  }'
}

# Verdict of a trial from run_sipp's output: 0 = zero failures at the rate.
trial_ok() { # "ok failed elapsed" calls
  local ok failed elapsed
  read -r ok failed elapsed <<<"$1"
  [ "$failed" = 0 ] && [ "$ok" = "$2" ] &&
    awk -v e="$elapsed" -v d="$TRIAL_SECS" 'BEGIN { exit !(e <= d * 1.1 + 0.5) }'
}

# Waits (at most 30 s) until the processes $@ use under 10% of a core:
# a failed trial can leave a backlog that would fail the next one too.
wait_idle() {
  local i before after
  for i in $(seq 30); do
    before=$(cpu_ticks "$@")
    sleep 1
    after=$(cpu_ticks "$@")
    [ $((after - before)) -lt $(($(getconf CLK_TCK) / 10)) ] && return 0
  done
  log "  still busy after 30 s"
}
cpu_ticks() { # utime + stime of the processes (all their threads)
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# RFC 7502 §4.10-style searches for the highest rate with zero failures.
# Each `trial:recover` pair is one search: double the rate from `start`
# until a trial has failures, then bisect between the last good and the
# first bad rate, to 5% (or 5/s). Each trial offers rate × TRIAL_SECS
# session attempts. After a failed trial, that search's `recover` waits
# until the system is idle and healthy again, so that the next trial
# starts from the same state; a search whose recovery fails ends there.
#
# Several searches take turns, one trial each, rather than run one after
# the other: what they share (a pbx-node whose store grows with every
# trial's CDRs and registrations, and its cost per call with it) is then
# in the same state for each, and what is compared is what differs.
#
# The searches get `n / share` of the time left (share: the searches still
# to run, these included). Runs in this shell, not in $(...), so that a
# recover's restarts are seen by the caller; sets RATES, the searches'
# results in the order given.
search() { # share start max trial:recover...
  local share=$1 start=$2 max=$3
  shift 3
  local n=$# i spec active
  local -a trial=() recover=() rate=() lo=() hi=() running=()
  for spec in "$@"; do
    trial+=("${spec%%:*}")
    recover+=("${spec#*:}")
    rate+=("$start")
    lo+=(0)
    hi+=(0)
    running+=(1)
  done
  local until=$(($(date +%s) + $(left) * n / share))
  local trial_cost=$((TRIAL_SECS * 2 + 5))
  while :; do
    active=0
    for ((i = 0; i < n; i++)); do
      [ "${running[i]}" = 1 ] || continue
      active=1
      if [ $(($(date +%s) + trial_cost)) -gt "$until" ]; then
        log "  out of time for ${trial[i]}"
        running[i]=0
        continue
      fi
      if ${trial[i]} "${rate[i]}"; then
        lo[i]=${rate[i]}
      else
        hi[i]=${rate[i]}
        ${recover[i]} || { running[i]=0; continue; }
      fi
      if [ "${hi[i]}" = 0 ]; then
        if [ "${lo[i]}" -ge "$max" ]; then
          running[i]=0
        else
          # The last step tries `max` itself rather than stopping short of it.
          rate[i]=$((rate[i] * 2 > max ? max : rate[i] * 2))
        fi
      elif [ $((hi[i] - lo[i])) -le $((lo[i] / 20 > 5 ? lo[i] / 20 : 5)) ]; then
        running[i]=0
      else
        rate[i]=$(((lo[i] + hi[i]) / 2))
      fi
    done
    [ "$active" = 1 ] || break
  done
  RATES=("${lo[@]}")
}

# $WORK/uac-call-rtp.xml: $HERE/sipp/uac-call.xml with G.711 silence
# ($WORK/silence.pcmu, 1 s, looping) streamed from the answer until the
# BYE, which comes after sipp's -d milliseconds.
write_rtp_caller() {
  head -c 8000 /dev/zero | tr '\0' '\377' >"$WORK/silence.pcmu"
  python3 - "$HERE/sipp/uac-call.xml" "$WORK/uac-call-rtp.xml" "$WORK/silence.pcmu" <<'EOF'
import sys
source, target, audio = sys.argv[1:]
text = open(source).read()
bye = text.rindex('<send retrans="500">')
media = f'<nop><action><exec rtp_stream="{audio},-1,0"/></action></nop>\n  <pause/>\n\n  '
open(target, "w").write(text[:bye] + media + text[bye:])
EOF
}

# Calls whose media the SBC with its HTTP listener on 127.0.0.1:$1 relays
# now (its sbc_media_sessions gauge); -1 if it cannot be read.
media_sessions() { # http_port
  curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk '$1 == "sbc_media_sessions" { print $2; found = 1 } END { if (!found) print -1 }'
}

# Starts the one pbx-node of the SBC benchmarks ($NODE_BIN on 127.0.0.1,
# ports $NODE_SIP, $NODE_RAFT and $NODE_HTTP, data in $WORK/node) with the
# demo extensions $1, and waits until it is ready; sets NODE_PID. The
# node accepts the nonces of an SBC given $EDGE_KEY, as deployed.
start_single_node() { # demo_range
  EDGE_KEY=$WORK/edge-nonce.key
  [ -s "$EDGE_KEY" ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$EDGE_KEY"
  env -u RUST_BACKTRACE RUST_LOG=warn "$NODE_BIN" --data-dir "$WORK/node" \
    --sip-udp-listen "127.0.0.1:$NODE_SIP" --sip-tcp-listen "127.0.0.1:$NODE_SIP" \
    --raft-listen "127.0.0.1:$NODE_RAFT" --http-listen "127.0.0.1:$NODE_HTTP" \
    --sip-digest-sha256 false --demo true --demo-extensions "$1" \
    --demo-password "$PASSWORD" --edge-nonce-key-file "$EDGE_KEY" \
    </dev/null >"$WORK/node.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_for_line "$WORK/node.log" '^ready ' 120 "$NODE_PID"
}

# Starts Kamailio with config $1 on 127.0.0.1:$2 (UDP), foreground, the
# other arguments passed on (-A defines); sets KAM_PID and KAM (its
# address). Its work is done by the children it forks: kam_pids lists
# them all, for wait_idle and cpu_ticks.
start_kamailio() { # cfg port [kamailio args...]
  local cfg=$1 port=$2 modules
  shift 2
  modules=$(dirname "$(find /usr/lib -name tm.so -path '*kamailio*' | head -n1)")
  mkdir -p "$WORK/kamailio-run"
  kamailio -DD -E -f "$cfg" -L "$modules" -l "udp:127.0.0.1:$port" \
    -Y "$WORK/kamailio-run" -m 2048 -M 32 "$@" </dev/null >"$WORK/kamailio.log" 2>&1 &
  KAM_PID=$!
  PIDS+=("$KAM_PID")
  KAM=127.0.0.1:$port
  sleep 2
  kill -0 "$KAM_PID" 2>/dev/null || { cat "$WORK/kamailio.log" >&2; return 1; }
}
kam_pids() { echo "$KAM_PID" $(pgrep -P "$KAM_PID"); }
