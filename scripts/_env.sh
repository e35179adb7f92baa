# Shared by scripts/test, scripts/demo and scripts/bench: make sure .venv exists and holds this
# project with its dev extras (and dask: the tests cover the Dask executor). Idempotent and fast
# when nothing changed (keyed on pyproject.toml).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
pick_python() {
  for py in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "recon needs Python 3.11 or newer on PATH (set PYTHON=/path/to/python3.11)" >&2
  return 1
}
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  PY="$(pick_python)"
  echo "· creating $VENV with $PY" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.recon-installed"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "· installing recon and its dependencies into .venv" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  # setuptools warns about every editable install ("Editable installation. … folders with the same
  # name as your package …", a 10-line block newer pips show): expected here, so not shown
  PYTHONWARNINGS="ignore:Editable installation" \
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[local,dev,bench,dask]" >&2
  echo "$WANT" > "$STAMP"
fi
# bytecode for the package, as a regular (non-editable) install would have: with
# PYTHONDONTWRITEBYTECODE set (as on some CI machines) every start would compile it again (~25 ms)
"$VENV/bin/python" -m compileall -q -j 0 engine >/dev/null || true
# the native Kafka scan loop (C, against confluent-kafka's librdkafka), built once into the user
# cache; without a compiler the scan uses its Python loop and this only says so
"$VENV/bin/python" -m engine.connectors.kafka.native build >/dev/null || true
export PATH="$VENV/bin:$PATH"
