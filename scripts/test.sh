#!/usr/bin/env bash
# Run the whole test suite from a fresh machine: creates .venv, installs jaxrank[test,...], runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_divergence.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "test,lm,parquet,plot,models"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole suite, in four pytest processes over consecutive groups of test files (every test runs once).
# In one process, XLA's CPU compiler crashed (segfault / abort while compiling) after ~500 tests had
# compiled their programs in it, in two different tests that pass on their own; a process per group keeps
# what one process compiles to about the size the suite had when it ran green in one process.
mapfile -t files < <(ls tests/test_*.py | sort)
groups=4
per=$(( (${#files[@]} + groups - 1) / groups ))
status=0
for ((g = 0; g < groups; g++)); do
  part=("${files[@]:$((g * per)):per}")
  [ "${#part[@]}" -eq 0 ] && continue
  echo "== test group $((g + 1))/$groups: ${#part[@]} files"
  .venv/bin/python -m pytest "${part[@]}" || status=$?
done
exit "$status"
