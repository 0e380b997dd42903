#!/usr/bin/env bash
# Runs a peco task on a fresh Debian machine that has only Node.js/npm: installs the pinned Deno
# from npm, when no Vulkan driver is present Mesa's software driver (lavapipe), and for the tests
# Debian's chromium when missing; then `deno task "$@"`. Idempotent: on a prepared machine it only
# runs the task.
#   tools/run.sh demo        the whole pipeline on the built-in data set
#   tools/run.sh test        the test suite
set -euo pipefail
DENO_VERSION=2.9.6
cd "$(dirname "$0")/.."

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "peco: need root to run: $*" >&2
    exit 1
  fi
}

if ! command -v deno >/dev/null || [[ $(deno --version | head -n 1) != "deno $DENO_VERSION "* ]]; then
  echo "peco: installing Deno $DENO_VERSION from npm" >&2
  if ! npm install -g "deno@$DENO_VERSION" >/dev/null 2>&1; then
    as_root npm install -g "deno@$DENO_VERSION" >/dev/null
  fi
  hash -r
fi

has_vulkan_driver() {
  compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null ||
    compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null ||
    [[ -n ${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-} ]]
}
if ! has_vulkan_driver; then
  echo "peco: no Vulkan driver found; installing Mesa's software driver (mesa-vulkan-drivers)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi

# The test suite and the browser check open report.html in Debian's headless Chromium.
if [[ ${1:-} == test || ${1:-} == browser-check ]] && ! command -v chromium >/dev/null; then
  echo "peco: installing Debian's chromium (headless browser checks of report.html)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

# The Vulkan loader warns on every start without a runtime dir.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
if [[ ${1:-} != test* ]]; then exec deno task "$@"; fi

# A test run whose summary says "0 failed" but whose process then aborts (SIGABRT, exit 134: the
# heap corruption at WebGPU/lavapipe teardown seen about once in fifteen suite runs, after every
# test had passed; docs/architecture.md "Known gaps") is run once more, saying so: a failing test
# still fails, and a second abort fails the run.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for attempt in 1 2; do
  rc=0
  deno task "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
  if [[ $rc -ne 134 ]] || ! grep -q '| 0 failed' "$log" || [[ $attempt -eq 2 ]]; then exit "$rc"; fi
  echo "peco: deno aborted at exit (134) after all tests passed: the known teardown crash; running again" >&2
done
