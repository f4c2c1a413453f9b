#!/usr/bin/env bash
# Media benchmark on this machine (not run in CI): media::relay::udp against
# rtpengine, and the CPU cost of media::player and media::recorder.
#
# Measures, in one run:
#   relay_calls_per_core               most concurrent G.711 calls (50 packets/s
#                                      of 172 bytes each way) one core relays
#                                      with < 0.1% loss and < 1 ms added p99
#                                      latency (double until a trial fails,
#                                      then bisect)
#   rtpengine_relay_calls_per_core     the same for rtpengine (Debian package,
#                                      userspace forwarding, --table=-1)
#   relay_p99_added_latency_ms_at_max  p99 through our relay minus p99 of the
#                                      same load sent phone to phone
#   player_cpu_us_per_call_second      looping prompt, µ-law, RTP to a sink
#   recorder_cpu_us_per_call_second    two legs in, mixed 16-bit WAV out
# The process under test runs on CPU $BENCH_SERVE_CPU (0), the load generator
# on CPU $BENCH_LOAD_CPU (1), both SCHED_FIFO so other builds sharing the
# machine do not preempt them (kernel RT throttling caps each at 95% of its
# CPU). Progress goes to stderr; the last line on stdout is one JSON object.
#
# Env: BENCH_STEP_SECS (10, measured seconds per trial), BENCH_CPU_SECS (10,
# player/recorder), BENCH_KEEP=1 keeps the work dir with every log.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STEP_SECS=${BENCH_STEP_SECS:-10}
CPU_SECS=${BENCH_CPU_SECS:-10}
SERVE_CPU=${BENCH_SERVE_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
NG_PORT=${BENCH_NG_PORT:-22222}
TARGET_DIR=$HOME/.cache/pbx-bench-target
START_TIME=$(date +%s)
# The whole run must stay under 15 minutes.
DEADLINE=$((START_TIME + 14 * 60))

WORK=$(mktemp -d /tmp/media-bench.XXXXXX)
PIDS=()
WATCHDOG=""

log() { echo "[$(date +%T)] $*" >&2; }
left() { echo $((DEADLINE - $(date +%s))); }

cleanup() {
  local code=$?
  [ -n "$WATCHDOG" ] && { pkill -P "$WATCHDOG" 2>/dev/null || true; }
  # The bench's own children exit when its pipe to them closes.
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
# Hard stop, in case something hangs beyond every per-step timeout.
(sleep $((15 * 60)) && log "15 minutes reached, stopping" && kill -TERM $$) 2>/dev/null &
WATCHDOG=$!
PIDS+=("$WATCHDOG")

# --- prerequisites -----------------------------------------------------------
if ! command -v rtpengine >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  log "installing rtpengine-daemon"
  $sudo apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    rtpengine-daemon >&2 || log "rtpengine could not be installed; its figure will be null"
fi

log "building media-bench (release) into $TARGET_DIR"
if ! (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR timeout 600 cargo bench -p media \
  --bench media-bench --no-run --message-format=json >"$WORK/build.json" 2>"$WORK/build.log"); then
  cat "$WORK/build.log" >&2
  exit 1
fi
BIN=$(grep -o '"executable":"[^"]*media_bench[^"]*"' "$WORK/build.json" | tail -n1 | cut -d'"' -f4)
[ -x "$BIN" ] || { log "no media-bench executable in the build output"; exit 1; }

# Four sockets per relayed call (RTP and RTCP on both legs).
ulimit -Hn 65536 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

# SCHED_FIFO keeps the builds that share this machine from preempting the
# relay or the generator mid-measurement; without it, say so.
PRIO=(chrt -f 20)
SCHED="SCHED_FIFO"
if ! chrt -f 20 true 2>/dev/null; then
  PRIO=()
  SCHED="normal priority"
  log "chrt -f not permitted; running at normal priority (expect noisier figures)"
fi

# --- rtpengine -----------------------------------------------------------------
RTP_ARGS=()
if command -v rtpengine >/dev/null 2>&1; then
  log "starting rtpengine on CPU $SERVE_CPU (userspace forwarding, one worker thread)"
  "${PRIO[@]}" taskset -c "$SERVE_CPU" rtpengine --config-file=none --foreground \
    --log-stderr --log-level=4 --table=-1 --interface=127.0.0.1 \
    --listen-ng="127.0.0.1:$NG_PORT" --port-min=30000 --port-max=60000 \
    --num-threads=1 --media-num-threads=1 --delete-delay=0 --timeout=60 \
    >"$WORK/rtpengine.log" 2>&1 &
  RTP_PID=$!
  PIDS+=("$RTP_PID")
  sleep 1
  if kill -0 "$RTP_PID" 2>/dev/null; then
    RTP_ARGS=(--rtpengine-ng "127.0.0.1:$NG_PORT" --rtpengine-pid "$RTP_PID")
  else
    log "rtpengine exited at start:"
    tail -n 20 "$WORK/rtpengine.log" >&2 || true
  fi
fi
ONLY=player,recorder,relay
[ ${#RTP_ARGS[@]} -gt 0 ] && ONLY=$ONLY,rtpengine

# --- run -------------------------------------------------------------------------
MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
LOAD=$(cut -d' ' -f1 /proc/loadavg)
MACHINE="$(nproc) vCPU $MODEL (KVM), $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r);"
MACHINE="$MACHINE tested process on CPU $SERVE_CPU, load generator on CPU $LOAD_CPU, both $SCHED;"
MACHINE="$MACHINE other builds shared the machine (load average $LOAD at start)"
BUDGET=$(($(left) - 90))
[ "$BUDGET" -gt 600 ] && BUDGET=600
[ "$BUDGET" -lt 60 ] && { log "not enough time left ($(left) s)"; exit 1; }
log "running media-bench (search budget ${BUDGET} s)"
timeout "$(left)" "${PRIO[@]}" taskset -c "$LOAD_CPU" "$BIN" all \
  --serve-cpu "$SERVE_CPU" --only "$ONLY" "${RTP_ARGS[@]}" \
  --step-secs "$STEP_SECS" --cpu-secs "$CPU_SECS" --budget-secs "$BUDGET" \
  --machine "$MACHINE" >"$WORK/result.out" &
BENCH_PID=$!
PIDS+=("$BENCH_PID")
wait "$BENCH_PID"
tail -n1 "$WORK/result.out"
