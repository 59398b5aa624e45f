#!/usr/bin/env bash
# Runs the whole suite inside the project's venv. Qt runs offscreen unless a display is present;
# the tests that need a real X server start their own Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
