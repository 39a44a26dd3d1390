#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the code,
# the tests and the notebook need, register its Jupyter kernel "patch2pix" and install the
# Visdom page's assets (so that `python -m utils.common.visdom_server` works offline).
# Works offline on the project's machines: torch 2.14.1 / torchvision 0.29.1 install from
# the local disk, everything else from PyPI and, once, the npm registry. Idempotent.
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
  # visdom is a source package whose setup.py needs pkg_resources (setuptools<81): every
  # source package is built against this environment's setuptools, not an isolated newest
  # one (see requirements.txt).
  "$VENV/bin/pip" install -q --upgrade pip "setuptools<81" wheel
  "$VENV/bin/pip" install -q --no-build-isolation -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
# the kernel lives in the environment (not ~/.local): jupyter run from .venv finds it, and
# another clone's set-up cannot redirect it
"$VENV/bin/python" -m ipykernel install --sys-prefix --name patch2pix --display-name "Patch2Pix (.venv)" >/dev/null
# Visdom's page assets, pinned in scripts/visdom_assets/package-lock.json, from the npm
# registry into visdom's static folder (nothing is downloaded once they are installed).
if ! "$VENV/bin/python" -m utils.common.visdom_assets; then
  echo "WARNING: Visdom page assets not installed (no access to registry.npmjs.org?):" \
       "the Visdom page will stay blank offline; rerun: python -m utils.common.visdom_assets" >&2
fi
echo "environment ready: $VENV"
