#!/usr/bin/env bash
# Run the whole test suite from a fresh machine: creates .venv, installs jaxrank[test,...], runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_divergence.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "test,lm,parquet,plot,models"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole suite in two pytest runs over consecutive halves of the test files, each spread over 2
# pytest-xdist workers (a test file per worker at a time, so module fixtures are built once): both cores
# compile, and each worker process compiles about a quarter of the suite. In one process XLA's CPU compiler
# crashed (segfault / abort while compiling) after ~500 tests had compiled their programs in it, in tests
# that pass on their own; and 4 concurrent workers grew to ~22 GB together (each holds what it compiled and
# the models its tests load), which made a 24 GB machine swap; two at a time hold about half that.
mapfile -t files < <(ls tests/test_*.py | sort)
half=$(( (${#files[@]} + 1) / 2 ))
status=0
.venv/bin/python -m pytest -n 2 --dist loadfile "${files[@]:0:half}" || status=$?
.venv/bin/python -m pytest -n 2 --dist loadfile "${files[@]:half}" || status=$?
exit "$status"
