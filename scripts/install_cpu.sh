#!/usr/bin/env bash
# Create or update the CPU virtualenv: the pinned lock, the project (editable) and the CPU shims.
# Idempotent and fast on an existing venv: a stamp holds the hash of everything that shapes it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
LOCK=constraints/cpu.lock
STAMP="$VENV/.vlcache-install.sha256"

want=$(cat "$LOCK" pyproject.toml scripts/install_cpu.sh | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
    exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { echo "install_cpu: Python 3.11 is required (torch 2.13.0 CPU wheel); got $("$PYTHON" -V)" >&2; exit 1; }

echo "[install] creating/updating $VENV from $LOCK (CPU torch, SGLang without its CUDA deps) ..."
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
# --no-deps: the lock is the whole resolved set; letting pip resolve sglang's pins would pull
# torch 2.14.1 and several GB of CUDA wheels.
"${pip[@]}" install --no-deps --progress-bar off -r "$LOCK" 2> >(grep -v "is ignored: it is neither" >&2)
"${pip[@]}" install --no-deps -e . 2> >(grep -v "is ignored: it is neither" >&2) >/dev/null

# The CPU shims load in every Python process of this venv (SGLang's scheduler and detokenizer too)
# through this .pth; it is written only here, never by a GPU install.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import cpu_shims.bootstrap" > "$site/vlcache_cpu_shims.pth"

"$VENV/bin/python" - <<'PY'
import sglang, torch, torchvision, sgl_kernel  # noqa: F401  (the shims make these import on CPU)
from radix_ext.sglang import register  # noqa: F401
print(f"[install] ok: torch {torch.__version__}, sglang {sglang.__version__}, torchvision {torchvision.__version__}")
PY
echo "$want" > "$STAMP"
