#!/usr/bin/env bash
# `jmeta bench core` and `jmeta bench scaling` on an accelerator machine, in one command:
#
#   bash benchmarks/gpu.sh                      # from the index
#   WHEELS=/path/to/wheels OUT=/tmp/out BUDGET_S=1800 bash benchmarks/gpu.sh
#
# Creates a venv ($VENV, default .venv-gpu), installs the project (`pip install -e .`) with
# jax[cuda12] (offline from $WHEELS when set), prints the device, runs both suites within
# BUDGET_S seconds in total (each workload also has its own --timeout, $WORKLOAD_TIMEOUT_S), and
# copies the results (bench-*.json, bench-*.md and a .tar.gz of the folder with its plots) to
# $OUT when set. A suite that fails or runs out of time does not stop the script: the suites
# rewrite their JSON and table after every workload, and whatever was written is copied.
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET_S=${BUDGET_S:-3000}
WORKLOAD_TIMEOUT_S=${WORKLOAD_TIMEOUT_S:-600}
VENV=${VENV:-.venv-gpu}
PY=${PYTHON:-python3}
START=$(date +%s)
PIP_ARGS=()
if [ -n "${WHEELS:-}" ]; then PIP_ARGS=(--no-index --find-links "$WHEELS" --no-build-isolation); fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install --quiet ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$@"; }
if [ -n "${WHEELS:-}" ]; then pip_install 'setuptools>=64' || true; fi  # offline: build backend
pip_install -e . 'jax[cuda12]'
pip_install matplotlib || echo "gpu.sh: matplotlib unavailable: the scaling suite writes no plots"

HW=$("$VENV/bin/python" -c '
import jax
from jmeta.bench import hardware_name
print(jax.devices(), f"jax {jax.__version__}", file=__import__("sys").stderr)
print(hardware_name())')
[ "$HW" = "${HW#cpu-}" ] || echo "gpu.sh: warning: JAX sees no accelerator, only the CPU ($HW)"
RESULTS=benchmarks/results/$HW

copy_out() {  # the tables and JSON, and one archive of the folder with the plots (few files)
  if [ -n "${OUT:-}" ] && [ -d "$RESULTS" ]; then
    mkdir -p "$OUT"
    cp "$RESULTS"/bench-*.json "$RESULTS"/bench-*.md "$OUT/" 2>/dev/null || true
    tar -czf "$OUT/bench-$HW.tar.gz" -C "$RESULTS" . && echo "gpu.sh: results copied to $OUT"
  fi
}
trap copy_out EXIT

for suite in core scaling; do
  left=$((BUDGET_S - ($(date +%s) - START)))
  if [ "$left" -lt 60 ]; then echo "gpu.sh: budget spent, skipping $suite"; continue; fi
  timeout "$left" "$VENV/bin/jmeta" bench "$suite" --timeout "$WORKLOAD_TIMEOUT_S" \
    --out "$RESULTS" || echo "gpu.sh: jmeta bench $suite exited with status $? (results kept)"
done
