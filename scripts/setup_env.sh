#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the code,
# the tests and the notebook need. Works offline on the project's machines: torch 2.14.1 /
# torchvision 0.29.1 install from the local disk, everything else from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha"
want=$(cat requirements.txt requirements-dev.txt | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --upgrade pip "setuptools<81" wheel
  "$VENV/bin/pip" install -q -r requirements-dev.txt
  # visdom ships as a source package whose build needs pkg_resources (setuptools<81).
  "$VENV/bin/pip" install -q --no-build-isolation "visdom>=0.2.4"
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -m ipykernel install --user --name patch2pix --display-name "Patch2Pix (.venv)" >/dev/null
echo "environment ready: $VENV"
