#!/usr/bin/env bash
# Create the PyTorch peers' environment `.venv-peers` at the repository root.
#
#   bash benchmarks/peers/setup.sh            # idempotent: skips what is already installed
#   PYTHON=python3.11 bash benchmarks/peers/setup.sh
#   PEERS_VENV=/elsewhere bash benchmarks/peers/setup.sh
#   PEERS_WHEELS=dir PEERS_TARGET=site bash benchmarks/peers/setup.sh   # offline, PYTHON's torch
#
# PEERS_WHEELS=dir installs offline from a folder that `benchmarks/peers/download.sh dir` filled
# (higher, gym, Cython and the learn2learn sdist; pip's index is not used). PEERS_TARGET=site
# creates no venv: it keeps the torch that PYTHON imports (say, a CUDA build on a GPU machine,
# in whatever environment PYTHON belongs to) and installs the rest with `pip install --target
# site`; the peers then run as `PYTHONPATH=site $PYTHON benchmarks/peers/run_peer.py ...`.
#
# Installs torch==2.13.0 (the CPU wheel), higher 0.2.1 and learn2learn 0.2.0 plus the packages
# learn2learn imports at import time (numpy, scipy, pillow, requests, tqdm, gym). See README.md
# beside this file for why learn2learn is built from a patched sdist and why torchvision is not
# installed (run_peer.py stubs it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
HIGHER_VERSION="0.2.1"
L2L_VERSION="0.2.0"
GYM_VERSION="0.26.2"

die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }
say() { echo "setup.sh: $*"; }
# Builds are single-threaded and low-priority: this machine may be running other work.
export MAKEFLAGS="-j1"
NICE=(nice -n 19)

command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (set PYTHON=/path/to/python3)."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.9 is needed (3.11 is what was tested)."

PIP_SOURCE=()
TARGET="${PEERS_TARGET:-}"
if [ -n "$TARGET" ]; then
  mkdir -p "$TARGET"
  TARGET="$(cd "$TARGET" && pwd)"
  export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
  PIP_SOURCE=(--target "$TARGET")
  PY="$(command -v "$PYTHON")"
  VENV="$TARGET (beside $PY)"
else
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV" \
      || die "'$PYTHON -m venv $VENV' failed (is the venv module installed?)."
  else
    say "$VENV exists ($("$VENV/bin/python" -V 2>&1))"
  fi
  # Keep the environment out of git (python < 3.13 does not write this file itself).
  [ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
  PY="$VENV/bin/python"
fi
if [ -n "${PEERS_WHEELS:-}" ]; then
  [ -d "$PEERS_WHEELS" ] \
    || die "PEERS_WHEELS=$PEERS_WHEELS is not a folder (fill it with download.sh)."
  PIP_SOURCE+=(--no-index --find-links "$(cd "$PEERS_WHEELS" && pwd)")
fi
pip_install() { "${NICE[@]}" "$PY" -m pip install --disable-pip-version-check \
  ${PIP_SOURCE[@]+"${PIP_SOURCE[@]}"} "$@" || die "pip install $* failed (see the output above)."; }
# has NAME [VERSION_PREFIX]: is distribution NAME installed (with a version starting so)?
has() {
  "$PY" - "$@" <<'EOF'
import sys
from importlib import metadata
try:
    v = metadata.version(sys.argv[1])
except metadata.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if len(sys.argv) < 3 or v == sys.argv[2] or v.startswith(sys.argv[2] + "+") else 1)
EOF
}

# --- build tools -------------------------------------------------------------------------------
if [ -n "$TARGET" ]; then  # builds use PYTHON's own setuptools
  has setuptools && has wheel || die "$PY lacks setuptools or wheel, which the builds need."
else
  has setuptools && has wheel || pip_install "setuptools" "wheel"
fi

# --- torch (CPU) --------------------------------------------------------------------------------
if has torch "$TORCH_VERSION"; then
  say "torch $TORCH_VERSION already installed"
elif [ -n "$TARGET" ]; then
  has torch || die "PEERS_TARGET keeps PYTHON's torch, and $PY has none."
  say "keeping $PY's torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  say "installing torch==$TORCH_VERSION (CPU wheel, ~1 GB)"
  pip_install "torch==$TORCH_VERSION"
fi
"$PY" -c 'import torch, sys; sys.exit(torch.version.cuda is not None)' \
  || say "WARNING: the installed torch is a CUDA build ($("$PY" -c 'import torch; print(torch.__version__)')); the peers run on CPU anyway."

# --- learn2learn's import-time dependencies (never let them pull torch or torchvision) ---------
need=()
for pkg in numpy scipy pillow requests tqdm cloudpickle gym_notices; do has "$pkg" || need+=("$pkg"); done
[ ${#need[@]} -eq 0 ] || { say "installing ${need[*]}"; pip_install "${need[@]}"; }
# gym only for learn2learn.gym's import-time `from gym.envs.registration import register`.
has gym "$GYM_VERSION" || { say "installing gym==$GYM_VERSION"
  pip_install --no-deps --no-build-isolation "gym==$GYM_VERSION"; }

# --- higher -------------------------------------------------------------------------------------
has higher "$HIGHER_VERSION" || { say "installing higher==$HIGHER_VERSION"; pip_install --no-deps "higher==$HIGHER_VERSION"; }

# --- learn2learn (patched sdist build) ----------------------------------------------------------
# The 0.2.0 sdist ships C generated by Cython 0.29 that includes longintrepr.h, gone in Python
# 3.11: regenerate the C with Cython 3, then build without build isolation and without deps
# (its deps would pull a torchvision that replaces torch by a multi-GB CUDA build).
if has learn2learn "$L2L_VERSION"; then
  say "learn2learn $L2L_VERSION already installed"
else
  has cython || pip_install "cython>=3"
  "$PY" -c 'import Cython, sys; sys.exit(int(Cython.__version__.split(".")[0]) < 3)' \
    || pip_install "cython>=3"
  command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 \
    || die "no C compiler: learn2learn builds Cython extensions (apt-get install gcc python3-dev)."
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  if [ -n "${PEERS_WHEELS:-}" ]; then
    cp "$PEERS_WHEELS/learn2learn-$L2L_VERSION.tar.gz" "$work/" \
      || die "no learn2learn-$L2L_VERSION.tar.gz in PEERS_WHEELS=$PEERS_WHEELS."
  else
    say "downloading the learn2learn==$L2L_VERSION sdist"
    "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: \
      "learn2learn==$L2L_VERSION" -d "$work" >/dev/null \
      || die "could not download the learn2learn==$L2L_VERSION sdist."
  fi
  tar -xzf "$work/learn2learn-$L2L_VERSION.tar.gz" -C "$work" || die "could not unpack the sdist."
  src="$work/learn2learn-$L2L_VERSION"
  say "regenerating learn2learn's C sources with Cython 3"
  (cd "$src" && "${NICE[@]}" "$PY" -m cython -3 learn2learn/data/*.pyx) \
    || die "cython failed on learn2learn/data/*.pyx."
  say "building learn2learn (one core, nice 19)"
  (cd "$src" && pip_install --no-deps --no-build-isolation .)
fi

# --- check --------------------------------------------------------------------------------------
"$PY" "$ROOT/benchmarks/peers/run_peer.py" --versions \
  || die "the peers' environment does not import (see above)."
say "done: $VENV"
