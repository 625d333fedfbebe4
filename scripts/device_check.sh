#!/usr/bin/env bash
# GPU checks of issues 4 and 5 in one call (see scripts/device_check.py): the CUDA-graph InferenceSession
# equals a full recomputation; gato-1.18b in bf16 reaches p99 >= 50 control steps/s within 2x of the
# HBM bound; training tokens/s and MFU of gato-79m and gato-364m. On the device machine as is:
#   bash scripts/device_check.sh [--parts tests inference train]
# Exit status: 0 pass, 1 fail, 3 no CUDA device (nothing checked).
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then PY=python3
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "device_check: $PY has no torch; nothing checked"; exit 3
fi
# the repository root is the package `omnipolicy`: make it importable without installing it
if ! "$PY" -c "import omnipolicy" 2>/dev/null; then
    PKG=$(mktemp -d); ln -s "$PWD" "$PKG/omnipolicy"; export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
fi
export OUT="${OUT:-/tmp/device_check}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$PY" scripts/device_check.py "$@" 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
