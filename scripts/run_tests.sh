#!/usr/bin/env bash
# The project's test command (README, CI): set up .venv if needed, lint, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -rs "$@"  # -rs: skip reasons are printed
