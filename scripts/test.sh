#!/usr/bin/env bash
# Run the whole test suite from a fresh machine: creates .venv, installs jaxrank[test,...], runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_divergence.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "test,lm,parquet,plot,models"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole suite, spread over 4 worker processes by pytest-xdist, a test file per worker at a time
# (module fixtures are built once). Most of the suite's time is XLA compiling, one core per process, so
# workers use both cores. Four rather than two: in one process XLA's CPU compiler crashed (segfault /
# abort while compiling) after ~500 tests had compiled their programs in it, in tests that pass on their
# own; four processes keep what each compiles to about a quarter of the suite.
exec .venv/bin/python -m pytest -n 4 --dist loadfile
