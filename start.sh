#!/usr/bin/env bash
# Starts the appliance on embedded defaults, as production runs it: one
# pbx-node (demo tenant DEMO, local storage) whose SIP listens on
# 127.0.0.1:5070 only, behind the SBC that phones and browsers talk to
# (SIP UDP/TCP 5060, TLS 5061, WSS 8443, the browser softphone page on
# HTTPS 8444). Extra arguments go to the SBC (e.g. --public-host).
# Ctrl-C stops both. `cargo run -p pbx-node` alone still runs the node
# without an SBC, with phones on its own 5060.
set -euo pipefail
cd "$(dirname "$0")"

# PBX_BIN_DIR: run binaries built elsewhere (a release build, say) as they are.
bin="${PBX_BIN_DIR:-}"
if [ -z "$bin" ]; then
  # RocksDB is C++ and its Rust bindings are generated with libclang.
  need=()
  dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
  command -v g++ >/dev/null 2>&1 || need+=(g++)
  if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
  fi
  cargo build --bin pbx-node --bin sbc
  bin=$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug
fi

# The SBC's defaults already name this node (nodes = 127.0.0.1:5070) and
# reach it from 127.0.0.1:5080; the node anchors media on 20000-29999, the
# SBC relays on 30000-39999.
# The SBC challenges phones on the node's behalf with nonces signed by a
# key they share, made on the first start.
edge_key=sbc-data/edge-nonce.key
if [ ! -s "$edge_key" ]; then
  mkdir -p sbc-data
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$edge_key")
fi
"$bin/pbx-node" --sip-udp-listen 127.0.0.1:5070 --sip-tcp-listen 127.0.0.1:5070 \
  --edge-nonce-key-file "$edge_key" &
node=$!
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null || true' EXIT
"$bin/sbc" --edge-nonce-key-file "$edge_key" "$@"
