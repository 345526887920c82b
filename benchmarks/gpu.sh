#!/usr/bin/env bash
# The benchmark suite on an accelerator machine, in one command, within BUDGET_S seconds
# (default 480: eight minutes, the install included):
#
#   bash benchmarks/gpu.sh
#   OUT=/tmp/out BUDGET_S=1800 bash benchmarks/gpu.sh
#   WHEELS=/path/to/wheels PEER_WHEELS=.peers-wheels bash benchmarks/gpu.sh   # no package index
#
# 1. Python. When $PYTHON (default python3) already imports JAX with an accelerator and jmeta's
#    dependencies (a machine image with JAX installed), jmeta runs from this checkout through
#    PYTHONPATH and nothing is installed. Otherwise (or with FORCE_VENV=1) it creates $VENV
#    (default .venv-gpu) and installs the project with jax[cuda12], offline from $WHEELS when set.
#    ALLOW_CPU=1 accepts a Python whose JAX sees only the CPU: a dry run of the whole script on
#    a CPU machine (the peers then run with --device cpu; PEERS_PYTHON names their Python).
# 2. The PyTorch peers on the same GPU, when $PYTHON imports a CUDA build of torch, within at
#    most half the budget: `benchmarks/compare_peers.py --device cuda`, one round,
#    $PEER_WORKLOADS (default the three second-order MAML conv workloads) and $PEER_LIBRARIES
#    (default learn2learn and torchfunc). learn2learn and higher are installed by
#    benchmarks/peers/setup.sh into $PEER_SITE (pip --target) beside that torch, offline from
#    $PEER_WHEELS (filled by benchmarks/peers/download.sh on a machine with an index; or from
#    the index with PEERS_ONLINE=1); without either, or if that fails, torchfunc (torch alone)
#    still runs. PEERS=0 skips this step.
# 3. `jmeta bench tta` (time to accuracy) for ProtoNets and MAML 5w1s on Omniglot against the
#    PyTorch peers found in step 2, TTA_S training seconds each (default 60; TTA=0 skips; needs
#    Omniglot in $DATA, default ../shared/data); it runs before the peers' speed comparison,
#    which gets what is left of its half of the budget.
# 4. `jmeta bench core`, 3 repetitions of at least 0.5 s per workload.
# 5. `jmeta bench scaling` with the time that is left.
#
# Each step gets the budget that is left (each workload also has its own --timeout,
# $WORKLOAD_TIMEOUT_S). A step that fails or runs out of time does not stop the script: the
# suites rewrite their JSON and table after every workload, and whatever was written is kept.
# Results go to benchmarks/results/<hardware>/ (or $RESULTS_DIR); with OUT set, bench-*.json/md
# and peers.json/md are copied there with one .tar.gz of the folder and its plots.
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET_S=${BUDGET_S:-480}
WORKLOAD_TIMEOUT_S=${WORKLOAD_TIMEOUT_S:-240}
VENV=${VENV:-.venv-gpu}
PY=${PYTHON:-python3}
PEER_WORKLOADS=${PEER_WORKLOADS:-maml_omniglot_5w1s,maml_omniglot_20w1s,maml_miniimagenet_5w1s}
PEER_LIBRARIES=${PEER_LIBRARIES:-learn2learn,torchfunc}
START=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
say() { echo "gpu.sh [$(($(date +%s) - START)) s]: $*"; }

# --- 1. Python -------------------------------------------------------------------------------
ready() {  # does this Python import jmeta's dependencies and JAX with an accelerator?
  "$1" - <<'EOF' 2>/dev/null
import importlib, sys
for name in ("flax", "optax", "chex", "orbax.checkpoint", "numpy", "tqdm", "PIL"):
    importlib.import_module(name)
import jax, os
sys.exit(0 if jax.default_backend() != "cpu" or os.environ.get("ALLOW_CPU") == "1" else 1)
EOF
}
if [ "${FORCE_VENV:-0}" != 1 ] && ready "$PY"; then
  JPY="$PY"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  say "using $("$PY" -c 'import sys, jax; print(sys.executable, "with jax", jax.__version__)')"
else
  PIP_ARGS=()
  if [ -n "${WHEELS:-}" ]; then
    PIP_ARGS=(--no-index --find-links "$WHEELS" --no-build-isolation)
  fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  pip_install() { "$VENV/bin/python" -m pip install --quiet ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$@"; }
  if [ -n "${WHEELS:-}" ]; then pip_install 'setuptools>=64' || true; fi  # offline: build backend
  pip_install -e . 'jax[cuda12]'
  pip_install matplotlib || say "matplotlib unavailable: the scaling suite writes no plots"
  JPY="$VENV/bin/python"
fi

HW=$("$JPY" -c '
import jax
from jmeta.bench import hardware_name
print(jax.devices(), f"jax {jax.__version__}", file=__import__("sys").stderr)
print(hardware_name())')
[ "$HW" = "${HW#cpu-}" ] || say "warning: JAX sees no accelerator, only the CPU ($HW)"
RESULTS=${RESULTS_DIR:-benchmarks/results/$HW}
mkdir -p "$RESULTS"

copy_out() {  # the tables and JSON, and one archive of the folder with the plots (few files)
  if [ -n "${OUT:-}" ] && [ -d "$RESULTS" ]; then
    mkdir -p "$OUT"
    cp "$RESULTS"/bench-*.json "$RESULTS"/bench-*.md "$RESULTS"/peers.* "$RESULTS"/tta_* "$OUT/" \
      2>/dev/null || true
    tar -czf "$OUT/bench-$HW.tar.gz" -C "$RESULTS" . && say "results copied to $OUT"
  fi
}
trap copy_out EXIT

suite() {  # suite NAME [ARGS...]: one jmeta bench suite within the budget that is left
  local name=$1 t
  shift
  t=$(left)
  if [ "$t" -lt 60 ]; then say "budget spent, skipping jmeta bench $name"; return; fi
  say "jmeta bench $name (${t} s left)"
  timeout "$t" "$JPY" -m jmeta.bench "$name" --timeout "$WORKLOAD_TIMEOUT_S" --out "$RESULTS" "$@" \
    || say "jmeta bench $name exited with status $? (results kept)"
}

# --- 2. the PyTorch peers on the same device: which libraries import (they run after step 3) --
DEVICE=cuda
[ "$HW" = "${HW#cpu-}" ] || DEVICE=cpu  # a dry run on a CPU machine (ALLOW_CPU=1)
PEERS_PY="$(command -v "${PEERS_PYTHON:-$PY}" || echo "${PEERS_PYTHON:-$PY}")"
if [ "${PEERS:-1}" = 1 ]; then
  if "$PEERS_PY" -c "import sys, torch
sys.exit('$DEVICE' == 'cuda' and not torch.cuda.is_available())" 2>/dev/null; then
    LIBS=torchfunc
    PEER_SITE=${PEER_SITE:-${TMPDIR:-/tmp}/jmeta-peers-site}
    PEER_PATH="$PEER_SITE${PYTHONPATH:+:$PYTHONPATH}"
    if "$PEERS_PY" benchmarks/peers/run_peer.py --versions >/dev/null 2>&1; then
      LIBS=$PEER_LIBRARIES  # learn2learn and higher import already
    elif [ -z "${PEER_WHEELS:-}" ] && [ "${PEERS_ONLINE:-0}" != 1 ]; then
      say "PEER_WHEELS not set (and PEERS_ONLINE=1 not given): torchfunc only"
    elif PEERS_TARGET="$PEER_SITE" PYTHON="$PEERS_PY" PEERS_WHEELS="${PEER_WHEELS:-}" \
        bash benchmarks/peers/setup.sh >"$RESULTS/peers-setup.log" 2>&1
    then
      LIBS=$PEER_LIBRARIES  # installed into $PEER_SITE, beside $PEERS_PY's torch
    else
      say "peers' setup failed (tail of $RESULTS/peers-setup.log below): torchfunc only"
      tail -5 "$RESULTS/peers-setup.log" || true
    fi
    PEERS_READY=1  # compare_peers.py runs after the time-to-accuracy step
  else
    say "$PEERS_PY has no torch for --device $DEVICE: no peers"
  fi
fi

# --- 3. time to accuracy: ProtoNets and MAML 5w1s on Omniglot, jmeta then the peer ---------------
# `jmeta bench tta` with TTA_S training seconds per library (default 60), one library at a time
# on the accelerator (--schedule alternate), the peer on the same device; Omniglot from $DATA
# (default ../shared/data). TTA=0 skips it; each run is skipped when too little budget is left.
TTA_S=${TTA_S:-60}
DATA=${DATA:-../shared/data}
tta() {  # tta CONFIG PEER TARGET [OVERRIDES...]
  local config=$1 peer=$2 target=$3 t need
  shift 3
  t=$(left)
  need=$((TTA_S * 2 + 120))  # both trainings, compiles, start-up and the tests of the snapshots
  if [ "$t" -lt "$need" ]; then say "skipping bench tta $config (${t} s left, needs ${need})"; return; fi
  local peer_args=()
  if [ "${PEERS:-1}" = 1 ] && [ -n "${LIBS:-}" ]; then
    [ "$peer" = learn2learn ] && [ "${LIBS#*learn2learn}" = "$LIBS" ] && peer=pytorch
    peer_args=(--peer "$peer" --peer-python "$PEERS_PY" --peer-device "$DEVICE")
  fi
  say "jmeta bench tta $config ${peer_args[*]:-(no peer)} (${t} s left)"
  PYTHONPATH="${PEER_PATH:-}" timeout "$t" "$JPY" -m jmeta.bench tta "$config" "$@" \
    --target "$target" --budget "$TTA_S" --schedule alternate --data-dir "$DATA" --out "$RESULTS" \
    ${peer_args[@]+"${peer_args[@]}"} || say "bench tta $config exited with status $?"
}
if [ "${TTA:-1}" = 1 ] && [ -d "$DATA/omniglot" ]; then
  tta configs/omniglot_protonets.py:5w1s pytorch 97 data.ways=20 data.queries=15 \
    optimizer.schedule=constant
  tta configs/omniglot_maml.py:5w1s learn2learn 95
elif [ "${TTA:-1}" = 1 ]; then
  say "no Omniglot at $DATA/omniglot: skipping bench tta (DATA=... points at the datasets)"
fi

if [ "${PEERS_READY:-0}" = 1 ]; then
  t=$(left)
  [ "$t" -le $((BUDGET_S / 2)) ] || t=$((BUDGET_S / 2))  # at most half: the core suite follows
  if [ "$t" -ge 60 ]; then
    say "compare_peers.py --device $DEVICE, $LIBS on $PEER_WORKLOADS (${t} s left)"
    PYTHONPATH="$PEER_PATH" timeout "$t" "$JPY" benchmarks/compare_peers.py \
      --device "$DEVICE" --rounds 1 --reps 3 \
      --workloads "$PEER_WORKLOADS" --libraries "$LIBS" --peers-python "$PEERS_PY" \
      --timeout "$WORKLOAD_TIMEOUT_S" --out "$RESULTS" \
      || say "compare_peers.py exited with status $? (what it wrote is kept)"
  else
    say "budget spent, skipping the peers"
  fi
fi

# --- 4. the core suite -----------------------------------------------------------------------
suite core --reps 3 --min-rep-s 0.5

# --- 5. the scaling curves with what is left ---------------------------------------------------
suite scaling
