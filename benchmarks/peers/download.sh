#!/usr/bin/env bash
# Fill a folder with what `setup.sh` installs besides torch, for a machine without a package
# index (a GPU machine whose Python already has a CUDA torch):
#
#   bash benchmarks/peers/download.sh .peers-wheels                # for this machine's Python
#   PY_VERSION=3.12 bash benchmarks/peers/download.sh .peers-wheels  # for another Python
#
# Then, on that machine:
#   PEERS_WHEELS=.peers-wheels PEERS_TARGET=/tmp/peers-site bash benchmarks/peers/setup.sh
# Downloads (about 11 MB): higher 0.2.1 (wheel), gym 0.26.2 and learn2learn 0.2.0 (sdists, built
# there), gym-notices, and Cython 3 for PY_VERSION on manylinux x86-64 (learn2learn's build
# regenerates its C with it). numpy, scipy, pillow, requests, tqdm, cloudpickle, setuptools and
# wheel are expected on that machine already.
set -euo pipefail
DEST="${1:?usage: download.sh DEST_DIR}"
PYTHON="${PYTHON:-python3}"
PY_VERSION="${PY_VERSION:-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
mkdir -p "$DEST"
dl() { "$PYTHON" -m pip download --disable-pip-version-check --quiet --no-deps -d "$DEST" "$@"; }
dl --no-binary :all: "learn2learn==0.2.0" "gym==0.26.2"
dl "higher==0.2.1" "gym-notices"
dl --only-binary :all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 "cython>=3"
ls -l "$DEST"
