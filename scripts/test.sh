#!/usr/bin/env bash
# Run the whole test suite from a fresh machine: creates .venv, installs jaxrank[test,...], runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_divergence.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "test,lm,parquet,plot,models"
if [ "$#" -eq 0 ]; then
  # The sharded-LM tests compile many 8-device programs. Run in the same process after the rest of the suite,
  # XLA's CPU compiler crashed once (a segfault compiling sharded generation) while the file passes on its own,
  # so they run in a process of their own: every test still runs, and a crash there cannot hide the others.
  .venv/bin/python -m pytest --ignore=tests/test_lm_sharding.py
  exec .venv/bin/python -m pytest tests/test_lm_sharding.py
fi
exec .venv/bin/python -m pytest "$@"
