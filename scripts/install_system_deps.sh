#!/usr/bin/env bash
# Installs the system libraries the app and its tests need: PortAudio (sounddevice), Xvfb and Qt's xcb
# libraries (the window under a virtual screen), espeak-ng (spoken test audio), OpenBLAS (preloaded by
# scripts/run_tests.sh in place of the reference BLAS that MLX's Linux CPU wheel links). Debian/Ubuntu via apt,
# macOS via Homebrew where present; elsewhere it prints what to install and carries on.
set -euo pipefail

DEBIAN_PACKAGES=(
  libportaudio2 libasound2-plugins alsa-utils
  xvfb xauth xdotool x11-utils
  libegl1 libgl1 libopengl0 libglib2.0-0 libfontconfig1 libfreetype6 libdbus-1-3
  libxkbcommon0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-xfixes0
  libxcb-shm0 libxcb-sync1 libxcb-glx0 libx11-xcb1 libxrender1 libxi6 libsm6 libice6 libnss3
  fonts-dejavu-core espeak-ng
)
OPTIONAL_DEBIAN_PACKAGES=(libopenblas0-pthread)  # only a speed-up: the tests run without it

if [[ "$(uname -s)" == "Darwin" ]]; then
  # sounddevice's macOS wheel bundles PortAudio; nothing else is needed on a Mac.
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_deps: not a Debian system; install PortAudio, Xvfb and Qt's xcb libraries yourself." >&2
  exit 0
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do installed "$pkg" || missing+=("$pkg"); done
optional=()
for pkg in "${OPTIONAL_DEBIAN_PACKAGES[@]}"; do installed "$pkg" || optional+=("$pkg"); done
[[ ${#missing[@]} -eq 0 && ${#optional[@]} -eq 0 ]] && exit 0

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; elif [[ ${#missing[@]} -eq 0 ]]; then
    echo "install_system_deps: optional, not installed (no root): ${optional[*]}" >&2; exit 0
  else
    echo "install_system_deps: need root to install: ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install_system_deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ ${#optional[@]} -gt 0 ]]; then
  [[ ${#missing[@]} -gt 0 ]] || $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null \
    || echo "install_system_deps: could not install ${optional[*]} (optional: the tests run slower without it)" >&2
fi
