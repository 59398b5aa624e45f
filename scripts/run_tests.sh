#!/usr/bin/env bash
# Runs the whole suite inside the project's venv. Qt runs offscreen unless a display is present;
# the tests that need a real X server start their own Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
export PYTHONUNBUFFERED=1
# MLX's Linux CPU wheel links the reference BLAS (~2 GFLOP/s in float32); Debian's OpenBLAS (installed by
# scripts/install_system_deps.sh) answers the same symbols when preloaded, ~50x faster on the suite's matmuls.
# GEMMA4_MAC_REFERENCE_BLAS=1 runs on the wheel's own BLAS.
if [[ "$(uname -s)" == "Linux" && "${GEMMA4_MAC_REFERENCE_BLAS:-}" != 1 ]]; then
  for openblas in /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3; do
    [[ -f "$openblas" ]] && export LD_PRELOAD="$openblas${LD_PRELOAD:+ $LD_PRELOAD}" && break
  done
fi
exec .venv/bin/python -m pytest "$@"
