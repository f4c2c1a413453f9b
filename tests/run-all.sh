#!/usr/bin/env bash
# Runs every test of the appliance: formatting, lints, unit, integration and
# system tests. Installs the Debian packages the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pbx-target}"

# libclang-dev: RocksDB's bindings; sip-tester: sipp, the SIP load and
# conformance client the pbx-node tests drive; iproute2: `ip netns` for the
# pbx-node torture test (run as root); baresip-core: the softphone of the
# two-phone call test; chromium and nodejs/npm: the browser softphone and
# web portal tests (Chromium driven by playwright-core, from npm).
need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# python3-venv: the virtualenv schemathesis is installed into.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

# The softphone's npm packages (JsSIP, esbuild, playwright-core) at their
# locked versions. The bundle the SBC serves is committed, so `cargo build`
# needs no Node; rebuilding it here proves it is what the sources make.
(cd sbc/softphone && npm ci --no-audit --no-fund && npm run build)
git diff --exit-code -- sbc/softphone/dist \
  || { echo "sbc/softphone/dist is stale: commit the output of 'npm run build'" >&2; exit 1; }

# playwright-core for pbx-node's portal test (tests/portal.rs drives the web
# portal in Debian's Chromium with tests/portal/portal.mjs), at its locked
# version; the portal itself needs no Node: its CSS and script are embedded.
(cd pbx-node/tests/portal && npm ci --no-audit --no-fund)

# schemathesis (PyPI), pinned: pbx-node's tests/schemathesis.rs fuzzes the
# management API from its live OpenAPI document with it.
venv="${PBX_VENV:-$HOME/.cache/pbx-venv}"
schemathesis_version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$schemathesis_version"
fi
export PBX_SCHEMATHESIS="$venv/bin/schemathesis"
# sipvicious (PyPI), pinned: the SBC system test runs its svwar against
# the SBC on loopback and expects it to find no extension.
sipvicious_version=0.3.8
if ! "$venv/bin/pip" show sipvicious 2>/dev/null | grep -q "^Version: $sipvicious_version\$"; then
  "$venv/bin/pip" install -q "sipvicious==$sipvicious_version"
fi
export PBX_SVWAR="$venv/bin/sipvicious_svwar"

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
